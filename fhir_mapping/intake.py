"""From raw FHIR JSON bytes to the few validated R4 resources the rules need.

A real chart holds tens of thousands of resources and nearly all are irrelevant (vital signs, routine labs).
Validating each one with fhir.resources costs ~150 µs (docs/performance-budget.md), so we first *peek* at every resource
with a typed msgspec decode that reads only resourceType, id, subject and codes, keep those whose codes are in
our value sets (or whose text names the concept), and validate only those with `fhir.resources.R4B`.

A resource that cannot be read is skipped and reported; it never silences the rest of the record.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import orjson
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from fhir_mapping.dates import parse_span
from fhir_mapping.drug_names import drug_name_tiers, drug_named, names_drug_of_tier
from fhir_mapping.mentions import Mentions, expressions
from fhir_mapping.terminology import (
    CPT,
    ICD10CM,
    LOINC,
    RXNORM,
    SNOMED,
    Terminology,
    canonical_system,
    normalize_code,
)
from fhir_mapping.text import (
    BREAST_CANCER_ANCHORS,
    PAIN_AND_CORD_ANCHORS,
    breast_cancer_in,
    cord_compression_in,
    mentions_anything_relevant,
    spinal_pain_in,
)

MODELS: dict[str, type[Resource]] = {
    "Patient": Patient,
    "Condition": Condition,
    "MedicationStatement": MedicationStatement,
    "MedicationRequest": MedicationRequest,
    "Observation": Observation,
    "Procedure": Procedure,
    "ServiceRequest": ServiceRequest,
    "DiagnosticReport": DiagnosticReport,
    "ImagingStudy": ImagingStudy,
    "Encounter": Encounter,
}


# --- the peek: only the fields relevance needs; unknown fields are skipped by msgspec -------------------
class _Coding(msgspec.Struct, gc=False):
    system: str | None = None
    code: str | int | None = None
    display: str | None = None


class _Concept(msgspec.Struct, gc=False):
    coding: list[_Coding] | None = None
    text: str | None = None


class _Reference(msgspec.Struct, gc=False):
    reference: str | None = None
    display: str | None = None


class _Contained(msgspec.Struct, gc=False):
    resourceType: str = ""
    code: _Concept | list[Any] | None = None  # a list in some resource types (Questionnaire): not ours


class _Series(msgspec.Struct, gc=False):
    bodySite: _Coding | None = None
    modality: _Coding | None = None


class _Period(msgspec.Struct, gc=False):
    start: str | None = None
    end: str | None = None


class _Component(msgspec.Struct, gc=False):
    # An Observation.component as flowsheets export a panel or score (pain location, pain severity, a
    # neurological finding): its code and coded value. Other values are skipped unread.
    code: _Concept | None = None
    valueCodeableConcept: _Concept | None = None


class _Peek(msgspec.Struct, gc=False):
    resourceType: str = ""
    id: str | None = None
    subject: _Reference | None = None
    patient: _Reference | None = None
    code: _Concept | None = None
    medicationCodeableConcept: _Concept | None = None
    medicationReference: _Reference | None = None
    contained: list[_Contained] | None = None
    valueCodeableConcept: _Concept | None = None
    valueString: str | None = None
    procedureCode: list[_Concept] | None = None
    reasonCode: list[_Concept] | None = None
    series: list[_Series] | None = None
    description: str | None = None
    effectiveDateTime: str | None = None
    effectiveInstant: str | None = None
    effectivePeriod: _Period | None = None
    issued: str | None = None
    # Left raw, so that a malformed component never makes the rest of the resource unreadable
    # (_component_concepts decodes them).
    component: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _Entry(msgspec.Struct, gc=False):
    # msgspec.Raw cannot sit in a union with None; an empty Raw stands for "no resource".
    resource: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _Link(msgspec.Struct, gc=False):
    relation: str | None = None


class _Document(msgspec.Struct, gc=False):
    resourceType: str = ""
    entry: list[_Entry] | None = None
    link: list[_Link] | None = None


class _TypeOnly(msgspec.Struct, gc=False):
    resourceType: str = ""
    id: str | None = None


# msgspec raises RecursionError on absurdly deep nesting and UnicodeDecodeError on invalid UTF-8, not
# DecodeError: all mean "unreadable".
DECODE_ERRORS = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)

_peek_decoder = msgspec.json.Decoder(_Peek)
_components_decoder = msgspec.json.Decoder(list[_Component])
_component_decoder = msgspec.json.Decoder(_Component)
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_document_decoder = msgspec.json.Decoder(_Document)
_type_decoder = msgspec.json.Decoder(_TypeOnly)


# JSON as it arrived (the request body, a msgspec.Raw slice of it, or a fetched page): never copied whole.
Buffer = bytes | bytearray | msgspec.Raw


# --- prefetch values, split by the hook request's own decode (cds_hooks.protocol.requests) ----------------------
# Decoding the request with its prefetch values left raw, and then each Bundle with its entries left raw, walks
# the bytes twice. These types let the request's decode split a Bundle into raw entries at once. They hold every
# Bundle, every OperationOutcome and any Patient whose keys are all R4 Patient elements; for anything else (a
# single Condition, a Patient with an unknown key, a value that is not a resource) the request is decoded again
# with raw values, so what is read is never less than the raw bytes would give.
class PrefetchBundle(msgspec.Struct, tag="Bundle", tag_field="resourceType", gc=False):
    entry: list[_Entry] | None = None
    link: list[_Link] | None = None


class PrefetchOutcome(msgspec.Struct, tag="OperationOutcome", tag_field="resourceType", gc=False):
    pass


def _patient_elements() -> list[tuple[str, type, Any]]:
    names = sorted({info.alias or name for name, info in Patient.model_fields.items()})
    # A Struct field cannot start with "_" ("_birthDate": the extensions of birthDate): renamed on the wire.
    return [(f"x{name}" if name.startswith("_") else name, msgspec.Raw,
             msgspec.field(default_factory=msgspec.Raw, name=name)) for name in names]


# Every element of an R4 Patient as raw JSON; an unknown key fails the decode (forbid_unknown_fields), so the
# Patient rebuilt from these is the Patient that was sent.
PrefetchPatient: type[msgspec.Struct] = msgspec.defstruct(
    "PrefetchPatient", _patient_elements(), tag="Patient", tag_field="resourceType", forbid_unknown_fields=True,
    gc=False,
)
PrefetchValue = Any  # PrefetchBundle | PrefetchPatient | PrefetchOutcome: a union mypy cannot spell for defstruct
PREFETCH_VALUE_TYPES: Any = PrefetchBundle | PrefetchPatient | PrefetchOutcome


def _patient_json(patient: msgspec.Struct) -> bytes:
    parts = [b'"resourceType":"Patient"']
    for attribute, name in zip(patient.__struct_fields__, patient.__struct_encode_fields__, strict=True):
        value: msgspec.Raw = getattr(patient, attribute)
        if value:
            parts.append(b'"%s":%s' % (name.encode(), bytes(value)))
    return b"{" + b",".join(parts) + b"}"


# What a coded concept can become in the record, as fhir_mapping.extract reads it and cards.decision uses it
# (docs/clinical-rules.md §1.1-§1.3, §2.6): evidence of a breast-cancer history (a primary, history, in-situ or
# metastasis code, a stage IV value, a tier A or B drug) or a trigger (spinal pain, a neurological feature, a
# pain-location or symptom observation). Every card needs both; free text may be either, and an
# unreadable record whatever its bytes mention (fhir_mapping.mentions).
HISTORY, TRIGGER = 1, 2
EITHER = HISTORY | TRIGGER


@dataclass(frozen=True, slots=True)
class SkippedResource:
    """A resource we could not use. `relevant` says whether it looked like evidence the rules read."""

    resource_type: str
    resource_id: str | None
    reason: str
    relevant: bool
    # What it could have been evidence of, read from its bytes (fhir_mapping.mentions): whatever it says, it
    # holds no more than the roles of the codes and words it mentions.
    roles: int = EITHER


@dataclass(frozen=True, slots=True)
class Document:
    """One FHIR JSON document (a resource or a Bundle), read once, keeping only what the rules may read.

    `problem` says why it is not usable as data: an OperationOutcome (a client's error report), a Bundle
    holding one, a paged Bundle (`next` link: incomplete), or not a FHIR resource at all.
    `picked` are the resources whose codes or text the rules read, each with its peek and its raw JSON (a slice
    of the body, not a copy); `unreadable` the ones that could not be read: a broken entry loses only itself.
    """

    resource_type: str
    problem: str | None
    seen: int = 0
    picked: list[tuple[_Peek, Buffer]] = field(default_factory=list)
    unreadable: list[SkippedResource] = field(default_factory=list)


def _peek(raw: Buffer) -> _Peek | str:
    """The peek, or why the JSON cannot be read."""
    try:
        return _peek_decoder.decode(raw)
    except DECODE_ERRORS as exc:
        return str(exc)


def read_document(raw: Buffer | PrefetchValue, terminology: Terminology) -> Document:
    # The Bundle with each entry left raw (split already by the request's decode, or decoded here), then each
    # entry peeked from its slice: one typed pass over the Bundle could not hand back the raw JSON of the entries
    # we then validate. Each peek is dropped as soon as it is judged irrelevant, so a large Bundle never has all
    # of them alive at once.
    if isinstance(raw, PrefetchBundle):
        head = _Document("Bundle", raw.entry, raw.link)
    elif isinstance(raw, PrefetchOutcome):
        head = _Document("OperationOutcome")
    else:
        if isinstance(raw, PrefetchPatient):
            raw = _patient_json(raw)
        try:
            head = _document_decoder.decode(raw)
        except DECODE_ERRORS:
            return Document("", "not a FHIR resource (unreadable JSON)")
    if not head.resourceType:
        return Document("", "not a FHIR resource")
    if head.resourceType == "OperationOutcome":
        return Document(head.resourceType, "the client reported an error instead of data (OperationOutcome)")
    bundle = head.resourceType == "Bundle"
    resources: Iterable[Buffer] = (e.resource for e in head.entry or () if e.resource) if bundle else (raw,)
    verdict = _verdicts(terminology)
    mentioned = mention_test(terminology)
    seen, picked, unreadable, holds_outcome = 0, [], [], False
    for resource in resources:
        seen += 1
        peek = _peek(resource)
        if isinstance(peek, str):
            kind, rid = _type_and_id(resource)
            holds_outcome = holds_outcome or kind == "OperationOutcome"
            roles = (0 if kind == "Patient" else mentioned.roles(bytes(resource))) if kind in MODELS else None
            if roles is not None:
                unreadable.append(SkippedResource(kind, rid, peek, True, roles))
        elif peek.resourceType == "OperationOutcome":
            holds_outcome = True
        elif (peek.resourceType in MODELS and _is_relevant(peek, verdict)
              and (peek.resourceType == "Patient" or mentioned(bytes(resource)))):
            picked.append((peek, resource))
    problem = None
    if holds_outcome:
        problem = "the Bundle holds an OperationOutcome"
    elif bundle and any(link.relation == "next" for link in head.link or ()):
        problem = "the Bundle is paged (has a next link)"
    return Document(head.resourceType, problem, seen, picked, unreadable)


@dataclass(slots=True)
class Intake:
    # Pain-score Observations (codes in `pain_scores`) dated before this are not read (None: all are).
    pain_scores_since: datetime | None = None
    pain_scores: frozenset[str] = frozenset()
    resources: list[Resource] = field(default_factory=list)
    skipped: list[SkippedResource] = field(default_factory=list)
    other_patient: int = 0  # resources about someone else, not used
    duplicates: int = 0
    seen: int = 0
    _keys: set[tuple[str, str]] = field(default_factory=set)


_PATIENT_REF = re.compile(r"(?:^|/)Patient/([^/]+)(?:/_history/[^/]+)?$")


def _patient_of(reference: str | None) -> str | None:
    """The patient id a subject reference names, or None if it names no patient we can tell."""
    if reference is not None and len(reference) <= _CACHED_REFERENCE:
        return _short_patient_of(reference)
    return _reference_patient(reference)


# A patient's references repeat in every resource of the record; remembered only when short, so that the cache
# (4,096 entries) never holds more than about two million characters, whatever references hostile requests send.
_CACHED_REFERENCE = 256


@functools.lru_cache(maxsize=4096)
def _short_patient_of(reference: str) -> str | None:
    return _reference_patient(reference)


def _reference_patient(reference: str | None) -> str | None:
    if not reference:
        return None
    if reference.startswith("urn:uuid:"):
        return reference[len("urn:uuid:") :]
    match = _PATIENT_REF.search(reference)
    return match.group(1) if match else None


def _concepts(peek: _Peek, verdict: _CodingVerdicts) -> list[_Concept]:
    if (peek.medicationCodeableConcept is None and peek.valueCodeableConcept is None and peek.procedureCode is None
            and peek.reasonCode is None and peek.contained is None):
        concepts = [peek.code] if peek.code is not None else []  # most of a chart: an Observation, one code
        return concepts + _component_concepts(peek.component, verdict) if peek.component else concepts
    concepts = [c for c in (peek.code, peek.medicationCodeableConcept, peek.valueCodeableConcept) if c is not None]
    if peek.procedureCode:
        concepts += peek.procedureCode
    if peek.reasonCode:
        concepts += peek.reasonCode
    for contained in peek.contained or ():  # e.g. the Medication a MedicationRequest refers to as "#med"
        if isinstance(contained.code, _Concept):
            concepts.append(contained.code)
    if peek.component:
        concepts += _component_concepts(peek.component, verdict)
    return concepts


def _component_concepts(raw: msgspec.Raw, verdict: _CodingVerdicts) -> list[_Concept]:
    """The codes and coded values of a panel's components (LOINC 38204-4 pain location, 72514-3 pain severity,
    a finding): a panel or score whose own code is in no value set (a flowsheet row) is relevant for them.
    If the components cannot be decoded together, each is decoded on its own: a malformed one is left out and
    the others still count (validation then reports it)."""
    try:
        components = _components_decoder.decode(raw)
    except DECODE_ERRORS:
        components = []
        for item in _raw_list(raw):
            try:
                components.append(_component_decoder.decode(item))
            except DECODE_ERRORS:
                continue
    concepts = []
    for component in components:
        if component.code is not None:
            concepts.append(component.code)
        if component.valueCodeableConcept is not None:
            concepts.append(component.valueCodeableConcept)
    return concepts


def _raw_list(raw: msgspec.Raw) -> list[msgspec.Raw]:
    try:
        return _raw_list_decoder.decode(raw)
    except DECODE_ERRORS:
        return []


# The value sets fhir_mapping.extract reads from codes in resources. A resource none of whose codes is in
# them (vital signs, routine labs, ...) is never validated. presence-qualifiers only qualify a value.
READ_VALUE_SETS = (
    "breast-cancer", "breast-cancer-history", "breast-carcinoma-in-situ", "breast-cancer-exclusions",
    "bone-metastasis", "spinal-pain", "spine-body-sites", "neuro-red-flags", "breast-cancer-drugs",
    "breast-cancer-supporting", "spine-imaging", "end-of-life", "observation-codes", "stage-iv-values",
    "vertebral-fracture", "constitutional-symptoms", "hypercalcaemia", "treatment-differentials",
)
_HISTORY_SETS = frozenset({"breast-cancer", "breast-cancer-history", "breast-carcinoma-in-situ", "bone-metastasis",
                           "stage-iv-values"})
_HISTORY_DRUG_TIERS = frozenset({"A", "B"})  # tier C (e.g. paclitaxel) never implies a history (§1.1 H3)
_TRIGGER_SETS = frozenset({"spinal-pain", "neuro-red-flags"})
_TRIGGER_OBSERVATION_ROLES = frozenset({"pain-location", "symptom"})


def concept_roles(terminology: Terminology, system: str | None, code: str | int) -> int:
    roles = 0
    for concept in terminology.lookup(system, code):
        value_set = concept.value_set
        if value_set in _HISTORY_SETS or (
                value_set == "breast-cancer-drugs" and concept.attributes.get("tier") in _HISTORY_DRUG_TIERS):
            roles |= HISTORY
        elif value_set in _TRIGGER_SETS or (
                value_set == "observation-codes" and concept.attributes.get("role") in _TRIGGER_OBSERVATION_ROLES):
            roles |= TRIGGER
    return roles


# A coding in one of these systems is authoritative: an Observation coded in them is not read for words.
_STANDARD_SYSTEMS = frozenset({LOINC, SNOMED, ICD10CM, RXNORM, CPT})


@functools.cache
def pain_score_codes(terminology: Terminology) -> frozenset[str]:
    """LOINC pain severity scores (observation-codes with role pain-score; docs/clinical-rules.md §2.8)."""
    concepts = terminology.value_set("observation-codes")
    return frozenset(c.code for c in concepts if c.attributes.get("role") == "pain-score")


@functools.cache
def relevant_codes(terminology: Terminology) -> frozenset[tuple[str, str]]:
    return frozenset(
        (concept.system, concept.code) for vs in READ_VALUE_SETS for concept in terminology.value_set(vs)
    )


@functools.cache
def mention_patterns(terminology: Terminology) -> tuple[tuple[bytes, int], ...]:
    """The expressions of `mention_test`, each with what its match could be evidence of."""
    codes = [(system, code, concept_roles(terminology, system, code)) for system, code in relevant_codes(terminology)]
    # Each word with what a text holding it could be found to say (resource_roles reads texts with extract's
    # own tests: every breast-cancer phrase holds a BREAST_CANCER_ANCHOR, every pain or cord-compression
    # phrase one of PAIN_AND_CORD_ANCHORS), a drug name a history only if the drug's tier makes one.
    words = [*((word, TRIGGER) for word in PAIN_AND_CORD_ANCHORS), *((word, HISTORY) for word in BREAST_CANCER_ANCHORS),
             *((name, HISTORY if tier in _HISTORY_DRUG_TIERS else 0)
               for name, tier in drug_name_tiers(terminology).items())]
    return expressions(codes, words, EITHER)


_mention_tests: dict[Terminology, Mentions] = {}


def mention_test(terminology: Terminology) -> Mentions:
    """Whether raw JSON mentions a code, word or drug name the rules read, and what those could be evidence of.
    A resource other than a Patient is read only if it mentions one (fhir_mapping/mentions.py): one that
    mentions none could not hold evidence, readable or not, so the hook and the sweep, which never parses such
    a line of an export, see the same record. Built once (a few tenths of a second), or handed in already
    built (`use_mention_test`)."""
    found = _mention_tests.get(terminology)
    if found is None:
        found = _mention_tests[terminology] = Mentions(mention_patterns(terminology))
    return found


def use_mention_test(terminology: Terminology, mentions: Mentions) -> None:
    """Use this test, built from `mention_patterns(terminology)` (e.g. loaded already compiled by the sweep's
    cache, cds_hooks/sweep/pattern_cache.py), instead of compiling one."""
    _mention_tests[terminology] = mentions


# What _CodingVerdicts remembers lives as long as the service, so it is bounded in entries and in what each key
# may hold: hostile requests could send a million distinct codes, or megabyte-long displays. A longer key is judged
# every time and never remembered, so its five caches hold at most 5 x 20,000 keys of up to 256 characters
# (~26 million characters), whatever clients send.
_MAX_ENTRIES = 20_000
_MAX_KEY = 256  # characters of a text, or of a system and code together


def _remember(cache: dict[Any, Any], key: object, value: object, key_length: int) -> None:
    if key_length <= _MAX_KEY and len(cache) < _MAX_ENTRIES:
        cache[key] = value


class _CodingVerdicts:
    """(system, code) exactly as sent -> (relevant, in a standard system). Charts repeat the same few
    codes thousands of times, so canonicalising each once is most of the saving on a large prefetch."""

    def __init__(self, terminology: Terminology) -> None:
        self.terminology = terminology
        self.relevant = relevant_codes(terminology)
        self.verdicts: dict[tuple[str | None, str | int], tuple[bool, bool]] = {}
        self.roles: dict[tuple[str | None, str | int], int] = {}
        self.history_drugs: dict[str, bool] = {}
        self.text_role_cache: dict[tuple[bool, str], int] = {}
        # (medication?, gathered text) -> relevant. Displays repeat as often as codes do (a Bulk export of
        # Synthea patients: the same few hundred texts for millions of resources), and the word and drug-name
        # checks cost more than the decode; the verdict is a pure function of the two.
        self.texts: dict[tuple[bool, str], bool] = {}

    def text(self, medication: bool, text: str) -> bool:
        verdict = self.texts.get((medication, text))
        if verdict is None:
            named = medication and drug_named(self.terminology, text) is not None
            verdict = named or mentions_anything_relevant(text)
            _remember(self.texts, (medication, text), verdict, len(text))
        return verdict

    def __call__(self, system: str | None, code: str | int) -> tuple[bool, bool]:
        verdict = self.verdicts.get((system, code))
        if verdict is None:
            canonical = canonical_system(system)
            verdict = (
                canonical is not None and (canonical, normalize_code(canonical, code)) in self.relevant,
                canonical in _STANDARD_SYSTEMS,
            )
            _remember(self.verdicts, (system, code), verdict, _code_length(system, code))
        return verdict


    def history_drug(self, text: str) -> bool:
        verdict = self.history_drugs.get(text)
        if verdict is None:
            verdict = names_drug_of_tier(self.terminology, text, _HISTORY_DRUG_TIERS)
            _remember(self.history_drugs, text, verdict, len(text))
        return verdict

    def text_roles(self, condition: bool, text: str) -> int:
        """What extract can find in one text (fhir_mapping/extract.py reads a text with these very tests): a
        breast cancer in a Condition's words, cord compression or spinal pain in any resource's."""
        roles = self.text_role_cache.get((condition, text))
        if roles is None:
            roles = HISTORY if condition and breast_cancer_in(text) else 0
            if cord_compression_in(text) or spinal_pain_in(text) is not None:
                roles |= TRIGGER
            _remember(self.text_role_cache, (condition, text), roles, len(text))
        return roles

    def role(self, system: str | None, code: str | int) -> int:
        roles = self.roles.get((system, code))
        if roles is None:
            roles = concept_roles(self.terminology, system, code)
            _remember(self.roles, (system, code), roles, _code_length(system, code))
        return roles


def _code_length(system: str | None, code: str | int) -> int:
    return len(system or "") + (len(code) if isinstance(code, str) else 0)


@functools.cache
def _verdicts(terminology: Terminology) -> _CodingVerdicts:
    return _CodingVerdicts(terminology)


def _is_relevant(peek: _Peek, verdict: _CodingVerdicts) -> bool:
    # Called for every resource of a chart: codes first, with the memoised verdicts read inline, and text
    # gathered only when no standard code settled the question.
    if peek.resourceType == "Patient":
        return True
    concepts = _concepts(peek, verdict)
    verdicts = verdict.verdicts
    standard = False
    for concept in concepts:
        for coding in concept.coding or ():
            if coding.code is not None:
                relevant, in_standard = verdicts.get((coding.system, coding.code)) or verdict(
                    coding.system, coding.code)
                if relevant:
                    return True
                standard = standard or in_standard
    # Free text matters for records coded in no standard system; a LOINC-coded heart rate never does.
    if standard and peek.resourceType == "Observation":
        return False
    for series in peek.series or ():
        for coded in (series.bodySite, series.modality):
            if coded and coded.code is not None and verdict(coded.system, coded.code)[0]:
                return True
    texts = [text for concept in concepts for coding in concept.coding or () if (text := coding.display)]
    texts += [text for concept in concepts if (text := concept.text)]
    texts += [text for text in (peek.valueString, peek.description) if text]
    if peek.medicationReference is not None and peek.medicationReference.display:
        texts.append(peek.medicationReference.display)
    if not texts:
        return False
    return verdict.text(peek.resourceType in ("MedicationStatement", "MedicationRequest"), " | ".join(texts))


def resource_roles(peek: _Peek, verdict: _CodingVerdicts) -> int:
    """What a relevant resource can be evidence of (HISTORY, TRIGGER): its codes' roles, and what extract can
    find in the words it reads. A drug's words are read for a drug name whatever its codes (extract names a drug
    from them when no code is in breast-cancer-drugs): a history only if they name a tier A or B drug. Other
    words are read where a concept has no code in our value sets (and, to be sure, in the free-text fields),
    with extract's own tests."""
    roles = 0
    medication = peek.resourceType in ("MedicationStatement", "MedicationRequest")
    texts = [text for text in (peek.valueString, peek.description) if text and not medication]
    if medication and peek.medicationReference is not None and peek.medicationReference.display:
        texts.append(peek.medicationReference.display)
    for concept in _concepts(peek, verdict):
        coded = False
        for coding in concept.coding or ():
            if coding.code is not None and verdict(coding.system, coding.code)[0]:
                coded = True
                roles |= verdict.role(coding.system, coding.code)
        if not coded or medication:
            texts += [text for coding in concept.coding or () if (text := coding.display)]
            if concept.text:
                texts.append(concept.text)
    if medication:
        if any(verdict.history_drug(text) for text in texts):
            roles |= HISTORY
    else:
        condition = peek.resourceType == "Condition"
        for text in texts:
            if roles == EITHER:
                break
            roles |= verdict.text_roles(condition, text)
    return roles


