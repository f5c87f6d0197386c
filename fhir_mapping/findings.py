"""Clinical findings with their evidence: what fhir_mapping hands to the decision in `cards`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fhir_mapping.dates import DateSpan
from fhir_mapping.intake import SkippedResource

DateKind = Literal["onset", "recorded", "effective", "issued", "authored", "performed", "started", "occurrence"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """Where a finding came from: enough for a clinician to find it in the chart."""

    resource_type: str
    resource_id: str | None
    display: str  # the concept's display, or the text it was read from
    code: str | None  # "system|code" of the matching coding; None for text-only evidence
    status: str | None  # clinical status / resource status as recorded
    date: DateSpan | None
    date_kind: DateKind | None

    @property
    def reference(self) -> str | None:
        return f"{self.resource_type}/{self.resource_id}" if self.resource_id else None


CancerCategory = Literal["primary", "history", "in-situ", "non-carcinoma", "excluded", "other-cancer"]


@dataclass(frozen=True, slots=True)
class CancerFinding:
    evidence: Evidence
    category: CancerCategory
    exclusion_reason: str | None = None


@dataclass(frozen=True, slots=True)
class MetastasisFinding:
    evidence: Evidence
    spine: bool


@dataclass(frozen=True, slots=True)
class PainFinding:
    evidence: Evidence
    region: str  # cervical | thoracic | lumbar | sacral | unspecified
    suggestive: bool
    chronic: bool
    acute: bool
    resolved: bool  # resolved/inactive/remission, or abated in the past
    abated: DateSpan | None


@dataclass(frozen=True, slots=True)
class PainScore:
    evidence: Evidence
    score: float  # on a 0-10 scale


@dataclass(frozen=True, slots=True)
class NeuroFinding:
    evidence: Evidence
    feature: str  # cord-compression | cauda-equina | weakness | sensory | bladder | bowel | gait | radicular | ...
    alone: bool  # counts without spinal pain (cord compression, cauda equina)
    spinal_site: bool  # recorded with a spinal body site
    resolved: bool


@dataclass(frozen=True, slots=True)
class DrugFinding:
    evidence: Evidence
    ingredient: str
    tier: str  # A | B | C (docs/clinical-rules.md §1.1 H3)
    back_pain_differential: bool
    current: bool  # active / on-hold / intended, as opposed to completed or stopped


@dataclass(frozen=True, slots=True)
class SupportFinding:
    evidence: Evidence
    kind: str  # surgery | radiotherapy | chemotherapy | z-code


@dataclass(frozen=True, slots=True)
class ImagingFinding:
    evidence: Evidence
    kind: str  # mri | ct | ct-myelography | bone-scan | pet | xray | whole-body-mri | whole-body-ct
    coverage: str  # whole-spine | cervical | thoracic | lumbar | ...
    state: Literal["ordered", "done"]


@dataclass(frozen=True, slots=True)
class ModifierFinding:
    """Shown on the card, never a change of tier (docs/clinical-rules.md §1.3 "Modifiers", §3 item 18)."""

    evidence: Evidence
    kind: str  # vertebral-fracture | constitutional | hypercalcaemia | treatment-differential


@dataclass(frozen=True, slots=True)
class EndOfLifeFinding:
    evidence: Evidence
    kind: str  # hospice | palliative | terminal | dnr


@dataclass(frozen=True, slots=True)
class PatientFacts:
    birth_date: DateSpan | None = None
    deceased: bool = False
    gender: str | None = None


@dataclass(slots=True)
class ClinicalRecord:
    patient: PatientFacts | None = None
    cancers: list[CancerFinding] = field(default_factory=list)
    metastases: list[MetastasisFinding] = field(default_factory=list)
    pains: list[PainFinding] = field(default_factory=list)
    pain_scores: list[PainScore] = field(default_factory=list)
    neuro: list[NeuroFinding] = field(default_factory=list)
    drugs: list[DrugFinding] = field(default_factory=list)
    support: list[SupportFinding] = field(default_factory=list)
    imaging: list[ImagingFinding] = field(default_factory=list)
    end_of_life: list[EndOfLifeFinding] = field(default_factory=list)
    modifiers: list[ModifierFinding] = field(default_factory=list)
    skipped: list[SkippedResource] = field(default_factory=list)
    ignored_other_patient: int = 0
