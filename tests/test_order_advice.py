"""Order-time advice (cards/order_advice.py, fhir_mapping/draft_orders.py): the drafted spine scan judged against
the patient-view decision, table-driven over patients with and without the picture and the drafts an EHR sends.
No server: the pipeline from FHIR JSON to cards, as the order services run it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cards.content import MRI_WHOLE_SPINE_CODING, PAMA_RATING_EXTENSION
from cards.decision import Decision
from cards.evaluate import evaluate_documents
from cards.order_advice import order_cards
from cards.policy import Policy
from cards.render import CardContext
from fhir_mapping.draft_orders import DraftOrders, DraftOrdersError, check_selections
from fhir_mapping.draft_orders import read_draft_orders as read_drafts
from fhir_mapping.terminology import load_terminology
from tests.scenarios import fhir_builders as fb
from tests.scenarios.test_clinical_scenarios import assert_card_reads_at_a_glance, assert_valid_cds_response

JSON = dict[str, Any]
TERMINOLOGY = load_terminology()


def read_draft_orders(value: Any, patient_id: str, terminology: Any) -> DraftOrders:
    return read_drafts(value, patient_id, terminology, max_orders=MAX_ORDERS)


MAX_ORDERS = 200
USER = "Practitioner/scenario-clinician"


# --- patients ------------------------------------------------------------------------------------------------
def _warning() -> JSON:
    return {"patient": fb.patient(), "conditions": [fb.breast_cancer(), fb.back_pain(onset_days_ago=9)]}


def _critical() -> JSON:
    return {"patient": fb.patient(), "conditions": [fb.breast_cancer(), fb.back_pain(onset_days_ago=9),
                                                    fb.finding(fb.DIFFICULTY_WALKING, onset_days_ago=2)]}


def _no_history() -> JSON:
    return {"patient": fb.patient(), "conditions": [fb.back_pain(onset_days_ago=9)]}


def _no_new_pain() -> JSON:
    return {"patient": fb.patient(), "conditions": [fb.breast_cancer()]}


def _deceased() -> JSON:
    return {**_warning(), "patient": fb.patient(deceased=True)}


def _under_18() -> JSON:
    return {**_warning(), "patient": fb.patient(age_years=16)}


def _mri_done() -> JSON:
    """A whole-spine MRI completed after the pain began: patient-view says nothing, and so do the orders."""
    return {**_warning(), "procedures": [fb.procedure(fb.MRI_WHOLE_SPINE_SNOMED, performed_days_ago=2)]}


PATIENTS: dict[str, tuple[Callable[[], JSON], str | None]] = {
    "warning": (_warning, "warning"),
    "critical": (_critical, "critical"),
    "no breast-cancer history": (_no_history, None),
    "no new pain": (_no_new_pain, None),
    "deceased": (_deceased, None),
    "under 18": (_under_18, None),
    "whole-spine MRI already done": (_mri_done, None),
}


# --- drafts ----------------------------------------------------------------------------------------------------
def _regional_mris(priority: str | None) -> list[JSON]:
    return [fb.draft_order(code, priority=priority)
            for code in (fb.MRI_CERVICAL_CPT, fb.MRI_THORACIC_CPT, fb.MRI_LUMBAR_CPT)]


# name -> (drafts, what each tier expects: "replace" | "priority" | None)
DRAFTS: dict[str, tuple[Callable[[], list[JSON]], dict[str, str | None]]] = {
    "lumbar X-ray (CPT 72100)": (lambda: [fb.draft_order(fb.XRAY_LUMBAR_CPT)],
                                 {"warning": "replace", "critical": "replace"}),
    "lumbar X-ray (SNOMED 840361000)": (
        lambda: [fb.draft_order(fb.snomed("840361000", "Plain X-ray of lumbar vertebral column region"))],
        {"warning": "replace", "critical": "replace"}),
    "thoracic CT (CPT 72128)": (lambda: [fb.draft_order(fb.CT_THORACIC_CPT, priority="stat")],
                                {"warning": "replace", "critical": "replace"}),
    "lumbar MRI (CPT 72148)": (lambda: [fb.draft_order(fb.MRI_LUMBAR_CPT, priority="stat")],
                               {"warning": "replace", "critical": "replace"}),
    "bone scan (CPT 78306)": (lambda: [fb.draft_order(fb.BONE_SCAN_CPT)],
                              {"warning": "replace", "critical": "replace"}),
    "PET-CT (CPT 78816)": (lambda: [fb.draft_order(fb.PET_CT_WHOLE_BODY_CPT)],
                           {"warning": "replace", "critical": "replace"}),
    # No priority yet is left alone (the sandbox drops the priority of a draft it has just updated).
    "whole-spine MRI (LOINC 30854-4), no priority": (
        lambda: [fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC)], {"warning": None, "critical": None}),
    "whole-spine MRI, routine": (lambda: [fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC, priority="routine")],
                                 {"warning": "priority", "critical": "priority"}),
    "whole-spine MRI, urgent": (lambda: [fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC, priority="urgent")],
                                {"warning": None, "critical": "priority"}),
    "whole-spine MRI, asap": (lambda: [fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC, priority="asap")],
                              {"warning": None, "critical": None}),
    "whole-spine MRI, stat": (lambda: [fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC, priority="stat")],
                              {"warning": None, "critical": None}),
    "whole-spine CT (SNOMED 429875006), stat": (lambda: [fb.draft_order(fb.CT_WHOLE_SPINE_SNOMED, priority="stat")],
                                                {"warning": None, "critical": None}),
    "cervical + thoracic + lumbar MRI drafted together, stat": (lambda: _regional_mris("stat"),
                                                               {"warning": None, "critical": None}),
    "cervical + thoracic + lumbar MRI drafted together, routine": (lambda: _regional_mris("routine"),
                                                                  {"warning": "priority", "critical": "priority"}),
    "thoracic + lumbar MRI only": (
        lambda: [fb.draft_order(fb.MRI_THORACIC_CPT, priority="stat"),
                 fb.draft_order(fb.MRI_LUMBAR_CPT, priority="stat")],
        {"warning": "replace", "critical": "replace"}),
    "bone scan beside a stat whole-spine MRI": (
        lambda: [fb.draft_order(fb.BONE_SCAN_CPT), fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC, priority="stat")],
        {"warning": None, "critical": None}),
    "lab order (LOINC 2000-8)": (lambda: [fb.draft_order(fb.CALCIUM_LAB_LOINC)], {"warning": None, "critical": None}),
    "MedicationRequest": (lambda: [fb.draft_medication(fb.FULVESTRANT)], {"warning": None, "critical": None}),
}


# --- the pipeline ----------------------------------------------------------------------------------------------
def _decision(record: JSON, now: datetime) -> Decision:
    request = fb.hook_request(record["patient"], **{k: v for k, v in record.items() if k != "patient"})
    documents = [orjson.dumps(v) for v in request["prefetch"].values() if v is not None]
    return evaluate_documents(documents, patient_id=fb.PATIENT_ID, user_id=USER, now=now, policy=Policy(),
                              terminology=TERMINOLOGY).decision


def _advise(record: JSON, drafts: list[JSON], judged: list[str] | None = None) -> tuple[list[JSON], DraftOrders]:
    """order-sign (judged None: every draft) or order-select (the references judged)."""
    now = datetime.now(UTC)
    orders = read_draft_orders(fb.draft_orders(*drafts), fb.PATIENT_ID, TERMINOLOGY)
    cards = order_cards(_decision(record, now), orders, judged, CardContext(fb.PATIENT_ID, USER, now))
    return cards, orders


def _assert_acts_on_drafts(card: JSON, drafts: list[JSON]) -> list[JSON]:
    """Every action acts on a draft of the session by its own id; updates carry valid R4 ServiceRequests."""
    by_id = {d["id"]: d for d in drafts}
    (suggestion,) = card["suggestions"]
    for action in suggestion["actions"]:
        if action["type"] == "delete":
            assert "resource" not in action
            assert action["resourceId"].removeprefix("ServiceRequest/") in by_id, action
            continue
        assert action["type"] == "update", action
        resource = action["resource"]
        assert resource["id"] in by_id, "an update must keep the draft's own id"
        validated = ServiceRequest.model_validate(resource).model_dump(mode="json", exclude_none=True)
        assert validated == resource
        # What a client following the Argonaut CDS Hooks for PAMA guidance (the sandbox) needs to apply it.
        assert PAMA_RATING_EXTENSION in resource["extension"]
        assert resource["reasonCode"] and resource["code"]["coding"][0]["display"]
    return list(suggestion["actions"])


def _unrated(resource: JSON, draft: JSON) -> JSON:
    """The update's resource without what every update adds (the rating; a reasonCode the draft lacked)."""
    added = {"extension"} | ({"reasonCode"} if "reasonCode" not in draft else set())
    return {k: v for k, v in resource.items() if k not in added}