def document_roles(documents: Iterable[Document], terminology: Terminology) -> int:
    """What the relevant resources of these documents can be evidence of, together. A record short of either
    a history or a trigger gets no card whatever its resources hold, so nothing of it need be validated; a
    resource other than a Patient that could not be read holds what its bytes mention, and a document that
    is not one might have been either."""
    verdict = _verdicts(terminology)
    roles = 0
    for document in documents:
        if not document.resource_type:
            return EITHER
        for skipped in document.unreadable:
            if skipped.relevant and skipped.resource_type != "Patient":
                roles |= skipped.roles
        for peek, _ in document.picked:
            if peek.resourceType != "Patient":
                roles |= resource_roles(peek, verdict)
                if roles == EITHER:
                    return roles
    return roles


class _Owner(msgspec.Struct, gc=False):
    """Whose a resource is, read leniently from one the peek could not read (its other fields are broken)."""

    resourceType: Any = ""
    id: Any = None
    subject: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    patient: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


_owner_decoder = msgspec.json.Decoder(_Owner)


class _Subject(msgspec.Struct, gc=False):
    """Whose a resource is, typed as the peek types it (a sweep reads only this of most lines it keeps)."""

    resourceType: str = ""
    id: str | None = None
    subject: _Reference | None = None
    patient: _Reference | None = None


