"""Clinical scenarios, black-box: a patient-view request in, the highest card indicator out.

Written from docs/clinical-rules.md (§1 rules, §3 edge cases), not from the implementation.
Every scenario sends all nine prefetch keys and no fhirServer, so the service can never fetch. Every
response is also checked against the CDS Hooks 2.0 card rules (`assert_valid_cds_response`).

Expected outcomes are a single indicator (None = no card). A tuple lists the acceptable outcomes and is
used only where docs/clinical-rules.md itself leaves a choice ("at most info", "ignore or flag").
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from tests.scenarios.fhir_builders import (
    ABSENT,
    ANASTROZOLE_SCD,
    BACKACHE,
    BONE_SCAN_LOINC,
    CAUDA_EQUINA_ICD,
    CAUDA_EQUINA_SNOMED,
    CHRONIC_LOW_BACK_PAIN,
    CORD_COMPRESSION,
    CT_WHOLE_SPINE_SNOMED,
    DIFFICULTY_WALKING,
    DOCETAXEL,
    FULVESTRANT,
    GENERIC_WEAKNESS,
    ICD10_WHO,
    JSON,
    LETROZOLE,
    LUMBAR_RADICULOPATHY,
    MRI_LUMBAR_SNOMED,
    MRI_THORACIC_LUMBAR_SNOMED,
    MRI_WHOLE_SPINE_LOINC,
    MRI_WHOLE_SPINE_SNOMED,
    MUSCLE_WEAKNESS,
    NECK_PAIN,
    OTHER_PATIENT_ID,
    PAIN_PRIMARY_LOCATION,
    PALBOCICLIB,
    PET_WHOLE_BODY_LOINC,
    PREFETCH_KEYS,
    PRESENT,
    SADDLE_NUMBNESS,
    SPINE_SITE,
    TAMOXIFEN,
    THORACIC_PAIN,
    URINARY_RETENTION,
    VERZENIO_100_SBD,
    WHOLE_SPINE_ORDER_CODES,
    XRAY_WHOLE_SPINE_SNOMED,
    back_pain,
    breast_cancer,
    coding,
    concept,
    condition,
    days_ago,
    diagnostic_report,
    finding,
    heart_rate,
    hook_request,
    icd10cm,
    imaging_study,
    iso_datetime,
    medication_request,
    medication_statement,
    observation,
    patient,
    procedure,
    service_request,
    snomed,
    symptom_observation,
    years_before_today,
)

URL = "/cds-services/breast-cancer-back-pain"
INDICATORS = ("info", "warning", "critical")
RANK: dict[str | None, int] = {None: 0, "info": 1, "warning": 2, "critical": 3}
PRIORITY_FOR_INDICATOR = {"warning": "urgent", "critical": "stat"}  # HL7 indicator-to-request-priority [CDS]
AT_MOST_INFO = (None, "info")
Expected = str | None | tuple[str | None, ...]


# --- CDS Hooks 2.0 response rules ------------------------------------------------------------------------
def _assert_no_empty_values(value: Any, path: str) -> None:
    """CDS Hooks: JSON elements SHALL NOT be null or empty ("", [], {}); `cards: []` is the one exception."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            assert item is not None and item != "" and item != [] and item != {}, f"empty value at {where}"
            _assert_no_empty_values(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            where = f"{path}[{index}]"
            assert item is not None and item != "" and item != [] and item != {}, f"empty value at {where}"
            _assert_no_empty_values(item, where)


def _is_absolute_url(url: Any, *, https_only: bool) -> bool:
    if not isinstance(url, str):
        return False
    parsed = urlparse(url)
    schemes = ("https",) if https_only else ("http", "https")
    return parsed.scheme in schemes and bool(parsed.netloc)


def _assert_valid_action(action: Any, where: str, indicator: str, patient_id: str | None) -> None:
    assert isinstance(action, dict), where
    assert action.get("type") in ("create", "update", "delete"), f"{where}.type"
    assert isinstance(action.get("description"), str), f"{where}.description is required"
    if action["type"] in ("create", "update"):
        resource = action.get("resource")
        assert isinstance(resource, dict), f"{where}.resource must be a FHIR resource object"
        assert isinstance(resource.get("resourceType"), str), f"{where}.resource.resourceType"
        if resource["resourceType"] == "ServiceRequest":
            validated = ServiceRequest.model_validate(resource).model_dump(mode="json", exclude_none=True)
            assert validated == resource, f"{where}.resource is not a valid R4 ServiceRequest as it stands"
            for field in ("status", "intent", "subject", "code", "priority"):
                assert field in resource, f"{where}.resource.{field} is missing"
            wanted = PRIORITY_FOR_INDICATOR.get(indicator)
            if wanted is not None:
                assert resource["priority"] == wanted, f"{where}: a {indicator} card orders with {wanted}"
            if patient_id is not None:
                assert resource["subject"].get("reference") == f"Patient/{patient_id}", f"{where}.subject"


# --- our own card rules: short, no resource references in the text, links only as links ------------------
MAX_DETAIL = {"critical": 900, "warning": 700, "info": 700}
REFERENCE_IN_TEXT = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]+")
RULES_VERSION_KEY = "org.mscc-alert.rules-version"
EVIDENCE_KEY = "org.mscc-alert.evidence"


def assert_card_reads_at_a_glance(card: Any, where: str = "card") -> None:
    """A card a clinician takes in at a glance: the detail within its length limit (Markdown included), no
    resource ids in the text, at most three links (absolute https) and none of them repeated in the detail;
    the rules version and the evidence machine-readable in the card's extension."""
    indicator = card.get("indicator")
    detail = card.get("detail", "")
    # An MSCC card downgraded to info for end-of-life care keeps the critical card's room (its summary names MSCC).
    limit = MAX_DETAIL["critical"] if "MSCC" in card.get("summary", "") else MAX_DETAIL.get(indicator, 700)
    assert len(detail) <= limit, f"{where}.detail is {len(detail)} characters"
    for field in ("summary", "detail"):
        found = REFERENCE_IN_TEXT.search(card.get(field, ""))
        assert found is None, f"{where}.{field} names a resource reference: {found.group() if found else ''}"
    links = card.get("links", [])
    assert len(links) <= 3, f"{where} has {len(links)} links"
    for link in links:
        assert _is_absolute_url(link.get("url"), https_only=True), f"{where}: link {link.get('url')!r}"
        assert link["url"] not in detail, f"{where}.detail repeats the link {link['url']}"
    assert "http://" not in detail and "https://" not in detail, f"{where}.detail holds a URL"
    extension = card.get("extension", {})
    assert re.fullmatch(r"\d+\.\d+\.\d+\+[0-9a-f]{8}", str(extension.get(RULES_VERSION_KEY))), (
        f"{where}: no rules version in the extension")
    assert str(extension.get(RULES_VERSION_KEY)).split("+")[1] in card["source"]["label"], (
        f"{where}.source.label does not name the rules version")
    for reference in extension.get(EVIDENCE_KEY, []):
        assert REFERENCE_IN_TEXT.fullmatch(reference), f"{where}: evidence {reference!r} is not a reference"