CASES = [(p, d) for p in PATIENTS for d in DRAFTS]


@pytest.mark.parametrize(("patient_name", "draft_name"), CASES, ids=[f"{p} / {d}" for p, d in CASES])
def test_indicator_and_suggestion(patient_name: str, draft_name: str) -> None:
    build_record, tier = PATIENTS[patient_name]
    build_drafts, expected_by_tier = DRAFTS[draft_name]
    drafts = build_drafts()
    cards, _ = _advise(build_record(), drafts)
    expected = expected_by_tier[tier] if tier is not None else None
    if expected is None:
        assert cards == []
        return
    assert_valid_cds_response({"cards": cards}, patient_id=fb.PATIENT_ID)
    (card,) = cards
    assert_card_reads_at_a_glance(card)
    assert card["indicator"] == tier
    assert card["source"]["url"] == "https://www.nice.org.uk/guidance/ng234"
    assert len(card["detail"].split("\n\n")[0].rstrip(".").split(". ")) == 1, "one sentence of why"
    assert "**Why:** Breast cancer" in card["detail"]
    actions = _assert_acts_on_drafts(card, drafts)
    wanted_priority = {"warning": "urgent", "critical": "stat"}[tier]
    first = actions[0]
    assert first["type"] == "update"
    draft = next(d for d in drafts if d["id"] == first["resource"]["id"])
    if expected == "replace":
        resource = first["resource"]
        assert resource["code"]["coding"][0] == MRI_WHOLE_SPINE_CODING
        assert resource["priority"] == wanted_priority
        for kept in ("id", "status", "intent", "subject", "requester"):
            assert resource[kept] == draft[kept], kept
        assert set(resource["occurrencePeriod"]) == {"start", "end"}
        assert draft is drafts[0], "the first inadequate draft is the one replaced"
        assert [a["resourceId"] for a in actions[1:]] == [f"ServiceRequest/{d['id']}" for d in drafts[1:]]
    else:
        assert all(a["type"] == "update" for a in actions)
        for action in actions:
            original = next(d for d in drafts if d["id"] == action["resource"]["id"])
            assert _unrated(action["resource"], original) == {**original, "priority": wanted_priority}, (
                "only the priority changes")
        assert len(actions) == len(drafts)