_subject_decoder = msgspec.json.Decoder(_Subject)


class _Kind(msgspec.Struct, gc=False):
    """A resource's type alone, wherever in the object it is written."""

    resourceType: str = ""


_kind_decoder = msgspec.json.Decoder(_Kind)
_reference_decoder = msgspec.json.Decoder(_Reference)

# (resourceType, patient id, relevant, roles): what `Screen` says of one resource.
Screened = tuple[str, str | None, bool, int]
UNSCANNED = -1  # Screen: the caller has not looked for mentions (roles are never negative)


_OPENING = b'{"resourceType":"'
# The same with JSON's whitespace wherever JSON allows it: writers other than Bulk servers put it there (Python's
# json.dumps writes `{"resourceType": "Condition", ...`), and such a line is no less a Condition.
_SPACED_OPENING = re.compile(rb'[ \t\r]*\{[ \t\r]*"resourceType"[ \t\r]*:[ \t\r]*"')
_LONGEST_TYPE = 64  # characters: FHIR's longest resource type name has 34


def opening(raw: Buffer) -> tuple[str, int] | None:
    """The resourceType a line opens with (`{"resourceType":"Condition",...`, as Bulk servers write it, or with
    whitespace), and how many bytes that opening takes through the type's closing quote; None when it opens
    otherwise (then only a decode can tell)."""
    if raw[:17] == _OPENING:
        at = 17
    else:
        spaced = _SPACED_OPENING.match(raw)
        if spaced is None:
            return None
        at = spaced.end()
    close = raw.find(b'"', at, at + _LONGEST_TYPE + 1)
    if close <= at:
        return None
    kind = bytes(raw[at:close]).decode("ascii", "replace")
    return (kind, close + 1) if kind.isalpha() else None