def assert_valid_cds_response(body: Any, *, patient_id: str | None = None, ours: bool = True) -> None:
    """Assert the CDS Hooks 2.0 response and card rules (docs/cds-hooks-conformance.md §1.6, §1.10) on a response
    body, and (`ours`) this service's own card rules (assert_card_reads_at_a_glance)."""
    assert isinstance(body, dict), "response must be a JSON object"
    assert isinstance(body.get("cards"), list), "`cards` must be present (an array, possibly empty)"
    _assert_no_empty_values({k: v for k, v in body.items() if k != "cards"}, "$")
    for index, card in enumerate(body["cards"]):
        _assert_no_empty_values(card, f"$.cards[{index}]")
    uuids: list[str] = []
    for index, card in enumerate(body["cards"]):
        where = f"cards[{index}]"
        assert isinstance(card, dict), where
        assert isinstance(card.get("uuid"), str), f"{where}.uuid is needed for feedback"
        uuids.append(card["uuid"])
        summary = card.get("summary")
        assert isinstance(summary, str) and 0 < len(summary) < 140, f"{where}.summary must be <140 chars"
        indicator = card.get("indicator")
        assert indicator in INDICATORS, f"{where}.indicator {indicator!r}"
        if "detail" in card:
            assert isinstance(card["detail"], str), f"{where}.detail"
        source = card.get("source")
        assert isinstance(source, dict) and isinstance(source.get("label"), str), f"{where}.source.label"
        if "url" in source:
            assert _is_absolute_url(source["url"], https_only=False), f"{where}.source.url must be absolute"
        if "icon" in source:
            assert _is_absolute_url(source["icon"], https_only=False), f"{where}.source.icon must be absolute"
        if "topic" in source:
            assert {"code", "system"} <= set(source["topic"]), f"{where}.source.topic is a Coding"
        suggestions = card.get("suggestions")
        if suggestions is not None:
            assert isinstance(suggestions, list), f"{where}.suggestions"
            assert card.get("selectionBehavior") in ("at-most-one", "any"), (
                f"{where}: suggestions require selectionBehavior (cds-resp-6)"
            )
            if card["selectionBehavior"] == "at-most-one":
                recommended = [s for s in suggestions if s.get("isRecommended") is True]
                assert len(recommended) <= 1, f"{where}: at-most-one allows one isRecommended (cds-resp-1)"
            for s_index, suggestion in enumerate(suggestions):
                s_where = f"{where}.suggestions[{s_index}]"
                assert isinstance(suggestion.get("label"), str), f"{s_where}.label"
                assert isinstance(suggestion.get("uuid"), str), f"{s_where}.uuid is needed for feedback"
                uuids.append(suggestion["uuid"])
                for a_index, action in enumerate(suggestion.get("actions", [])):
                    _assert_valid_action(action, f"{s_where}.actions[{a_index}]", indicator, patient_id)
        for r_index, reason in enumerate(card.get("overrideReasons", [])):
            for field in ("code", "system", "display"):
                assert isinstance(reason.get(field), str), f"{where}.overrideReasons[{r_index}].{field}"
        for l_index, link in enumerate(card.get("links", [])):
            l_where = f"{where}.links[{l_index}]"
            assert isinstance(link.get("label"), str), f"{l_where}.label"
            assert _is_absolute_url(link.get("url"), https_only=True), f"{l_where}.url must be absolute https"
            assert link.get("type") in ("absolute", "smart"), f"{l_where}.type"
            if link["type"] != "smart":
                assert "appContext" not in link, f"{l_where}: appContext only on smart links (cds-resp-3)"
    for index, action in enumerate(body.get("systemActions", [])):
        _assert_valid_action(action, f"systemActions[{index}]", "info", patient_id)
    assert len(uuids) == len(set(uuids)), "card and suggestion uuids must be unique"
    if ours:
        for index, card in enumerate(body["cards"]):
            assert_card_reads_at_a_glance(card, f"cards[{index}]")


# --- helpers ---------------------------------------------------------------------------------------------
def highest_indicator(body: JSON) -> str | None:
    indicators = [card["indicator"] for card in body["cards"]]
    return max(indicators, key=lambda i: RANK[i]) if indicators else None


def call_service(service_client: Any, request_body: JSON) -> JSON:
    """POST the hook, check status and the CDS Hooks card rules, return the body."""
    response = service_client.post(URL, json=request_body)
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
    body: JSON = response.json()
    assert_valid_cds_response(body, patient_id=request_body["context"]["patientId"])
    return body


def card_text(card: JSON) -> str:
    return f"{card['summary']}\n{card.get('detail', '')}"


def top_card(body: JSON) -> JSON:
    return max(body["cards"], key=lambda card: RANK[card["indicator"]])


def ordered_service_requests(card: JSON) -> list[JSON]:
    return [
        action["resource"]
        for suggestion in card.get("suggestions", [])
        for action in suggestion.get("actions", [])
        if action.get("type") == "create" and action["resource"].get("resourceType") == "ServiceRequest"
    ]


def codes_of(resource: JSON) -> set[tuple[str, str]]:
    return {(c.get("system"), str(c.get("code"))) for c in resource.get("code", {}).get("coding", [])}


def case(*conditions: JSON, pt: JSON | None = None, **keys: Any) -> JSON:
    """A request for one patient (default: a 62-year-old woman) with these Conditions."""
    return hook_request(pt or patient(), conditions=list(conditions), **keys)