# --- judged drafts, the session's other drafts -------------------------------------------------------------------
def test_order_select_judges_only_the_selected_drafts() -> None:
    xray, lab = fb.draft_order(fb.XRAY_LUMBAR_CPT), fb.draft_order(fb.CALCIUM_LAB_LOINC)
    cards, _ = _advise(_warning(), [xray, lab], judged=[f"ServiceRequest/{lab['id']}"])
    assert cards == []
    cards, _ = _advise(_warning(), [xray, lab], judged=[f"ServiceRequest/{xray['id']}"])
    assert [c["indicator"] for c in cards] == ["warning"]


def test_a_bone_scan_selected_beside_a_drafted_whole_spine_mri_is_fine() -> None:
    bone, mri = fb.draft_order(fb.BONE_SCAN_CPT), fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC, priority="routine")
    cards, _ = _advise(_critical(), [bone, mri], judged=[f"ServiceRequest/{bone['id']}"])
    assert cards == []  # the MRI's priority is order-sign's business: it was not selected


def test_an_xray_beside_a_whole_spine_mri_is_removed_not_turned_into_a_second_mri() -> None:
    mri = fb.draft_order(fb.MRI_WHOLE_SPINE_WO_LOINC, priority="routine")
    xray = fb.draft_order(fb.XRAY_LUMBAR_CPT)
    (card,) = _advise(_critical(), [mri, xray])[0]
    actions = _assert_acts_on_drafts(card, [mri, xray])
    assert [(a["type"], a.get("resourceId")) for a in actions] == [
        ("delete", f"ServiceRequest/{xray['id']}"), ("update", None)]
    assert _unrated(actions[1]["resource"], mri) == {**mri, "priority": "stat"}
    assert card["indicator"] == "critical"


