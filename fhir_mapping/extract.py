"""Validated R4 resources -> findings with evidence (status and date rules of docs/clinical-rules.md §1.1, §1.2,
§1.5)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_mapping.dates import DateSpan, parse_span, span_after_birth, span_of_period
from fhir_mapping.drug_names import drug_named
from fhir_mapping.findings import (
    CancerFinding,
    ClinicalRecord,
    DateKind,
    DrugFinding,
    EndOfLifeFinding,
    Evidence,
    ImagingFinding,
    MetastasisFinding,
    ModifierFinding,
    NeuroFinding,
    PainFinding,
    PainScore,
    PatientFacts,
    SupportFinding,
)
from fhir_mapping.intake import Intake
from fhir_mapping.terminology import Concept, Terminology
from fhir_mapping.text import breast_cancer_in, cord_compression_in, spinal_pain_in

# Status rules (docs/clinical-rules.md §1.1 H3, §1.5 items 1-2, §2.13).
_EXCLUDED_VERIFICATION = {"entered-in-error", "refuted"}
_RESOLVED_CLINICAL = {"resolved", "inactive", "remission"}
_OBSERVATION_VOID = {"entered-in-error", "cancelled"}
_STATEMENT_VOID = {"not-taken", "entered-in-error"}
_STATEMENT_CURRENT = {"active", "intended", "on-hold"}
_REQUEST_VOID = {"entered-in-error", "cancelled", "draft"}
_REQUEST_CURRENT = {"active", "on-hold"}
_PROCEDURE_DONE = {"completed", "in-progress"}
_ORDER_STATES = {"active": "ordered", "on-hold": "ordered", "completed": "done"}
_REPORT_DONE = {"final", "amended", "corrected", "appended", "preliminary"}

_CANCER_SETS = {
    "breast-cancer": "primary",
    "breast-cancer-history": "history",
    "breast-carcinoma-in-situ": "in-situ",
    "breast-cancer-exclusions": "excluded",
}
# Value sets of findings shown on the card but never changing the tier (docs/clinical-rules.md §1.3, §2.7, §2.11).
_MODIFIER_SETS = {
    "vertebral-fracture": "vertebral-fracture",
    "constitutional-symptoms": "constitutional",
    "hypercalcaemia": "hypercalcaemia",
    "treatment-differentials": "treatment-differential",
}
_SCORE_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(10|100))?\s*$")


@dataclass(frozen=True, slots=True)
class _Coded:
    concept: Concept
    display: str


def _coded(terminology: Terminology, concept: Any) -> list[_Coded]:
    """Every value-set concept the CodeableConcept's codings match."""
    found: list[_Coded] = []
    for coding in (getattr(concept, "coding", None) or ()) if concept is not None else ():
        if coding.code is None:
            continue
        for match in terminology.lookup(coding.system, coding.code):
            found.append(_Coded(match, match.display))
    return found


def _texts(concept: Any) -> list[str]:
    if concept is None:
        return []
    texts = [concept.text] if concept.text else []
    texts += [c.display for c in concept.coding or () if c.display]
    return texts


def _status_code(concept: Any) -> str | None:
    for coding in (getattr(concept, "coding", None) or ()) if concept is not None else ():
        if coding.code:
            return str(coding.code)
    return None


def _evidence(
    resource: Any, display: str, concept: Concept | None, status: str | None,
    date: tuple[DateSpan | None, DateKind | None],
) -> Evidence:
    code = f"{concept.system}|{concept.code}" if concept else None
    return Evidence(resource.get_resource_type(), resource.id, display, code, status, date[0], date[1])


def _period(period: Any) -> DateSpan | None:
    return span_of_period(period.start, period.end) if period is not None else None


def _first_date(*candidates: tuple[object, DateKind]) -> tuple[DateSpan | None, DateKind | None]:
    for value, kind in candidates:
        span = value if isinstance(value, DateSpan) else parse_span(value)
        if span is not None:
            return span, kind
    return None, None


def _by_value_set(coded: Iterable[_Coded]) -> dict[str, _Coded]:
    """First match per value set (a Condition coded C50.911 + 254837009 is one finding, not two)."""
    result: dict[str, _Coded] = {}
    for item in coded:
        result.setdefault(item.concept.value_set, item)
    return result