def bc_case(*conditions: JSON, pt: JSON | None = None, **keys: Any) -> JSON:
    """As `case`, with coded breast cancer (SNOMED 254837009 + C50.911, three years ago) on the list."""
    return case(breast_cancer(), *conditions, pt=pt, **keys)


def text_condition(text: str, **kwargs: Any) -> JSON:
    """A Condition with only `code.text` (§3.11), recent."""
    kwargs.setdefault("onset_days_ago", 10)
    kwargs.setdefault("recorded_days_ago", kwargs["onset_days_ago"])
    return condition(concept(text=text), category="encounter-diagnosis", **kwargs)


def _year_month_last_month() -> str:
    """'YYYY-MM' of last month: its latest instant is at most 31 days ago, so within the 42-day window."""
    first_of_this_month = days_ago(0).date().replace(day=1)
    return (first_of_this_month - timedelta(days=1)).strftime("%Y-%m")


def _malformed_big_prefetch() -> JSON:
    """Cancer and new pain, plus a Condition whose `code` is a string and 500 irrelevant Observations."""
    malformed = condition("back pain", onset_days_ago=5)
    vitals = [heart_rate(60 + i % 40, effective_days_ago=i % 300) for i in range(500)]
    return bc_case(malformed, back_pain(), observations=vitals)


def _malformed_observation() -> JSON:
    broken = observation(concept(coding("http://loinc.org", "72514-3")), valueQuantity="seven")
    return bc_case(back_pain(), observations=[broken, symptom_observation(status="amended")])


