"""Findings -> one decision: which card (if any), and everything the card must say (docs/clinical-rules.md §1.3-1.5).

Tiers: critical (suspected MSCC) > warning (suspected spinal metastases) > info (weak history evidence, or
records we could not read). One card at most: the highest tier wins (docs/clinical-rules.md §3 item 15).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from cards.policy import Policy
from fhir_mapping.dates import DateSpan, age_in_years
from fhir_mapping.findings import (
    CancerFinding,
    ClinicalRecord,
    DrugFinding,
    EndOfLifeFinding,
    ImagingFinding,
    MetastasisFinding,
    ModifierFinding,
    NeuroFinding,
    PainFinding,
    SupportFinding,
)
from fhir_mapping.intake import SkippedResource

Indicator = Literal["info", "warning", "critical"]
Kind = Literal["mscc", "spinal-metastases", "weak-history", "unreadable-records"]

# A record dated this far ahead of now is a data error, not a plan (docs/clinical-rules.md §3 item 10).
_FUTURE_TOLERANCE = timedelta(days=1)
_REGION_SETS = {
    "whole-spine": {"cervical", "thoracic", "lumbar", "sacral"},
    "cervicothoracic": {"cervical", "thoracic"},
    "thoracolumbar": {"thoracic", "lumbar"},
    "lumbosacral": {"lumbar", "sacral"},
}
_SPINE_IMAGING = {"mri", "ct", "ct-myelography"}
_CONTEXT_IMAGING = {"bone-scan", "pet", "xray", "whole-body-mri", "whole-body-ct"}
_DIFFERENTIAL_LOOKBACK = timedelta(days=365)
NO_HISTORY = "no personal history of breast cancer"
NO_TRIGGER = "no new spinal pain and no neurological feature"


@dataclass(frozen=True, slots=True)
class PainEpisode:
    findings: tuple[PainFinding, ...]
    onset: DateSpan
    why_new: str  # "new onset" | "new region ..." | "acute on chronic pain" | "pain score rise ..."
    regions: tuple[str, ...]


@dataclass(slots=True)
class Decision:
    indicator: Indicator | None
    kind: Kind | None = None
    why_not: str | None = None  # when there is no card: the reason, for people and the CLI
    history: list[CancerFinding] = field(default_factory=list)
    history_drugs: list[DrugFinding] = field(default_factory=list)
    history_support: list[SupportFinding] = field(default_factory=list)
    weak_history: str | None = None  # "in-situ" | "tier-b-drug"
    episode: PainEpisode | None = None
    current_pain: list[PainFinding] = field(default_factory=list)
    neuro: list[NeuroFinding] = field(default_factory=list)
    suggestive: list[str] = field(default_factory=list)
    metastases: list[MetastasisFinding] = field(default_factory=list)
    imaging_ordered: list[ImagingFinding] = field(default_factory=list)
    imaging_partial: list[ImagingFinding] = field(default_factory=list)
    imaging_context: list[ImagingFinding] = field(default_factory=list)
    differentials: list[DrugFinding] = field(default_factory=list)
    end_of_life: list[EndOfLifeFinding] = field(default_factory=list)
    modifiers: list[ModifierFinding] = field(default_factory=list)
    downgraded_for_end_of_life: bool = False
    pain_before_cancer: bool | None = None
    skipped: list[SkippedResource] = field(default_factory=list)


def decide(record: ClinicalRecord, policy: Policy, now: datetime) -> Decision:
    decision = _decide(record, policy, now)
    decision.skipped = [s for s in record.skipped if s.relevant]
    if decision.indicator is None and decision.skipped:
        # A record we could not read may have held the evidence: say so rather than stay silent.
        decision.indicator, decision.kind = "info", "unreadable-records"
    return decision


def _decide(record: ClinicalRecord, policy: Policy, now: datetime) -> Decision:
    patient = record.patient
    if patient is not None and patient.deceased:
        return Decision(None, why_not="patient is deceased")
    if (patient is not None and patient.birth_date is not None
            and age_in_years(patient.birth_date, now) < policy.minimum_age_years):
        return Decision(None, why_not=f"patient is under {policy.minimum_age_years} (outside NICE NG234)")

    decision = Decision(None)
    history_level = _history(record, policy, decision)
    if history_level is None:
        decision.why_not = NO_HISTORY
        return decision

    pains = [p for p in record.pains if not _future(p.evidence.date, now)]
    decision.current_pain = [p for p in pains if not p.resolved]
    decision.episode = _new_episode(pains, record, policy, now)
    decision.neuro = _neuro_features(record, decision.current_pain, policy, now)
    decision.metastases = record.metastases

    if decision.neuro:
        tier: Indicator = "critical"
    elif decision.episode is not None:
        tier = "warning"
    else:
        decision.why_not = NO_TRIGGER
        return decision
    if history_level == "weak":
        tier = "info"

    _imaging(record, decision, tier)
    if decision.why_not is not None:
        return decision

    decision.indicator = tier
    decision.kind = "weak-history" if tier == "info" else ("mscc" if tier == "critical" else "spinal-metastases")
    decision.suggestive = _suggestive(decision, record, policy, now)
    decision.differentials = [
        d for d in record.drugs
        if d.back_pain_differential and (d.current or _within(d.evidence.date, now - _DIFFERENTIAL_LOOKBACK))
    ]
    decision.end_of_life = [e for e in record.end_of_life if e.kind != "dnr"]
    decision.modifiers = [m for m in record.modifiers if not _future(m.evidence.date, now)]
    if decision.end_of_life and policy.end_of_life_mode == "downgrade" and tier != "info":
        decision.indicator, decision.downgraded_for_end_of_life = "info", True
    decision.pain_before_cancer = _pain_before_cancer(decision)
    return decision


def _history(record: ClinicalRecord, policy: Policy, decision: Decision) -> Literal["strong", "weak"] | None:
    """docs/clinical-rules.md §1.1: H1 coded history, H3 inference from drugs; CIS and tier-B-only are weak (info)."""
    excluded = [c for c in record.cancers if c.category == "excluded"]
    decision.history = [c for c in record.cancers if c.category in ("primary", "history", "non-carcinoma")]
    if decision.history:
        return "strong"
    tier_a = [d for d in record.drugs if d.tier == "A"]
    tier_b = [d for d in record.drugs if d.tier == "B"]
    # Corroboration for a tier-B drug: breast surgery, SERM/AI long-term use, prior chemo/radiotherapy,
    # acquired absence of breast (all in breast-cancer-supporting), or a receptor-status code (Z17.x).
    corroboration = list(record.support)
    receptor = [c for c in excluded if c.exclusion_reason == "receptor-status"]
    if tier_a or (tier_b and (corroboration or receptor)):
        decision.history_drugs = tier_a or tier_b
        decision.history_support = corroboration
        return "strong"
    if policy.any_cancer and record.metastases:
        return "strong"
    in_situ = [c for c in record.cancers if c.category == "in-situ"]
    if in_situ and policy.in_situ_mode == "info":
        decision.history, decision.weak_history = in_situ, "in-situ"
        return "weak"
    risk_context = [c for c in excluded if c.exclusion_reason != "receptor-status"]
    if tier_b and not risk_context:
        # Tier B alone (tamoxifen, letrozole, ...) has common non-cancer uses: at most a note (§1.1 H3).
        decision.history_drugs, decision.weak_history = tier_b, "tier-b-drug"
        return "weak"
    return None


def _future(span: DateSpan | None, now: datetime) -> bool:
    return span is not None and span.earliest > now + _FUTURE_TOLERANCE


def _within(span: DateSpan | None, start: datetime) -> bool:
    return span is not None and span.latest >= start


def _regions(findings: list[PainFinding] | tuple[PainFinding, ...]) -> set[str]:
    return {p.region for p in findings if p.region != "unspecified"}


def _new_episode(pains: list[PainFinding], record: ClinicalRecord, policy: Policy,
                 now: datetime) -> PainEpisode | None:
    """docs/clinical-rules.md §1.2: onset within the window, nothing before it; chronic pain re-qualifies on a new
    region, an acute-on-chronic code or a rise in pain score. A missing date never makes pain new."""
    window_start = now - timedelta(days=policy.new_pain_window_days)
    recent = [p for p in pains if not p.resolved and _within(p.evidence.date, window_start)]
    if not recent:
        return None
    onset = min((p.evidence.date for p in recent if p.evidence.date), key=lambda d: d.earliest)
    washout_start = onset.earliest - timedelta(days=policy.pain_washout_days)
    prior = []
    for p in pains:
        if p in recent or p.evidence.date is None or p.evidence.date.earliest >= onset.earliest:
            continue
        if p.abated is not None and p.abated.latest <= onset.earliest:
            continue  # an episode that ended before this one began (§3 item 7)
        if p.evidence.date.latest >= washout_start or not p.resolved:
            prior.append(p)
    regions = tuple(sorted(_regions(recent)))
    if not prior:
        return PainEpisode(tuple(recent), onset, "new onset", regions)
    new_regions = _regions(recent) - _regions(prior)
    if new_regions and _regions(prior):
        names = " and ".join(sorted(new_regions))
        return PainEpisode(tuple(recent), onset, f"new {names} pain on top of earlier back pain", regions)
    if any(p.acute for p in recent) and any(p.chronic for p in prior):
        return PainEpisode(tuple(recent), onset, "acute on chronic back pain", regions)
    rise = _score_rise(record, window_start, pain_score_horizon(policy, now))
    if rise is not None and rise >= 2:
        return PainEpisode(tuple(recent), onset, f"pain score up {rise:g} points", regions)
    return None


def pain_score_horizon(policy: Policy, now: datetime) -> datetime:
    """Pain scores older than this never matter: the rise is measured against a baseline in the washout
    period before the new-pain window (a design choice: a years-old score says nothing about "worse now")."""
    return now - timedelta(days=policy.new_pain_window_days + policy.pain_washout_days)


def _score_rise(record: ClinicalRecord, window_start: datetime, horizon: datetime) -> float | None:
    dated = sorted((s for s in record.pain_scores if s.evidence.date), key=lambda s: s.evidence.date.earliest)  # type: ignore[union-attr]
    before = [s for s in dated if s.evidence.date and horizon <= s.evidence.date.latest < window_start]
    during = [s for s in dated if _within(s.evidence.date, window_start)]
    if not before or not during:
        return None
    return max(s.score for s in during) - before[-1].score


def _neuro_features(record: ClinicalRecord, current_pain: list[PainFinding], policy: Policy,
                    now: datetime) -> list[NeuroFinding]:
    """Cord compression / cauda equina count alone while unresolved; generic weakness, sensory, gait and
    sphincter features count only when recent and with spinal pain or a spinal site (docs/clinical-rules.md §2.6)."""
    window_start = now - timedelta(days=policy.new_pain_window_days)
    features = []
    for n in record.neuro:
        if n.resolved or _future(n.evidence.date, now):
            continue
        if n.alone or (_within(n.evidence.date, window_start) and (current_pain or n.spinal_site)):
            features.append(n)
    return features


def _covers_spine(studies: list[ImagingFinding]) -> bool:
    regions: set[str] = set()
    for study in studies:
        regions |= _REGION_SETS.get(study.coverage, {study.coverage})
    # Whole spine, or at least thoracic + lumbar (docs/clinical-rules.md §1.5 item 1).
    return {"thoracic", "lumbar"} <= regions


def _imaging(record: ClinicalRecord, decision: Decision, tier: Indicator) -> None:
    """Imaging after onset: a whole-spine study suppresses the warning; the critical card yields only to
    a completed MRI after the first neurological feature; bone scan, PET and X-ray never suppress."""
    since = _reference_onset(decision, tier)
    after = [i for i in record.imaging if since is not None and i.evidence.date is not None
             and i.evidence.date.latest >= since.earliest]
    spine = [i for i in after if i.kind in _SPINE_IMAGING]
    decision.imaging_context = [i for i in after if i.kind in _CONTEXT_IMAGING]
    if tier == "critical":
        done_mri = [i for i in spine if i.kind == "mri" and i.state == "done"]
        if _covers_spine(done_mri):
            decision.why_not = "whole-spine MRI completed after the neurological feature"
            return
        decision.imaging_ordered = [i for i in spine if i.state == "ordered" and i.kind == "mri"]
        decision.imaging_partial = done_mri
        return
    if _covers_spine(spine):
        decision.why_not = "whole-spine MRI/CT already done or ordered after the pain began"
        return
    decision.imaging_partial = spine


def _reference_onset(decision: Decision, tier: Indicator) -> DateSpan | None:
    if tier == "critical":
        dated = [n.evidence.date for n in decision.neuro if n.evidence.date is not None]
        if dated:
            return min(dated, key=lambda d: d.earliest)
    return decision.episode.onset if decision.episode else None


def _suggestive(decision: Decision, record: ClinicalRecord, policy: Policy, now: datetime) -> list[str]:
    """CG75/NG234 features suggestive of spinal metastases (docs/clinical-rules.md §1.3 list S)."""
    reasons = []
    findings = decision.episode.findings if decision.episode else tuple(decision.current_pain)
    regions = _regions(findings)
    if regions & {"thoracic", "cervical"}:
        reasons.append(f"{' and '.join(sorted(regions & {'thoracic', 'cervical'}))} spinal pain")
    for p in findings:
        if p.suggestive and p.region not in ("thoracic", "cervical"):
            reasons.append(p.evidence.display)
    window_start = now - timedelta(days=policy.new_pain_window_days)
    scores = [s.score for s in record.pain_scores if _within(s.evidence.date, window_start)]
    if scores and max(scores) >= policy.severe_pain_score:
        reasons.append(f"severe pain (score {max(scores):g}/10)")
    return list(dict.fromkeys(reasons))


def _pain_before_cancer(decision: Decision) -> bool | None:
    cancer_dates = [c.evidence.date for c in decision.history if c.evidence.date is not None]
    if decision.episode is None or not cancer_dates:
        return None
    first_cancer = min(d.earliest for d in cancer_dates)
    return decision.episode.onset.latest < first_cancer