class _Extractor:
    def __init__(self, terminology: Terminology, now: datetime, include_unconfirmed: bool) -> None:
        self.terminology = terminology
        self.now = now
        self.include_unconfirmed = include_unconfirmed
        self.record = ClinicalRecord()

    # --- Patient --------------------------------------------------------------------------------------
    def patient(self, resource: Any) -> None:
        deceased = bool(resource.deceasedBoolean) or resource.deceasedDateTime is not None
        self.record.patient = PatientFacts(parse_span(resource.birthDate), deceased, resource.gender)

    def _birth(self) -> DateSpan | None:
        return self.record.patient.birth_date if self.record.patient else None

    # --- Condition --------------------------------------------------------------------------------------
    def condition(self, resource: Any) -> None:
        verification = _status_code(resource.verificationStatus)
        if verification in _EXCLUDED_VERIFICATION:
            return
        if verification == "unconfirmed" and not self.include_unconfirmed:
            return
        clinical = _status_code(resource.clinicalStatus)
        onset = self._condition_onset(resource)
        abated = parse_span(resource.abatementDateTime) or _period(resource.abatementPeriod)
        # con-4: an abatement in the past means the condition is over, whatever clinicalStatus says.
        resolved = clinical in _RESOLVED_CLINICAL or (abated is not None and abated.earliest <= self.now)
        status = clinical or verification
        spinal_site = self._spinal_site(resource.bodySite)
        matches = _by_value_set(_coded(self.terminology, resource.code))
        self._cancer_like(resource, matches, status, onset)
        if "spinal-pain" in matches:
            self._add_pain(resource, matches["spinal-pain"], status, onset, resolved, abated, spinal_site)
        if "neuro-red-flags" in matches:
            self._add_neuro(resource, matches["neuro-red-flags"], status, onset, resolved, spinal_site)
        for value_set, kind_attr in (("breast-cancer-supporting", "kind"), ("end-of-life", "kind")):
            if value_set in matches:
                coded = matches[value_set]
                evidence = _evidence(resource, coded.display, coded.concept, status, onset)
                kind = str(coded.concept.attributes.get(kind_attr, "other"))
                if value_set == "end-of-life":
                    if not resolved:
                        self.record.end_of_life.append(EndOfLifeFinding(evidence, kind))
                else:
                    self.record.support.append(SupportFinding(evidence, kind))
        for value_set, kind in _MODIFIER_SETS.items():
            if value_set in matches and not resolved:
                coded = matches[value_set]
                evidence = _evidence(resource, coded.display, coded.concept, status, onset)
                self.record.modifiers.append(ModifierFinding(evidence, kind))
        if not matches:
            self._condition_text(resource, status, onset, resolved, abated, spinal_site)

    def _condition_onset(self, resource: Any) -> tuple[DateSpan | None, DateKind | None]:
        onset: DateSpan | None = parse_span(resource.onsetDateTime)
        if onset is None and resource.onsetPeriod is not None:
            onset = _period(resource.onsetPeriod)
        birth = self._birth()
        if onset is None and resource.onsetAge is not None and resource.onsetAge.value is not None and birth:
            onset = span_after_birth(birth, _years(float(resource.onsetAge.value), resource.onsetAge))
        recorded = parse_span(resource.recordedDate)
        # Onset after the recorded date is a data error: the earlier date is the safer reading (§3 item 8).
        if onset is not None and recorded is not None and onset.earliest > recorded.latest:
            return recorded, "recorded"
        return _first_date((onset, "onset"), (recorded, "recorded"))

    def _cancer_like(
        self, resource: Any, matches: dict[str, _Coded], status: str | None,
        date: tuple[DateSpan | None, DateKind | None],
    ) -> None:
        cancer_sets = [vs for vs in _CANCER_SETS if vs in matches]
        # A must-not-count code on the same record wins over anything that looks like cancer (§1.1).
        if "breast-cancer-exclusions" in cancer_sets:
            cancer_sets = ["breast-cancer-exclusions"]
        for value_set in cancer_sets:
            coded = matches[value_set]
            category = _CANCER_SETS[value_set]
            if value_set == "breast-cancer" and coded.concept.attributes.get("carcinoma") is False:
                category = "non-carcinoma"
            reason = coded.concept.attributes.get("reason") if category == "excluded" else None
            evidence = _evidence(resource, coded.display, coded.concept, status, date)
            self.record.cancers.append(CancerFinding(evidence, category, str(reason) if reason else None))  # type: ignore[arg-type]
        if "bone-metastasis" in matches:
            self._add_metastasis(resource, matches["bone-metastasis"], status, date)

    def _condition_text(
        self, resource: Any, status: str | None, onset: tuple[DateSpan | None, DateKind | None],
        resolved: bool, abated: DateSpan | None, spinal_site: bool,
    ) -> None:
        for text in _texts(resource.code):
            if breast_cancer_in(text):
                evidence = _evidence(resource, text, None, status, onset)
                self.record.cancers.append(CancerFinding(evidence, "primary"))
                return
            if self._text_finding(resource, text, status, onset, resolved, abated, spinal_site):
                return

    def _add_metastasis(self, resource: Any, coded: _Coded, status: str | None,
                        date: tuple[DateSpan | None, DateKind | None]) -> None:
        evidence = _evidence(resource, coded.display, coded.concept, status, date)
        self.record.metastases.append(MetastasisFinding(evidence, bool(coded.concept.attributes.get("spine"))))

    def _text_finding(
        self, resource: Any, text: str, status: str | None, date: tuple[DateSpan | None, DateKind | None],
        resolved: bool, abated: DateSpan | None, spinal_site: bool,
    ) -> bool:
        """Cord compression or spinal pain named in free text (no usable code); True if one was found."""
        evidence = _evidence(resource, text, None, status, date)
        lowered = text.lower()
        if cord_compression_in(text):
            feature = "cauda-equina" if "cauda" in lowered else "cord-compression"
            self.record.neuro.append(NeuroFinding(evidence, feature, True, spinal_site, resolved))
            return True
        pain = spinal_pain_in(text)
        if pain is None:
            return False
        self.record.pains.append(
            PainFinding(evidence, pain.region, pain.suggestive or pain.region in ("thoracic", "cervical"),
                        "chronic" in lowered, "acute" in lowered, resolved, abated)
        )
        return True

    def _spinal_site(self, sites: Any) -> bool:
        return any("spine-body-sites" in _by_value_set(_coded(self.terminology, site)) for site in sites or ())

    def _add_pain(
        self, resource: Any, coded: _Coded, status: str | None, date: tuple[DateSpan | None, DateKind | None],
        resolved: bool, abated: DateSpan | None, spinal_site: bool,
    ) -> None:
        attributes = coded.concept.attributes
        region = str(attributes.get("region", "unspecified"))
        if region == "unspecified" and resource.get_resource_type() == "Condition":
            region = self._site_region(resource.bodySite) or region
        evidence = _evidence(resource, coded.display, coded.concept, status, date)
        severe = any(c.concept.attributes.get("severity") == "severe"
                     for c in _coded(self.terminology, getattr(resource, "severity", None)))
        self.record.pains.append(
            PainFinding(
                evidence, region,
                suggestive=bool(attributes.get("suggestive")) or region in ("thoracic", "cervical") or severe,
                chronic=bool(attributes.get("chronic")),
                acute="acute" in coded.display.lower(),
                resolved=resolved, abated=abated,
            )
        )

    def _site_region(self, sites: Any) -> str | None:
        for site in sites or ():
            for coded in _coded(self.terminology, site):
                if coded.concept.value_set == "spine-body-sites":
                    region = str(coded.concept.attributes.get("region", "unspecified"))
                    if region != "unspecified":
                        return region
        return None

    def _add_neuro(
        self, resource: Any, coded: _Coded, status: str | None, date: tuple[DateSpan | None, DateKind | None],
        resolved: bool, spinal_site: bool,
    ) -> None:
        attributes = coded.concept.attributes
        evidence = _evidence(resource, coded.display, coded.concept, status, date)
        self.record.neuro.append(
            NeuroFinding(evidence, str(attributes.get("feature", "neurological")), bool(attributes.get("alone")),
                         spinal_site, resolved)
        )

    # --- Observation --------------------------------------------------------------------------------------
    def observation(self, resource: Any) -> None:
        if resource.status in _OBSERVATION_VOID:
            return
        date = _first_date(
            (resource.effectiveDateTime, "effective"),
            (_period(resource.effectivePeriod), "effective"),
            (resource.effectiveInstant, "effective"),
            (resource.issued, "issued"),
        )
        spinal_site = self._spinal_site([resource.bodySite] if resource.bodySite else [])
        self._observation_part(resource, resource, date, spinal_site)
        # Flowsheets export a pain assessment or a neurological examination as one panel Observation whose
        # components carry the findings (pain location 38204-4, severity 72514-3, a finding and its presence):
        # each component is read as an Observation of its own, with the panel's status, date and body site.
        for component in resource.component or ():
            self._observation_part(resource, component, date, spinal_site)

    def _observation_part(
        self, resource: Any, part: Any, date: tuple[DateSpan | None, DateKind | None], spinal_site: bool,
    ) -> None:
        """`part` is the Observation itself or one of its components: both have code and value[x]."""
        code_matches = _by_value_set(_coded(self.terminology, part.code))
        role = code_matches["observation-codes"].concept.attributes.get("role") if (
            "observation-codes" in code_matches) else None
        value_matches = _by_value_set(_coded(self.terminology, part.valueCodeableConcept))
        status = resource.status
        if role == "pain-score":
            score = _pain_score(part)
            if score is not None:
                evidence = _evidence(resource, f"pain score {score:g}/10", None, status, date)
                self.record.pain_scores.append(PainScore(evidence, score))
            return
        if role == "pain-location":
            site = value_matches.get("spine-body-sites")
            if site is not None:
                region = str(site.concept.attributes.get("region", "unspecified"))
                evidence = _evidence(resource, f"pain located at {site.display}", site.concept, status, date)
                self.record.pains.append(
                    PainFinding(evidence, region, region in ("thoracic", "cervical"), False, False, False, None))
            else:
                self._observation_text(resource, [*_texts(part.valueCodeableConcept), part.valueString or ""],
                                       status, date, spinal_site)
            return
        if role in ("stage-group", "tnm-m"):
            if "stage-iv-values" in value_matches:
                coded = value_matches["stage-iv-values"]
                evidence = _evidence(resource, coded.display, coded.concept, status, date)
                self.record.metastases.append(MetastasisFinding(evidence, False))
            return
        if role == "symptom":
            if value_matches:
                self._observed(resource, value_matches, status, date, spinal_site)
            else:
                self._observation_text(resource, [*_texts(part.valueCodeableConcept), part.valueString or ""],
                                       status, date, spinal_site)
            return
        if _observed_absent(part, value_matches):
            return
        if code_matches:
            self._observed(resource, code_matches, status, date, spinal_site)
        else:
            self._observation_text(resource, _texts(part.code), status, date, spinal_site)

    def _observed(
        self, resource: Any, matches: dict[str, _Coded], status: str | None,
        date: tuple[DateSpan | None, DateKind | None], spinal_site: bool,
    ) -> None:
        if "spinal-pain" in matches:
            self._add_pain(resource, matches["spinal-pain"], status, date, False, None, spinal_site)
        if "neuro-red-flags" in matches:
            self._add_neuro(resource, matches["neuro-red-flags"], status, date, False, spinal_site)
        if "bone-metastasis" in matches:
            self._add_metastasis(resource, matches["bone-metastasis"], status, date)

    def _observation_text(
        self, resource: Any, texts: list[str], status: str | None,
        date: tuple[DateSpan | None, DateKind | None], spinal_site: bool,
    ) -> None:
        for text in texts:
            if self._text_finding(resource, text, status, date, False, None, spinal_site):
                return

    # --- Medications ------------------------------------------------------------------------------------
    def medication_statement(self, resource: Any) -> None:
        if resource.status in _STATEMENT_VOID:
            return
        date = _first_date(
            (resource.effectiveDateTime, "effective"),
            (_period(resource.effectivePeriod), "effective"),
            (resource.dateAsserted, "recorded"),
        )
        self._drug(resource, date, resource.status in _STATEMENT_CURRENT)

    def medication_request(self, resource: Any) -> None:
        if resource.status in _REQUEST_VOID:
            return
        date = _first_date((resource.authoredOn, "authored"))
        self._drug(resource, date, resource.status in _REQUEST_CURRENT)

    def _drug(self, resource: Any, date: tuple[DateSpan | None, DateKind | None], current: bool) -> None:
        concept = resource.medicationCodeableConcept or _contained_medication_code(resource)
        matches = _by_value_set(_coded(self.terminology, concept))
        coded = matches.get("breast-cancer-drugs")
        reference = resource.medicationReference
        text = " ".join([*_texts(concept), *([reference.display] if reference and reference.display else [])])
        drug = coded.concept if coded else drug_named(self.terminology, text)
        if drug is None:
            return
        evidence = _evidence(resource, coded.display if coded else text[:120], drug, resource.status, date)
        attributes = drug.attributes
        self.record.drugs.append(
            DrugFinding(evidence, str(attributes.get("ingredient", drug.display)), str(attributes.get("tier", "C")),
                        bool(attributes.get("backPainDifferential")), current)
        )

    # --- Encounter reasons ------------------------------------------------------------------------------
    def encounter(self, resource: Any) -> None:
        """A visit for back pain or a neurological symptom is evidence of it, dated by the visit."""
        if resource.status in ("cancelled", "entered-in-error"):
            return
        date = _first_date((_period(resource.period), "effective"))
        for reason in resource.reasonCode or ():
            matches = _by_value_set(_coded(self.terminology, reason))
            if matches:
                self._observed(resource, matches, resource.status, date, False)
            else:
                self._observation_text(resource, _texts(reason), resource.status, date, False)

    # --- Imaging and procedures -------------------------------------------------------------------------
    def procedure(self, resource: Any) -> None:
        if resource.status not in _PROCEDURE_DONE:
            return
        date = _first_date(
            (resource.performedDateTime, "performed"),
            (_period(resource.performedPeriod), "performed"),
        )
        matches = _by_value_set(_coded(self.terminology, resource.code))
        if "spine-imaging" in matches:
            self._imaging(resource, matches["spine-imaging"], "done", date)
        if "breast-cancer-supporting" in matches and resource.status == "completed":
            coded = matches["breast-cancer-supporting"]
            evidence = _evidence(resource, coded.display, coded.concept, resource.status, date)
            self.record.support.append(SupportFinding(evidence, str(coded.concept.attributes.get("kind", "other"))))
        if "end-of-life" in matches:
            coded = matches["end-of-life"]
            evidence = _evidence(resource, coded.display, coded.concept, resource.status, date)
            self.record.end_of_life.append(EndOfLifeFinding(evidence, str(coded.concept.attributes.get("kind"))))

    def service_request(self, resource: Any) -> None:
        state = _ORDER_STATES.get(resource.status)
        if state is None:
            return  # revoked, draft, entered-in-error, unknown: never suppress (§1.5 item 1)
        date = _first_date(
            (resource.authoredOn, "authored"),
            (resource.occurrenceDateTime, "occurrence"),
            (_period(resource.occurrencePeriod), "occurrence"),
        )
        coded = _by_value_set(_coded(self.terminology, resource.code)).get("spine-imaging")
        if coded is not None:
            self._imaging(resource, coded, state, date)

    def diagnostic_report(self, resource: Any) -> None:
        if resource.status not in _REPORT_DONE:
            return
        date = _first_date(
            (resource.effectiveDateTime, "effective"),
            (_period(resource.effectivePeriod), "effective"),
            (resource.issued, "issued"),
        )
        coded = _by_value_set(_coded(self.terminology, resource.code)).get("spine-imaging")
        if coded is not None:
            self._imaging(resource, coded, "done", date)

    def imaging_study(self, resource: Any) -> None:
        if resource.status != "available":
            return
        date = _first_date((resource.started, "started"))
        for concept in resource.procedureCode or ():
            coded = _by_value_set(_coded(self.terminology, concept)).get("spine-imaging")
            if coded is not None:
                self._imaging(resource, coded, "done", date)
                return
        self._imaging_from_series(resource, date)

    def _imaging_from_series(self, resource: Any, date: tuple[DateSpan | None, DateKind | None]) -> None:
        """No procedure code: infer MR/CT of the spine from series modality and body site."""
        regions: set[str] = set()
        modality = None
        for series in resource.series or ():
            code = series.modality.code if series.modality else None
            if code in ("MR", "CT") and series.bodySite is not None:
                for match in self.terminology.lookup(series.bodySite.system, series.bodySite.code):
                    if match.value_set == "spine-body-sites":
                        modality = code
                        regions.add(str(match.attributes.get("region", "unspecified")))
        if modality is None:
            return
        coverage = "whole-spine" if {"cervical", "thoracic", "lumbar"} <= regions else (
            regions.pop() if len(regions) == 1 else "spine-unspecified")
        if coverage == "unspecified":
            coverage = "spine-unspecified"
        display = f"{modality} {coverage.replace('-', ' ')} (from series)"
        evidence = Evidence(resource.get_resource_type(), resource.id, display, None, resource.status, *date)
        self.record.imaging.append(ImagingFinding(evidence, "mri" if modality == "MR" else "ct", coverage, "done"))

    def _imaging(self, resource: Any, coded: _Coded, state: str,
                 date: tuple[DateSpan | None, DateKind | None]) -> None:
        attributes = coded.concept.attributes
        evidence = _evidence(resource, coded.display, coded.concept, resource.status, date)
        self.record.imaging.append(
            ImagingFinding(evidence, str(attributes.get("kind", "other")),
                           str(attributes.get("coverage", "spine-unspecified")), state)  # type: ignore[arg-type]
        )