# --- the scenarios ---------------------------------------------------------------------------------------
SCENARIOS = [
    # §1.3 core tiers
    pytest.param(bc_case(back_pain()), "warning", id="bc-new-low-back-pain"),
    pytest.param(bc_case(), None, id="bc-without-spinal-pain"),
    pytest.param(case(back_pain()), None, id="new-back-pain-without-cancer-history"),
    pytest.param(bc_case(back_pain(*THORACIC_PAIN)), "warning", id="bc-new-thoracic-pain"),
    pytest.param(bc_case(back_pain(*NECK_PAIN)), "warning", id="bc-new-neck-pain-cervicalgia"),
    pytest.param(bc_case(back_pain(), finding(DIFFICULTY_WALKING)), "critical", id="bc-new-pain-difficulty-walking"),
    pytest.param(bc_case(back_pain(), finding(URINARY_RETENTION)), "critical", id="bc-new-pain-urinary-retention"),
    pytest.param(bc_case(back_pain(), finding(MUSCLE_WEAKNESS)), "critical", id="bc-new-pain-muscle-weakness"),
    # M54.1x is both spinal pain and a neurological (radicular) feature (table 2.5)
    pytest.param(bc_case(back_pain(LUMBAR_RADICULOPATHY)), "critical", id="bc-new-lumbar-radiculopathy"),
    pytest.param(bc_case(finding(CORD_COMPRESSION)), "critical", id="bc-cord-compression-without-pain"),
    pytest.param(bc_case(finding(CAUDA_EQUINA_ICD)), "critical", id="bc-cauda-equina-icd-without-pain"),
    pytest.param(bc_case(finding(CAUDA_EQUINA_SNOMED)), "critical", id="bc-cauda-equina-snomed-without-pain"),
    pytest.param(bc_case(finding(SADDLE_NUMBNESS)), "critical", id="bc-saddle-numbness-without-pain"),  # §3.19
    # §2.6/§3.19: generic weakness only counts together with spinal pain
    pytest.param(bc_case(finding(GENERIC_WEAKNESS)), None, id="bc-generic-weakness-without-spinal-pain"),
    pytest.param(case(finding(CORD_COMPRESSION), back_pain()), None, id="cord-compression-without-cancer-history"),
    # "Neurological features always override chronicity" (§1.2.5)
    pytest.param(
        bc_case(back_pain(*CHRONIC_LOW_BACK_PAIN, onset_days_ago=5 * 365), finding(DIFFICULTY_WALKING)),
        "critical",
        id="bc-chronic-back-pain-plus-new-neuro-feature",
    ),
    # §1.5.3 / §1.5.5 population
    pytest.param(bc_case(back_pain(), pt=patient(deceased=True)), None, id="deceased-boolean"),
    pytest.param(bc_case(back_pain(), pt=patient(deceased=iso_datetime(2))), None, id="deceased-datetime"),
    pytest.param(bc_case(back_pain(), pt=patient(deceased=False)), "warning", id="deceased-false-still-alerts"),
    pytest.param(bc_case(back_pain(), pt=patient(age_years=16)), None, id="age-16-out-of-scope"),
    pytest.param(bc_case(back_pain(), pt=patient(age_years=18)), "warning", id="age-18-in-scope"),
    # §1.1 exclusion list / §3.3-3.5: never personal history
    pytest.param(
        case(finding(icd10cm("Z80.3", "Family history of malignant neoplasm of breast")), back_pain()),
        None,
        id="family-history-z80-3-only",
    ),
    pytest.param(
        case(finding(snomed("429740004", "Family history of malignant neoplasm of breast")), back_pain()),
        None,
        id="family-history-snomed-only",
    ),
    pytest.param(
        case(finding(snomed("412734009", "BRCA1 gene mutation detected")), back_pain()),
        None,
        id="brca1-carrier-only",
    ),
    pytest.param(
        case(finding(icd10cm("Z15.01", "Genetic susceptibility to malignant neoplasm of breast")), back_pain()),
        None,
        id="genetic-susceptibility-z15-01",
    ),
    pytest.param(
        case(finding(snomed("718220008", "Hereditary breast and ovarian cancer syndrome")), back_pain()),
        None,
        id="hboc-syndrome-only",
    ),
    pytest.param(
        case(breast_cancer(icd10cm("C79.81", "Secondary malignant neoplasm of breast")), back_pain()),
        None,
        id="metastasis-to-breast-c79-81",
    ),
    pytest.param(
        case(breast_cancer(snomed("145501000119108", "Metastatic malignant neoplasm to breast")), back_pain()),
        None,
        id="metastasis-to-breast-snomed",
    ),
    pytest.param(
        case(breast_cancer(icd10cm("C43.52", "Malignant melanoma of skin of breast")), back_pain()),
        None,
        id="melanoma-skin-of-breast",
    ),
    pytest.param(
        case(breast_cancer(icd10cm("C44.501", "Unspecified malignant neoplasm of skin of breast")), back_pain()),
        None,
        id="skin-of-breast-c44-501",
    ),
    # §1.1 / §3.2 carcinoma in situ: default config gives no card
    pytest.param(
        case(breast_cancer(icd10cm("D05.11", "Intraductal carcinoma in situ of right breast")), back_pain()),
        None,
        id="dcis-only-default-no-card",
    ),
    pytest.param(
        case(
            breast_cancer(icd10cm("D05.11", "Intraductal carcinoma in situ of right breast"), onset_days_ago=6 * 365),
            breast_cancer(icd10cm("C50.912", "Malignant neoplasm of unspecified site of left female breast")),
            back_pain(),
        ),
        "warning",
        id="dcis-then-invasive-c50",
    ),
    # §1.1 H1: history codes and every clinicalStatus count; verification refuted / entered-in-error never
    pytest.param(
        case(breast_cancer(icd10cm("Z85.3", "Personal history of malignant neoplasm of breast")), back_pain()),
        "warning",
        id="personal-history-z85-3",
    ),
    pytest.param(case(breast_cancer(clinical_status="remission"), back_pain()), "warning", id="bc-in-remission"),
    pytest.param(
        case(breast_cancer(clinical_status="resolved", abatement_days_ago=700), back_pain()),
        "warning",
        id="bc-resolved-still-counts-as-history",
    ),
    pytest.param(case(breast_cancer(category="health-concern"), back_pain()), "warning", id="bc-health-concern"),
    pytest.param(case(breast_cancer(verification_status=None), back_pain()), "warning", id="bc-verification-absent"),
    pytest.param(case(breast_cancer(verification_status="provisional"), back_pain()), "warning", id="bc-provisional"),
    pytest.param(case(breast_cancer(verification_status="refuted"), back_pain()), None, id="bc-refuted"),
    pytest.param(
        # con-5: no clinicalStatus when entered-in-error
        case(breast_cancer(verification_status="entered-in-error", clinical_status=None), back_pain()),
        None,
        id="bc-entered-in-error",
    ),
    # §3.1 male breast cancer; never gate on gender
    pytest.param(
        case(
            breast_cancer(snomed("372095001", "Malignant neoplasm of male breast")),
            back_pain(),
            pt=patient(gender="male"),
        ),
        "warning",
        id="male-breast-cancer-snomed",
    ),
    pytest.param(
        case(
            breast_cancer(icd10cm("C50.921", "Malignant neoplasm of unspecified site of right male breast")),
            back_pain(),
            pt=patient(gender="male"),
        ),
        "warning",
        id="male-breast-cancer-c50-921",
    ),
    pytest.param(bc_case(back_pain(), pt=patient(gender="male")), "warning", id="female-breast-code-on-male-patient"),
    # §1.1 H3: medication inference
    pytest.param(
        case(back_pain(), medicationStatements=[medication_statement(FULVESTRANT)]),
        "warning",
        id="tier-a-fulvestrant-statement-infers-history",
    ),
    pytest.param(
        case(
            back_pain(),
            medicationRequests=[medication_request(PALBOCICLIB, status="completed", authored_days_ago=400)],
        ),
        "warning",
        id="tier-a-palbociclib-past-request-infers-history",
    ),
    pytest.param(
        case(back_pain(), medicationRequests=[medication_request(VERZENIO_100_SBD)]),
        "warning",
        id="tier-a-verzenio-sbd-code-infers-history",
    ),
    pytest.param(
        case(back_pain(), medicationRequests=[medication_request(LETROZOLE)]),
        AT_MOST_INFO,
        id="tier-b-letrozole-alone-at-most-info",
    ),
    pytest.param(
        case(
            finding(icd10cm("Z80.3", "Family history of malignant neoplasm of breast")),
            back_pain(),
            medicationStatements=[medication_statement(TAMOXIFEN)],
        ),
        AT_MOST_INFO,
        id="tier-b-tamoxifen-risk-reduction-with-family-history",
    ),
    pytest.param(
        case(back_pain(), medicationRequests=[medication_request(DOCETAXEL)]),
        None,
        id="tier-c-docetaxel-alone-never-infers",
    ),
    pytest.param(
        case(back_pain(), medicationStatements=[medication_statement(FULVESTRANT, status="not-taken")]),
        None,
        id="fulvestrant-statement-not-taken",
    ),
    pytest.param(
        case(back_pain(), medicationRequests=[medication_request(FULVESTRANT, status="cancelled")]),
        None,
        id="fulvestrant-request-cancelled",
    ),
    # §3.18 a drug cause of the pain must not suppress the work-up
    pytest.param(
        bc_case(back_pain(), medicationRequests=[medication_request(ANASTROZOLE_SCD)]),
        "warning",
        id="bc-on-aromatase-inhibitor-still-alerts",
    ),
    # §1.3 modifiers and §1.5.4 end of life
    pytest.param(
        bc_case(
            finding(icd10cm("C79.51", "Secondary malignant neoplasm of bone"), onset_days_ago=200),
            back_pain(*THORACIC_PAIN),
        ),
        "warning",
        id="known-bone-metastases-new-thoracic-pain",
    ),
    pytest.param(
        bc_case(
            finding(icd10cm("C79.51", "Secondary malignant neoplasm of bone"), onset_days_ago=200),
            back_pain(*THORACIC_PAIN),
            finding(DIFFICULTY_WALKING),
        ),
        "critical",
        id="known-bone-metastases-plus-neuro-feature",
    ),
    pytest.param(
        bc_case(back_pain(), finding(icd10cm("Z51.5", "Encounter for palliative care"))),
        "warning",
        id="palliative-z51-5-keeps-card",
    ),
    pytest.param(
        bc_case(
            back_pain(),
            procedures=[
                procedure(
                    snomed("385763009", "Hospice care (regime/therapy)"),
                    status="in-progress",
                    performed_days_ago=30,
                )
            ],
        ),
        "warning",
        id="hospice-care-procedure-keeps-card",
    ),
    pytest.param(
        bc_case(back_pain(), finding(icd10cm("Z66", "Do not resuscitate"), onset_days_ago=90)),
        "warning",
        id="dnr-z66-no-change",
    ),
    # §3.11 text-only pain with negation
    pytest.param(bc_case(text_condition("back pain")), "warning", id="text-only-back-pain"),
    pytest.param(bc_case(text_condition("no back pain")), None, id="text-no-back-pain"),
    pytest.param(bc_case(text_condition("Patient denies back pain")), None, id="text-denies-back-pain"),
    pytest.param(bc_case(text_condition("back pain resolved")), None, id="text-back-pain-resolved"),
    pytest.param(bc_case(text_condition("pain at the back of head")), None, id="text-back-of-head-is-not-spinal"),
    # §3.12 observation shapes
    pytest.param(bc_case(observations=[symptom_observation()]), "warning", id="observation-symptom-75325-1-backache"),
    pytest.param(
        bc_case(observations=[observation(concept(BACKACHE), valueCodeableConcept=concept(PRESENT))]),
        "warning",
        id="observation-backache-present-qualifier",
    ),
    pytest.param(
        bc_case(observations=[observation(concept(BACKACHE), valueCodeableConcept=concept(ABSENT))]),
        None,
        id="observation-backache-absent-qualifier",
    ),
    pytest.param(
        bc_case(observations=[observation(concept(BACKACHE), valueBoolean=False)]),
        None,
        id="observation-backache-value-boolean-false",
    ),
    pytest.param(
        bc_case(observations=[symptom_observation(status="entered-in-error")]),
        None,
        id="observation-symptom-entered-in-error",
    ),
    pytest.param(
        bc_case(observations=[observation(concept(PAIN_PRIMARY_LOCATION), valueCodeableConcept=concept(SPINE_SITE))]),
        "warning",
        id="pain-location-observation-spine",
    ),
    # §3.23 code-system pitfalls
    pytest.param(case(breast_cancer(icd10cm("C50911")), back_pain()), "warning", id="icd-undotted-c50911"),
    pytest.param(
        case(breast_cancer(coding(ICD10_WHO, "C50.911")), back_pain()),
        "warning",
        id="icd-10-cm-code-under-who-uri",
    ),
    pytest.param(
        case(breast_cancer(snomed(254837009, "Malignant neoplasm of breast (disorder)")), back_pain()),
        "warning",
        id="snomed-code-as-json-integer",
    ),
    pytest.param(bc_case(back_pain(icd10cm("M54.5", "Low back pain"))), "warning", id="legacy-m54-5-header"),
    pytest.param(bc_case(back_pain(icd10cm("M546"))), "warning", id="icd-undotted-thoracic-pain-m546"),
    pytest.param(
        case(breast_cancer(icd10cm("C50.A1", "Malignant inflammatory neoplasm of right breast")), back_pain()),
        "warning",
        id="c50-a1-inflammatory-fy2025",
    ),
    # §1.2 / §3.8-3.10 dates
    pytest.param(
        bc_case(back_pain(onset_days_ago=None, recorded_days_ago=None, onsetDateTime=_year_month_last_month())),
        "warning",
        id="partial-onset-year-month-last-month",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=None, recorded_days_ago=3, onsetDateTime=str(days_ago(0).year - 2))),
        None,
        id="partial-onset-year-two-years-ago-recorded-recently",
    ),
    pytest.param(
        bc_case(
            back_pain(
                onset_days_ago=None,
                recorded_days_ago=None,
                onsetDateTime=days_ago(9).strftime("%Y-%m-%dT%H:%M:%S"),
            )
        ),
        "warning",
        id="onset-datetime-without-timezone",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=None, recorded_days_ago=None, onsetDateTime=days_ago(9).date().isoformat())),
        "warning",
        id="onset-date-only",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=None, recorded_days_ago=None, onsetPeriod={"start": iso_datetime(12)})),
        "warning",
        id="onset-period-start",
    ),
    pytest.param(
        bc_case(
            back_pain(
                onset_days_ago=None,
                recorded_days_ago=None,
                onsetAge={"value": 60, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
            ),
            pt=patient(birth_date=years_before_today(60, extra_days=10).isoformat()),
        ),
        "warning",
        id="onset-age-reached-ten-days-ago",
    ),
    pytest.param(
        bc_case(
            back_pain(
                onset_days_ago=None,
                recorded_days_ago=0,
                onsetAge={"value": 50, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
            ),
            pt=patient(age_years=62),
        ),
        None,
        id="onset-age-twelve-years-ago-recorded-today",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=None, recorded_days_ago=5)),
        "warning",
        id="missing-onset-recent-recorded-date",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=None, recorded_days_ago=400)),
        None,
        id="missing-onset-old-recorded-date",
    ),
    pytest.param(bc_case(back_pain(onset_days_ago=None, recorded_days_ago=None)), None, id="no-dates-never-new"),
    # "Future-dated onset → ignore or flag": it must not raise the tier
    pytest.param(bc_case(back_pain(onset_days_ago=-30, recorded_days_ago=None)), AT_MOST_INFO, id="future-onset-only"),
    # §3.8 onset after recordedDate is a data error; use the earlier date
    pytest.param(
        bc_case(back_pain(onset_days_ago=-5, recorded_days_ago=3)),
        "warning",
        id="future-onset-recent-recorded-date",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=None, recorded_days_ago=0, onsetDateTime="2019-03-14")),
        None,
        id="onset-2019-recorded-today",
    ),
    # §1.2.5-6 / §3.6-3.7 / §3.15-3.16 chronicity, resolution, duplicates
    pytest.param(
        bc_case(back_pain(*CHRONIC_LOW_BACK_PAIN, onset_days_ago=5 * 365)),
        None,
        id="chronic-pain-predating-cancer",
    ),
    pytest.param(
        bc_case(back_pain(*CHRONIC_LOW_BACK_PAIN, onset_days_ago=5 * 365), back_pain(*THORACIC_PAIN)),
        "warning",
        id="chronic-low-back-pain-plus-new-thoracic-region",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=120), back_pain(onset_days_ago=10)),
        None,
        id="repeated-encounter-diagnoses-over-months-not-new",
    ),
    pytest.param(
        bc_case(back_pain(category="problem-list-item"), back_pain(category="encounter-diagnosis")),
        "warning",
        id="same-pain-problem-list-and-encounter-diagnosis",
    ),
    pytest.param(
        case(
            breast_cancer(icd10cm("C50.911", "Malignant neoplasm of unspecified site of right female breast")),
            breast_cancer(snomed("254837009", "Malignant neoplasm of breast (disorder)")),
            breast_cancer(icd10cm("Z85.3", "Personal history of malignant neoplasm of breast"), onset_days_ago=100),
            back_pain(),
        ),
        "warning",
        id="same-cancer-three-codes",
    ),
    pytest.param(
        bc_case(
            back_pain(),
            back_pain(category="problem-list-item"),
            finding(DIFFICULTY_WALKING),
            finding(CORD_COMPRESSION),
        ),
        "critical",
        id="duplicated-pain-neuro-and-cord-compression",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=20, clinical_status="resolved", abatement_days_ago=5)),
        None,
        id="resolved-pain",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=20, clinical_status="active", abatement_days_ago=5)),
        None,
        id="active-with-past-abatement-treated-as-resolved",
    ),
    pytest.param(
        bc_case(back_pain(onset_days_ago=3 * 365, clinical_status="resolved", abatement_days_ago=900), back_pain()),
        "warning",
        id="old-resolved-episode-then-new-pain",
    ),
    # §1.5.1 / §3.21 imaging
    pytest.param(
        bc_case(back_pain(), diagnosticReports=[diagnostic_report(MRI_WHOLE_SPINE_LOINC, effective_days_ago=3)]),
        None,
        id="whole-spine-mri-report-after-onset-suppresses",
    ),
    pytest.param(
        bc_case(back_pain(), serviceRequests=[service_request(MRI_WHOLE_SPINE_SNOMED)]),
        None,
        id="whole-spine-mri-ordered-after-onset-suppresses-warning",
    ),
    pytest.param(
        bc_case(back_pain(), procedures=[procedure(MRI_WHOLE_SPINE_SNOMED, performed_days_ago=2)]),
        None,
        id="whole-spine-mri-procedure-completed-suppresses",
    ),
    pytest.param(
        bc_case(back_pain(), imagingStudies=[imaging_study(MRI_WHOLE_SPINE_LOINC, started_days_ago=2)]),
        None,
        id="whole-spine-imaging-study-available-suppresses",
    ),
    pytest.param(
        bc_case(back_pain(), procedures=[procedure(CT_WHOLE_SPINE_SNOMED, performed_days_ago=2)]),
        None,
        id="whole-spine-ct-done-suppresses-warning",
    ),
    pytest.param(
        bc_case(back_pain(), procedures=[procedure(MRI_THORACIC_LUMBAR_SNOMED, performed_days_ago=2)]),
        None,
        id="thoracic-plus-lumbar-mri-suppresses-warning",
    ),
    pytest.param(
        bc_case(back_pain(), procedures=[procedure(MRI_LUMBAR_SNOMED, performed_days_ago=2)]),
        "warning",
        id="lumbar-only-mri-still-warning",
    ),
    pytest.param(
        bc_case(back_pain(), diagnosticReports=[diagnostic_report(MRI_WHOLE_SPINE_LOINC, effective_days_ago=730)]),
        "warning",
        id="whole-spine-mri-two-years-before-onset",
    ),
    pytest.param(
        bc_case(back_pain(), diagnosticReports=[diagnostic_report(BONE_SCAN_LOINC, effective_days_ago=2)]),
        "warning",
        id="bone-scan-after-onset-does-not-suppress",
    ),
    pytest.param(
        bc_case(back_pain(), diagnosticReports=[diagnostic_report(PET_WHOLE_BODY_LOINC, effective_days_ago=2)]),
        "warning",
        id="pet-after-onset-does-not-suppress",
    ),
    pytest.param(
        bc_case(back_pain(), procedures=[procedure(XRAY_WHOLE_SPINE_SNOMED, performed_days_ago=2)]),
        "warning",
        id="xray-after-onset-does-not-suppress",
    ),
    pytest.param(
        bc_case(back_pain(), serviceRequests=[service_request(MRI_WHOLE_SPINE_SNOMED, status="revoked")]),
        "warning",
        id="revoked-mri-order-does-not-suppress",
    ),
    pytest.param(
        bc_case(back_pain(), serviceRequests=[service_request(MRI_WHOLE_SPINE_SNOMED, status="draft")]),
        "warning",
        id="draft-mri-order-does-not-suppress",
    ),
    pytest.param(
        bc_case(
            back_pain(),
            finding(DIFFICULTY_WALKING),
            serviceRequests=[service_request(MRI_WHOLE_SPINE_SNOMED)],
        ),
        "critical",
        id="critical-with-mri-only-ordered-stays-critical",
    ),
    pytest.param(
        bc_case(
            back_pain(),
            finding(DIFFICULTY_WALKING, onset_days_ago=3),
            diagnosticReports=[diagnostic_report(MRI_WHOLE_SPINE_LOINC, effective_days_ago=1)],
        ),
        None,
        id="critical-with-mri-completed-after-neuro-feature-suppressed",
    ),
    # boundaries of the default windows (42-day recency, 180-day washout: §1.2.2-3)
    pytest.param(bc_case(back_pain(onset_days_ago=40)), "warning", id="onset-40-days-ago-inside-window"),
    pytest.param(bc_case(back_pain(onset_days_ago=44)), None, id="onset-44-days-ago-outside-window"),
    pytest.param(
        bc_case(
            back_pain(onset_days_ago=230, clinical_status="resolved", abatement_days_ago=200),
            back_pain(),
        ),
        "warning",
        id="prior-episode-ended-190-days-before-onset-washout-clear",
    ),
    pytest.param(bc_case(back_pain(), pt=patient(age_years=17)), None, id="age-17-out-of-scope"),
    pytest.param(
        bc_case(finding(CORD_COMPRESSION), pt=patient(deceased=True)), None, id="deceased-with-cord-compression"
    ),
    pytest.param(
        bc_case(back_pain(), finding(DIFFICULTY_WALKING, verification_status="refuted")),
        "warning",
        id="refuted-neuro-feature-stays-warning",
    ),
    pytest.param(
        bc_case(finding(CORD_COMPRESSION, verification_status="entered-in-error", clinical_status=None)),
        None,
        id="cord-compression-entered-in-error",
    ),
    pytest.param(
        bc_case(
            back_pain(),
            finding(DIFFICULTY_WALKING, onset_days_ago=3),
            diagnosticReports=[diagnostic_report(MRI_WHOLE_SPINE_LOINC, effective_days_ago=5)],
        ),
        "critical",
        id="critical-with-mri-done-before-neuro-feature-stays-critical",
    ),
    pytest.param(
        bc_case(
            back_pain(),
            diagnosticReports=[diagnostic_report(MRI_WHOLE_SPINE_LOINC, status="cancelled", effective_days_ago=2)],
        ),
        "warning",
        id="cancelled-mri-report-does-not-suppress",
    ),
    pytest.param(
        bc_case(back_pain(), serviceRequests=[service_request(MRI_WHOLE_SPINE_SNOMED, authored_days_ago=30)]),
        "warning",
        id="mri-ordered-before-onset-does-not-suppress",
    ),
    pytest.param(
        bc_case(
            observations=[
                observation(
                    concept(coding("http://loinc.org", "72514-3")),
                    valueQuantity={
                        "value": 8,
                        "unit": "{score}",
                        "system": "http://unitsofmeasure.org",
                        "code": "{score}",
                    },
                )
            ]
        ),
        None,
        id="pain-score-without-site-is-not-spinal-pain",
    ),
    # robustness
    pytest.param(_malformed_big_prefetch(), "warning", id="malformed-condition-in-big-prefetch-does-not-silence"),
    pytest.param(_malformed_observation(), "warning", id="malformed-observation-does-not-silence"),
    pytest.param(
        case(breast_cancer(patient_id=OTHER_PATIENT_ID), back_pain()),
        None,
        id="cancer-belongs-to-another-patient",
    ),
    pytest.param(bc_case(back_pain(patient_id=OTHER_PATIENT_ID)), None, id="pain-belongs-to-another-patient"),
    pytest.param(hook_request(patient(), **{key: None for key in PREFETCH_KEYS[1:]}), None, id="all-searches-null"),
    pytest.param(hook_request(patient()), None, id="all-searches-empty-bundles"),
]