def opening_type(raw: Buffer) -> str | None:
    """The resourceType a line opens with (see `opening`), or None."""
    found = opening(raw)
    return None if found is None else found[0]


def _declared_type(raw: Buffer) -> str | None:
    """The resourceType a JSON object names, read as `opening` reads it (a name of letters), or None when it is
    not JSON or names none so (then the peek says why)."""
    try:
        kind = _kind_decoder.decode(raw).resourceType
    except DECODE_ERRORS:
        return None
    return kind if kind.isascii() and kind.isalpha() else None


def _owner_of(peek: _Peek | _Subject) -> str | None:
    """The patient a peeked resource is about, exactly as `_admit` reads it."""
    if peek.resourceType == "Patient":
        return peek.id
    return _patient_of((peek.subject or peek.patient or _Reference()).reference)


class Screen:
    """Judges one raw FHIR resource (a line of a Bulk Data export) the way the hook's intake judges a Bundle
    entry: the same mention test, peek and relevance verdicts, so the sweep keeps exactly what the hook reads.

    Calling it returns (resourceType, patient id, relevant, roles), or a short reason why the bytes are not a
    resource. The patient id is read only for relevant resources (the rest are never grouped by patient);
    roles are what `document_roles` makes of the resource, so a sweep can tell without reading it again which
    patients could get a card.
    A resource of a type the rules read that mentions what they read but cannot be read is *relevant*: the
    hook reports such a record as unreadable, so the sweep must hand it to the same intake for that patient.
    """

    __slots__ = ("_mentioned", "_verdict")

    def __init__(self, terminology: Terminology) -> None:
        self._verdict = _verdicts(terminology)
        self._mentioned = mention_test(terminology)

    def __call__(self, raw: Buffer, found: int | None = UNSCANNED) -> Screened | str:
        """`found`: what the line's mentions could be evidence of (Mentions.roles: None when it mentions
        nothing the rules read), when the caller has scanned it already."""
        # A type the rules never read (Claim, ExplanationOfBenefit, DocumentReference...: over a quarter of a
        # Synthea export's bytes), or a resource other than a Patient that mentions nothing the rules read, is
        # settled without reading the rest: the hook would drop it unread too, and it is counted as that type.
        # Bulk servers write resourceType first, where the opening says it; elsewhere (keys sorted, say) the
        # type is decoded alone first, and the line settled the same way.
        kind = opening_type(raw)
        if kind is None:
            kind = _declared_type(raw)
        if kind is not None and kind != "OperationOutcome" and kind not in MODELS:
            return kind, None, False, 0
        if found == UNSCANNED:
            found = 0 if kind == "Patient" else self._mentioned.roles(bytes(raw))
        if kind is not None and kind not in ("OperationOutcome", "Patient") and found is None:
            return kind, None, False, 0
        try:
            peek = _peek_decoder.decode(raw)
        except DECODE_ERRORS:
            return self._unreadable(raw, found)
        kind = peek.resourceType
        if not kind:
            return "not a FHIR resource (no resourceType)"
        if kind == "OperationOutcome":
            return "OperationOutcome (an error report, not data)"
        if kind in MODELS and (kind == "Patient" or found is not None) and _is_relevant(peek, self._verdict):
            return kind, _owner_of(peek), True, 0 if kind == "Patient" else resource_roles(peek, self._verdict)
        return kind, None, False, 0

    @staticmethod
    def owner(raw: Buffer, kind: str) -> str | None:
        """The patient a resource of type `kind` (not Patient) is about, read from its subject or patient and
        nothing else, with the peek's own types: what `__call__` reads when it can read the resource. None when
        those fields cannot be read so (then only `__call__` can tell), the resource is of another type, or it
        names no patient."""
        try:
            found = _subject_decoder.decode(raw)
        except DECODE_ERRORS:
            return None
        return _owner_of(found) if found.resourceType == kind else None

    @staticmethod
    def _unreadable(raw: Buffer, found: int | None) -> Screened | str:
        try:
            owner = _owner_decoder.decode(raw)
        except DECODE_ERRORS:
            return "unreadable JSON"
        kind = owner.resourceType
        if not isinstance(kind, str) or not kind:
            return "not a FHIR resource (no resourceType)"
        if kind not in MODELS:
            return "unreadable resource of a type the rules do not read"  # one reason: the names are the data's
        if kind == "Patient":
            return kind, owner.id if isinstance(owner.id, str) else None, True, 0
        if found is None:
            return "unreadable resource that mentions nothing the rules read"
        return kind, _lenient_owner(owner), True, found