def test_regional_mris_complete_a_whole_spine_mri_only_together() -> None:
    cervical, thoracic, lumbar = _regional_mris("urgent")
    assert _advise(_warning(), [cervical, thoracic, lumbar], judged=[f"ServiceRequest/{lumbar['id']}"])[0] == []
    (card,) = _advise(_warning(), [thoracic, lumbar], judged=[f"ServiceRequest/{lumbar['id']}"])[0]
    (update,) = _assert_acts_on_drafts(card, [thoracic, lumbar])
    assert update["resource"]["id"] == lumbar["id"]


def test_the_sandbox_shaped_draft_keeps_its_intent_and_reasons() -> None:
    """What the CDS Hooks sandbox's imaging view sends: intent plan, CPT code, a SNOMED reason, no priority."""
    draft = fb.draft_order(fb.MRI_LUMBAR_CPT, order_id="example-request-id", intent="plan",
                           reason=fb.snomed("279039007", "Low back pain (finding)"))
    draft.pop("requester")
    (card,) = _advise(_critical(), [draft])[0]
    (update,) = _assert_acts_on_drafts(card, [draft])
    resource = update["resource"]
    assert (resource["id"], resource["intent"], resource["status"]) == ("example-request-id", "plan", "draft")
    assert resource["reasonCode"] == draft["reasonCode"]
    assert resource["extension"] == [PAMA_RATING_EXTENSION]
    assert resource["requester"] == {"reference": USER}  # from context.userId, as patient-view's order does
    assert resource["code"]["coding"][0]["code"] == "42698-1"
    assert "lumbar spine is not enough" in card["summary"]


def test_a_drafted_order_is_not_part_of_the_record() -> None:
    """A draft whole-spine MRI in the record's own ServiceRequests does not suppress the warning."""
    record = {**_warning(), "serviceRequests": [fb.service_request(fb.MRI_WHOLE_SPINE_LOINC, status="draft")]}
    assert _decision(record, datetime.now(UTC)).indicator == "warning"


# --- bad draftOrders / selections -------------------------------------------------------------------------------
def _bundle(*resources: JSON) -> JSON:
    return fb.draft_orders(*resources)


def _invalid_service_request() -> JSON:
    broken = fb.draft_order(fb.XRAY_LUMBAR_CPT)
    broken["code"] = "72100"
    return broken


def _without(key: str) -> JSON:
    draft = fb.draft_order(fb.XRAY_LUMBAR_CPT)
    draft.pop(key)
    return draft