def _contained_medication_code(resource: Any) -> Any:
    """medicationReference "#id" to a contained Medication (as Epic and others send): that Medication's code."""
    reference = resource.medicationReference
    if reference is None or not (reference.reference or "").startswith("#"):
        return None
    for contained in resource.contained or ():
        if contained.get_resource_type() == "Medication" and contained.id == reference.reference[1:]:
            return contained.code
    return None


def _years(value: float, quantity: Any) -> float:
    unit = (quantity.code or quantity.unit or "a").lower()
    return value / 12 if unit in ("mo", "month", "months") else value


def _observed_absent(resource: Any, value_matches: dict[str, Any]) -> bool:
    """Observation.code = the finding, value = Absent / false: the finding was looked for and not found."""
    if resource.valueBoolean is False:
        return True
    qualifier = value_matches.get("presence-qualifiers")
    return qualifier is not None and qualifier.concept.attributes.get("present") is False


def _pain_score(resource: Any) -> float | None:
    """A 0-10 score from valueQuantity, valueInteger or valueString ("7/10"); a 0-100 mm VAS is scaled."""
    value: float | None = None
    scale = 10.0
    if resource.valueQuantity is not None and resource.valueQuantity.value is not None:
        value = float(resource.valueQuantity.value)
        unit = (resource.valueQuantity.code or resource.valueQuantity.unit or "").lower()
        if unit in ("mm", "/100", "{score}/100") or value > 10:
            scale = 100.0
    elif resource.valueInteger is not None:
        value = float(resource.valueInteger)
        scale = 100.0 if value > 10 else 10.0
    elif resource.valueString:
        match = _SCORE_TEXT.match(resource.valueString)
        if match:
            value = float(match.group(1))
            scale = float(match.group(2) or (100 if value > 10 else 10))
    if value is None or value < 0 or value > scale:
        return None
    return value * 10.0 / scale