def _lenient_owner(owner: _Owner) -> str | None:
    for raw_reference in (owner.subject, owner.patient):
        if raw_reference:
            try:
                reference = _reference_decoder.decode(raw_reference)
            except DECODE_ERRORS:
                continue
            return _patient_of(reference.reference)
    return None


def collect(
    documents: Iterable[Document | Buffer], patient_id: str | None, terminology: Terminology, *,
    pain_scores_since: datetime | None = None,
) -> Intake:
    """Read prefetch values / fetched pages (each a resource or a Bundle) into one deduplicated intake."""
    intake = Intake(pain_scores_since, pain_score_codes(terminology))
    for document in documents:
        if not isinstance(document, Document):
            document = read_document(document, terminology)
        add_document(intake, document, patient_id)
    return intake


def add_document(intake: Intake, document: Document, patient_id: str | None) -> None:
    if not document.resource_type:
        intake.skipped.append(SkippedResource("unknown", None, document.problem or "not a FHIR resource", True))
        return
    intake.seen += document.seen
    intake.skipped.extend(document.unreadable)
    for peek, raw in document.picked:
        _admit(intake, peek, bytes(raw), patient_id)


def _old_pain_score(peek: _Peek, since: datetime, codes: frozenset[str]) -> bool:
    """A pain-score Observation dated before `since` (a cheap look at codes and dates before validation)."""
    if peek.resourceType != "Observation" or peek.code is None:
        return False
    if not any(c.code in codes for c in peek.code.coding or () if isinstance(c.code, str)):
        return False
    period_start = peek.effectivePeriod.start if peek.effectivePeriod else None
    span = parse_span(peek.effectiveDateTime or peek.effectiveInstant or period_start or peek.issued)
    return span is not None and span.latest < since