ERRORS: dict[str, tuple[Any, str]] = {
    "not an object": ([], "context.draftOrders"),
    "not a Bundle": (fb.patient(), "context.draftOrders"),
    "entry not an array": ({"resourceType": "Bundle", "entry": {}}, "context.draftOrders.entry"),
    "entry without a resource": (
        {"resourceType": "Bundle", "entry": [{"resource": fb.draft_order(fb.XRAY_LUMBAR_CPT)}, {"fullUrl": "x"}]},
        "context.draftOrders.entry[1].resource"),
    "another patient's order": (
        _bundle(fb.draft_order(fb.XRAY_LUMBAR_CPT), fb.draft_order(fb.CALCIUM_LAB_LOINC),
                fb.draft_order(fb.MRI_LUMBAR_CPT, patient_id=fb.OTHER_PATIENT_ID)),
        "context.draftOrders.entry[2].resource.subject"),
    "another patient's medication": (
        _bundle(fb.draft_medication(fb.FULVESTRANT, patient_id=fb.OTHER_PATIENT_ID)),
        "context.draftOrders.entry[0].resource.subject"),
    "not a valid R4 ServiceRequest": (_bundle(_invalid_service_request()), "context.draftOrders.entry[0].resource"),
    "ServiceRequest without subject": (_bundle(_without("subject")), "context.draftOrders.entry[0].resource"),
    "priority not in RequestPriority": (
        _bundle(fb.draft_order(fb.XRAY_LUMBAR_CPT, priority="rush")), "context.draftOrders.entry[0].resource.priority"),
    "the same id twice": (
        _bundle(fb.draft_order(fb.XRAY_LUMBAR_CPT, order_id="a"), fb.draft_order(fb.MRI_LUMBAR_CPT, order_id="a")),
        "context.draftOrders.entry[1].resource.id"),
    "no resourceType": (_bundle({"id": "x"}), "context.draftOrders.entry[0].resource.resourceType"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_draft_orders_name_the_field(name: str) -> None:
    value, expression = ERRORS[name]
    with pytest.raises(DraftOrdersError) as raised:
        read_draft_orders(copy.deepcopy(value), fb.PATIENT_ID, TERMINOLOGY)
    assert raised.value.expression == expression
    assert raised.value.message


def test_invalid_service_request_message_names_the_element_not_the_value() -> None:
    with pytest.raises(DraftOrdersError) as raised:
        read_draft_orders(_bundle(_invalid_service_request()), fb.PATIENT_ID, TERMINOLOGY)
    assert "code" in raised.value.message and "72100" not in raised.value.message


def test_an_empty_bundle_and_absolute_subjects_are_fine() -> None:
    assert read_draft_orders({"resourceType": "Bundle", "type": "collection"}, fb.PATIENT_ID, TERMINOLOGY).orders == ()
    draft = fb.draft_order(fb.XRAY_LUMBAR_CPT)
    draft["subject"] = {"reference": f"https://ehr.example.org/fhir/Patient/{fb.PATIENT_ID}"}
    (order,) = read_draft_orders(_bundle(draft), fb.PATIENT_ID, TERMINOLOGY).spine_imaging
    assert (order.kind, order.regions, order.priority) == ("xray", frozenset({"lumbar", "sacral"}), None)


@pytest.mark.parametrize(("selections", "expression"), [
    (["ServiceRequest/a", "ServiceRequest/nope"], "context.selections[1]"),
    (["MedicationRequest/a"], "context.selections[0]"),
    ([7], "context.selections[0]"),
    ([], "context.selections"),
    ("ServiceRequest/a", "context.selections"),
])
def test_a_selection_must_name_a_draft(selections: Any, expression: str) -> None:
    drafts = read_draft_orders(_bundle(fb.draft_order(fb.XRAY_LUMBAR_CPT, order_id="a")), fb.PATIENT_ID, TERMINOLOGY)
    with pytest.raises(DraftOrdersError) as raised:
        check_selections(selections, drafts)
    assert raised.value.expression == expression


def test_selections_that_name_drafts_are_returned_once_each() -> None:
    drafts = read_draft_orders(_bundle(fb.draft_order(fb.XRAY_LUMBAR_CPT, order_id="a"),
                                       fb.draft_medication(fb.FULVESTRANT)), fb.PATIENT_ID, TERMINOLOGY)
    medication = drafts.references[1]
    assert check_selections(["ServiceRequest/a", medication, "ServiceRequest/a"], drafts) == (
        "ServiceRequest/a", medication)


def test_classification_of_the_vocabulary() -> None:
    drafts = read_draft_orders(_bundle(*[fb.draft_order(c, priority="urgent") for c in (
        fb.MRI_LUMBAR_CPT, fb.CT_THORACIC_CPT, fb.BONE_SCAN_CPT, fb.PET_CT_WHOLE_BODY_CPT, fb.MRI_WHOLE_SPINE_WO_LOINC,
        fb.CALCIUM_LAB_LOINC)]), fb.PATIENT_ID, TERMINOLOGY)
    seen = [(o.spine_imaging.kind, sorted(o.spine_imaging.regions)) if o.spine_imaging else None
            for o in drafts.orders]
    assert seen == [("mri", ["lumbar"]), ("ct", ["thoracic"]), ("bone-scan", []), ("pet", []),
                    ("mri", ["cervical", "lumbar", "sacral", "thoracic"]), None]
    assert all(o.spine_imaging is None or o.spine_imaging.priority == "urgent" for o in drafts.orders)
    assert drafts.spine_imaging[0].reference == drafts.orders[0].reference


def test_an_update_gives_a_draft_without_reasons_the_coded_pain_as_its_reason() -> None:
    draft = fb.draft_order(fb.MRI_LUMBAR_CPT)
    draft["reasonCode"] = []  # as the sandbox sends an empty draft: never handed back empty
    (card,) = _advise(_warning(), [draft])[0]
    (update,) = _assert_acts_on_drafts(card, [draft])
    assert update["resource"]["reasonCode"][0]["coding"][0]["code"] == "279039007"  # low back pain


def test_the_sandbox_empty_draft_is_not_spine_imaging() -> None:
    """The imaging view's page-load call: an empty coding, an empty reasonCode. Read without complaint."""
    empty = {"resourceType": "ServiceRequest", "id": "example-request-id", "status": "draft", "intent": "plan",
             "code": {"coding": [{}]}, "subject": {"reference": f"Patient/{fb.PATIENT_ID}"}, "reasonCode": []}
    bundle = {"resourceType": "Bundle", "entry": [{"resource": empty}]}  # no type, as the sandbox sends it
    drafts = read_draft_orders(bundle, fb.PATIENT_ID, TERMINOLOGY)
    assert drafts.references == ("ServiceRequest/example-request-id",) and drafts.spine_imaging == ()
    assert _advise(_critical(), [empty])[0] == []


def test_a_scan_beside_a_whole_spine_mri_already_ordered_is_removed() -> None:
    """Critical: an active whole-spine MRI order keeps the chart card (until the MRI is done); a drafted X-ray is
    then removed, not turned into a second MRI. Warning: that order already answers the card, so nothing."""
    ordered = fb.service_request(fb.MRI_WHOLE_SPINE_LOINC, authored_days_ago=1)
    xray = fb.draft_order(fb.XRAY_LUMBAR_CPT)
    (card,) = _advise({**_critical(), "serviceRequests": [ordered]}, [xray])[0]
    (delete,) = _assert_acts_on_drafts(card, [xray])
    assert delete == {"type": "delete", "description": "Remove the draft order: X-ray of the lumbosacral spine",
                      "resourceId": f"ServiceRequest/{xray['id']}"}
    assert "MRI of the whole spine is ordered" in card["summary"] and card["indicator"] == "critical"
    assert _advise({**_warning(), "serviceRequests": [ordered]}, [xray])[0] == []


def test_a_draft_without_an_id_is_judged_and_the_mri_is_added_beside_it() -> None:
    """order-sign judges every draft; one with no id cannot be updated or deleted, so the MRI is created."""
    xray = fb.draft_order(fb.XRAY_LUMBAR_CPT)
    xray.pop("id")
    (card,) = _advise(_critical(), [xray])[0]
    (action,) = card["suggestions"][0]["actions"]
    assert action["type"] == "create" and "id" not in action["resource"]
    assert action["resource"]["code"]["coding"][0] == MRI_WHOLE_SPINE_CODING
    ServiceRequest.model_validate(action["resource"])
    mri = fb.draft_order(fb.MRI_LUMBAR_CPT)
    (card,) = _advise(_critical(), [xray, mri])[0]
    (update,) = _assert_acts_on_drafts(card, [mri])  # the draft with an id is changed; the other cannot be named
    assert update["resource"]["id"] == mri["id"]


def test_more_draft_orders_than_the_limit_are_refused_before_any_is_validated() -> None:
    drafts = [fb.draft_order(fb.XRAY_LUMBAR_CPT, order_id=f"d{i}") for i in range(MAX_ORDERS + 1)]
    bundle = _bundle(*drafts)
    bundle["entry"][-1]["resource"]["status"] = "not-a-status"  # would fail validation if it were reached
    with pytest.raises(DraftOrdersError) as refused:
        read_draft_orders(bundle, fb.PATIENT_ID, TERMINOLOGY)
    assert refused.value.expression == "context.draftOrders.entry" and str(MAX_ORDERS) in refused.value.message
    assert len(read_drafts(_bundle(*drafts[:3]), fb.PATIENT_ID, TERMINOLOGY, max_orders=3).orders) == 3