_HANDLERS = {
    "Patient": _Extractor.patient,
    "Condition": _Extractor.condition,
    "Observation": _Extractor.observation,
    "MedicationStatement": _Extractor.medication_statement,
    "MedicationRequest": _Extractor.medication_request,
    "Procedure": _Extractor.procedure,
    "ServiceRequest": _Extractor.service_request,
    "DiagnosticReport": _Extractor.diagnostic_report,
    "ImagingStudy": _Extractor.imaging_study,
    "Encounter": _Extractor.encounter,
}


def build_record(
    intake: Intake, terminology: Terminology, now: datetime, *, include_unconfirmed: bool = False
) -> ClinicalRecord:
    extractor = _Extractor(terminology, now, include_unconfirmed)
    # The Patient first: onsetAge needs the birth date. The rest by type and id, so that a record makes the same
    # card whatever order it came in: a Bundle's (each EHR orders its own way) or an export's files'.
    ordered = sorted(intake.resources, key=lambda r: (r.get_resource_type() != "Patient", r.get_resource_type(),
                                                      r.id or ""))
    for resource in ordered:
        _HANDLERS[resource.get_resource_type()](extractor, resource)
    extractor.record.skipped = sorted(intake.skipped, key=lambda s: (s.resource_type, s.resource_id or ""))
    extractor.record.ignored_other_patient = intake.other_patient
    return extractor.record