def _admit(intake: Intake, peek: _Peek, raw: bytes, patient_id: str | None) -> None:
    """A relevant resource: drop it if it is someone else's, a duplicate or an old pain score, else validate
    and keep it."""
    if intake.pain_scores_since is not None and _old_pain_score(peek, intake.pain_scores_since, intake.pain_scores):
        return
    if patient_id is not None:
        owner = peek.id if peek.resourceType == "Patient" else _patient_of(
            (peek.subject or peek.patient or _Reference()).reference
        )
        if owner is not None and owner != patient_id:
            intake.other_patient += 1
            return
    if peek.id is not None:
        key = (peek.resourceType, peek.id)
        if key in intake._keys:
            intake.duplicates += 1
            return
        intake._keys.add(key)
    resource = validate(MODELS[peek.resourceType], raw)
    if isinstance(resource, str) and peek.resourceType == "Observation":
        salvaged = _without_broken_components(raw)
        if salvaged is not None:
            # The panel is used without the components that cannot be read, and those are reported.
            kept, broken = salvaged
            intake.resources.append(kept)
            reason = f"{broken} unreadable component(s) left out; {resource}"
            intake.skipped.append(SkippedResource(peek.resourceType, peek.id, reason, True))
            return
    if isinstance(resource, str):
        intake.skipped.append(SkippedResource(peek.resourceType, peek.id, resource, True))
    else:
        intake.resources.append(resource)