@pytest.mark.parametrize(("request_body", "expected"), SCENARIOS)
def test_scenario_highest_indicator(service_client: Any, request_body: JSON, expected: Expected) -> None:
    body = call_service(service_client, request_body)
    got = highest_indicator(body)
    acceptable = expected if isinstance(expected, tuple) else (expected,)
    summaries = [(card["indicator"], card["summary"]) for card in body["cards"]]
    assert got in acceptable, f"expected {expected!r}, got {got!r}: {summaries}"
    # §3.15: never two alert cards (warning + critical, or two of one tier); the highest tier wins
    alert_cards = [card for card in body["cards"] if card["indicator"] in ("warning", "critical")]
    assert len(alert_cards) <= 1, f"more than one alert card: {summaries}"


# --- content of key cards --------------------------------------------------------------------------------
def _whole_spine_order(card: JSON) -> JSON:
    orders = ordered_service_requests(card)
    whole_spine = [order for order in orders if codes_of(order) & WHOLE_SPINE_ORDER_CODES]
    assert whole_spine, f"no whole-spine MRI ServiceRequest suggested; ordered codes: {[codes_of(o) for o in orders]}"
    return whole_spine[0]


def test_critical_card_content(service_client: Any) -> None:
    body = call_service(service_client, bc_case(back_pain(), finding(DIFFICULTY_WALKING)))
    card = top_card(body)
    assert card["indicator"] == "critical"
    detail = card.get("detail", "")
    assert re.search(r"dexamethasone", detail, re.I), detail
    assert re.search(r"\b16\s*mg\b", detail, re.I), detail
    assert re.search(r"\b24\s*(h\b|hours?\b)", detail, re.I), detail
    order = _whole_spine_order(card)
    assert order["priority"] == "stat"


def test_critical_cord_compression_without_pain_orders_whole_spine_stat(service_client: Any) -> None:
    body = call_service(service_client, bc_case(finding(CORD_COMPRESSION)))
    card = top_card(body)
    assert card["indicator"] == "critical"
    assert _whole_spine_order(card)["priority"] == "stat"


def test_warning_card_content(service_client: Any) -> None:
    body = call_service(service_client, bc_case(back_pain()))
    card = top_card(body)
    assert card["indicator"] == "warning"
    assert re.search(r"\b(1|one)\s*week\b|\b7\s*days\b", card_text(card), re.I), card_text(card)
    assert re.search(r"whole[\s-]spine", card_text(card), re.I), card_text(card)
    assert _whole_spine_order(card)["priority"] == "urgent"


def test_inferred_history_is_said_on_the_card(service_client: Any) -> None:
    body = call_service(service_client, case(back_pain(), medicationStatements=[medication_statement(FULVESTRANT)]))
    card = top_card(body)
    assert card["indicator"] == "warning"
    assert re.search(r"infer", card_text(card), re.I), "§1.1 H3: the card must say the history was inferred"


def test_aromatase_inhibitor_named_as_differential(service_client: Any) -> None:
    body = call_service(service_client, bc_case(back_pain(), medicationRequests=[medication_request(ANASTROZOLE_SCD)]))
    card = top_card(body)
    assert card["indicator"] == "warning"
    assert re.search(r"differential|anastrozole", card.get("detail", ""), re.I), card.get("detail")