def _without_broken_components(raw: bytes) -> tuple[Resource, int] | None:
    """An Observation that is valid once the components that fail validation are left out, and how many were
    left out; None if it has no such component or is invalid for another reason too."""
    try:
        value = repair(orjson.loads(raw))
    except (orjson.JSONDecodeError, RecursionError):
        return None
    components = value.get("component") if isinstance(value, dict) else None
    if not isinstance(components, list):
        return None
    good = [c for c in components if _valid_component(c)]
    if len(good) == len(components):
        return None
    if good:
        value["component"] = good
    else:
        del value["component"]
    try:
        return Observation.model_validate(value), len(components) - len(good)
    except ValidationError:
        return None


def _valid_component(component: Any) -> bool:
    try:
        ObservationComponent.model_validate(component)
    except ValidationError:
        return False
    return True


def _type_and_id(raw: Buffer) -> tuple[str, str | None]:
    try:
        head = _type_decoder.decode(raw)
    except DECODE_ERRORS:
        return "unknown", None
    return head.resourceType or "unknown", head.id


def validate(model: type[Resource], raw: bytes) -> Resource | str:
    """The validated resource, or a short reason why it could not be read (no resource content in it)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        pass
    try:
        repaired = repair(orjson.loads(raw))
        return model.model_validate(repaired)
    except (orjson.JSONDecodeError, RecursionError):
        return f"invalid {model.__name__}: unreadable JSON"
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:3]
        )
        return f"invalid {model.__name__}: {problems}"


_NAIVE_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")


def repair(value: Any, key: str = "") -> Any:
    """Mend what EHRs commonly send that R4 forbids but whose meaning is clear.

    - a code sent as a JSON number ("code": 161891005) -> the same code as a string (docs/clinical-rules.md §3 item 23);
    - a dateTime without a timezone -> read as UTC (FHIR requires a zone when a time is given).
    """
    if isinstance(value, dict):
        return {k: repair(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [repair(v, key) for v in value]
    if key == "code" and isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str) and _NAIVE_DATETIME.match(value):
        return value + (":00" if value.count(":") == 1 else "") + "+00:00"
    return value