def test_known_bone_metastases_wording(service_client: Any) -> None:
    bone_mets = finding(icd10cm("C79.51", "Secondary malignant neoplasm of bone"), onset_days_ago=200)
    body = call_service(service_client, bc_case(bone_mets, back_pain(*THORACIC_PAIN)))
    card = top_card(body)
    assert card["indicator"] == "warning"
    assert re.search(r"known\b[^.\n]{0,40}metasta|bone metasta", card_text(card), re.I), card_text(card)


def test_palliative_care_adds_goals_of_care_wording(service_client: Any) -> None:
    body = call_service(
        service_client, bc_case(back_pain(), finding(icd10cm("Z51.5", "Encounter for palliative care")))
    )
    card = top_card(body)
    assert card["indicator"] == "warning"
    assert re.search(r"goals[\s-]of[\s-]care", card_text(card), re.I), card_text(card)


def test_missing_onset_card_names_the_recorded_date(service_client: Any) -> None:
    """§1.2.1: when onset is missing the recordedDate is used, and the card says so."""
    body = call_service(service_client, bc_case(back_pain(onset_days_ago=None, recorded_days_ago=5)))
    card = top_card(body)
    assert card["indicator"] == "warning"
    assert re.search(r"recorded", card.get("detail", ""), re.I), card.get("detail")


def test_lumbar_only_mri_modifies_the_warning(service_client: Any) -> None:
    """§1.5.1 / §3.21: a lumbar-only study modifies the card ("consider imaging the rest of the spine")."""
    lumbar = procedure(MRI_LUMBAR_SNOMED, performed_days_ago=2)
    body = call_service(service_client, bc_case(back_pain(), procedures=[lumbar]))
    card = top_card(body)
    assert card["indicator"] == "warning"
    pattern = r"rest of the spine|thoracic\s*(/|and|or)\s*cervical|not (been )?imaged|does not cover"
    assert re.search(pattern, card.get("detail", ""), re.I), card.get("detail")


def test_critical_with_mri_ordered_says_ensure_within_24_hours(service_client: Any) -> None:
    """§1.5.1: critical tier with an MRI only ordered keeps the card and changes the text."""
    request_body = bc_case(
        back_pain(), finding(DIFFICULTY_WALKING), serviceRequests=[service_request(MRI_WHOLE_SPINE_SNOMED)]
    )
    card = top_card(call_service(service_client, request_body))
    assert card["indicator"] == "critical"
    assert re.search(r"ordered", card_text(card), re.I), card_text(card)
    assert re.search(r"\b24\s*(h\b|hours?\b)", card_text(card), re.I), card_text(card)


def test_duplicate_pain_gives_exactly_one_card(service_client: Any) -> None:
    request_body = bc_case(back_pain(category="problem-list-item"), back_pain(category="encounter-diagnosis"))
    body = call_service(service_client, request_body)
    assert [card["indicator"] for card in body["cards"]] == ["warning"]


# --- the validator must catch what it claims to catch ----------------------------------------------------
def _good_card() -> JSON:
    return {
        "uuid": "card-1",
        "summary": "Suspected spinal metastases",
        "indicator": "warning",
        "source": {"label": "mscc-alert"},
        "selectionBehavior": "at-most-one",
        "suggestions": [
            {
                "label": "Order MRI whole spine",
                "uuid": "suggestion-1",
                "actions": [
                    {
                        "type": "create",
                        "description": "MRI whole spine within 1 week",
                        "resource": {
                            "resourceType": "ServiceRequest",
                            "status": "draft",
                            "intent": "proposal",
                            "priority": "urgent",
                            "subject": {"reference": "Patient/p"},
                            "code": {"coding": [{"system": "http://loinc.org", "code": "42698-1"}]},
                        },
                    }
                ],
            }
        ],
        "overrideReasons": [{"code": "already-imaged", "system": "https://example.org/reasons", "display": "Imaged"}],
        "links": [{"label": "NICE NG234", "url": "https://www.nice.org.uk/guidance/ng234", "type": "absolute"}],
    }


def _break(path: tuple[Any, ...], value: Any) -> JSON:
    card = _good_card()
    target: Any = card
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return {"cards": [card]}


_DELETE = object()
_ACTION = ("suggestions", 0, "actions", 0)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("uuid",), _DELETE, id="no-uuid"),
        pytest.param(("summary",), "x" * 140, id="summary-140-chars"),
        pytest.param(("indicator",), "hard-stop", id="bad-indicator"),
        pytest.param(("source",), {"url": "https://example.org"}, id="source-without-label"),
        pytest.param(("selectionBehavior",), _DELETE, id="suggestions-without-selection-behavior"),
        pytest.param(("suggestions", 0, "uuid"), _DELETE, id="suggestion-without-uuid"),
        pytest.param((*_ACTION, "description"), _DELETE, id="action-without-description"),
        pytest.param((*_ACTION, "resource"), '{"resourceType": "ServiceRequest"}', id="resource-as-string"),
        pytest.param((*_ACTION, "resource", "priority"), "routine", id="warning-not-urgent"),
        pytest.param(("overrideReasons", 0, "display"), _DELETE, id="override-reason-without-display"),
        pytest.param(("links", 0, "url"), "/relative", id="relative-link"),
        pytest.param(("detail",), "", id="empty-string"),
        pytest.param(("links",), [], id="empty-array"),
    ],
)
def test_validator_rejects_broken_cards(path: tuple[Any, ...], value: Any) -> None:
    assert_valid_cds_response({"cards": [_good_card()]}, patient_id="p", ours=False)
    with pytest.raises(AssertionError):
        assert_valid_cds_response(_break(path, value), patient_id="p", ours=False)


def _our_good_card() -> JSON:
    card = _good_card()
    card["detail"] = "**Why:** Breast cancer (2019) · low back pain since 12 Nov (9 days)"
    card["source"]["label"] = "mscc-alert 0.1.0 · rules 3f2a9c1d"
    card["extension"] = {RULES_VERSION_KEY: "0.1.0+3f2a9c1d", EVIDENCE_KEY: ["Condition/c-1"]}
    return card


_LINK = {"label": "NICE", "url": "https://www.nice.org.uk/guidance/qs56", "type": "absolute"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("detail", "x" * 701, id="warning-detail-701-chars"),
        pytest.param("detail", "Low back pain · Condition/condition-2-p2", id="reference-in-detail"),
        pytest.param("summary", "See Observation/obs.1", id="reference-in-summary"),
        pytest.param("links", [_LINK] * 4, id="four-links"),
        pytest.param("links", [_LINK | {"url": "http://www.nice.org.uk/guidance/qs56"}], id="http-link"),
        pytest.param("detail", "See [QS56](https://www.nice.org.uk/guidance/qs56)", id="link-repeated-in-detail"),
        pytest.param("extension", {EVIDENCE_KEY: ["Condition/c-1"]}, id="no-rules-version"),
        pytest.param("extension", {RULES_VERSION_KEY: "0.1.0+3f2a9c1d", EVIDENCE_KEY: ["c-1"]}, id="bad-evidence"),
    ],
)
def test_card_rules_reject_long_or_referencing_cards(key: str, value: Any) -> None:
    assert_valid_cds_response({"cards": [_our_good_card()]}, patient_id="p")
    card = _our_good_card()
    card[key] = value
    with pytest.raises(AssertionError):
        assert_valid_cds_response({"cards": [card]}, patient_id="p")


def test_critical_detail_may_be_longer_than_a_warning() -> None:
    card = _our_good_card() | {"indicator": "critical", "detail": "x" * 900}
    assert_card_reads_at_a_glance(card)
    with pytest.raises(AssertionError):
        assert_card_reads_at_a_glance(card | {"detail": "x" * 901})
