"""Cards a clinician takes in at a glance: short, in clinicians' words, with dates and how long ago, no
resource ids in the text, guideline sources only as links; and still clinically complete when the record holds
everything at once (the detail's length budget never drops the emergency actions).

Every card of every scenario is also checked against these rules by the scenario validator
(tests/scenarios/test_clinical_scenarios.py `assert_card_reads_at_a_glance`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cards.evaluate import evaluate_documents
from cards.policy import Policy
from cards.render import MAX_DETAIL
from fhir_mapping.terminology import load_terminology
from tests.scenarios import fhir_builders as fb
from tests.scenarios.test_clinical_scenarios import EVIDENCE_KEY, assert_card_reads_at_a_glance, call_service

ALL_NEURO = (fb.DIFFICULTY_WALKING, fb.URINARY_RETENTION, fb.MUSCLE_WEAKNESS, fb.SADDLE_NUMBNESS,
             fb.icd10cm("K59.2", "Neurogenic bowel, not elsewhere classified"), fb.CORD_COMPRESSION)
LONG_TEXT = "severe lower back ache, worse at night and on coughing, " * 6


def only_card(service_client: Any, body: fb.JSON) -> fb.JSON:
    cards = call_service(service_client, body)["cards"]
    assert len(cards) == 1, [c["summary"] for c in cards]
    card: fb.JSON = cards[0]
    return card


def everything(*extra_conditions: fb.JSON, **keys: Any) -> fb.JSON:
    """A record holding every kind of evidence a card can name: known metastases, pain in three regions (one
    as free text), suggestive features, modifiers, a treatment differential, hypercalcaemia, palliative care,
    partial and context imaging, a drug differential and an unreadable record."""
    conditions = [
        fb.breast_cancer(),
        fb.breast_cancer(fb.icd10cm("Z85.3", "Personal history of malignant neoplasm of breast"), onset_days_ago=900),
        fb.finding(fb.icd10cm("C79.51", "Secondary malignant neoplasm of bone"), onset_days_ago=200),
        fb.back_pain(onset_days_ago=12),
        fb.back_pain(*fb.THORACIC_PAIN, onset_days_ago=6),
        fb.condition(fb.concept(text=LONG_TEXT), onset_days_ago=4, recorded_days_ago=4),
        fb.finding(fb.snomed("42942008", "Compression fracture of vertebral column"), onset_days_ago=5),
        fb.finding(fb.icd10cm("R63.4", "Abnormal weight loss"), onset_days_ago=20),
        fb.finding(fb.snomed("42984000", "Night sweats"), onset_days_ago=20),
        fb.finding(fb.icd10cm("E83.52", "Hypercalcemia"), onset_days_ago=2),
        fb.finding(fb.icd10cm("G62.0", "Drug-induced polyneuropathy"), onset_days_ago=30),
        fb.finding(fb.icd10cm("Z51.5", "Encounter for palliative care"), onset_days_ago=15),
        *extra_conditions,
    ]
    broken = fb.observation(fb.concept(fb.coding("http://loinc.org", "72514-3")), valueQuantity="seven")
    return fb.hook_request(
        fb.patient(), conditions=conditions,
        observations=[broken, fb.observation(fb.concept(fb.loinc("72514-3")), valueInteger=9, effective_days_ago=1)],
        medicationRequests=[fb.medication_request(fb.ANASTROZOLE_SCD)],
        procedures=[fb.procedure(fb.MRI_LUMBAR_SNOMED, performed_days_ago=3)],
        diagnosticReports=[fb.diagnostic_report(fb.BONE_SCAN_LOINC, effective_days_ago=2)],
        **keys,
    )


def test_critical_card_with_everything_at_once_stays_short_and_complete(service_client: Any) -> None:
    card = only_card(service_client, everything(*(fb.finding(n, onset_days_ago=2) for n in ALL_NEURO)))
    assert card["indicator"] == "critical"
    detail = card["detail"]
    assert len(detail) <= MAX_DETAIL["critical"], len(detail)
    # The emergency actions are never cut for length.
    for words in ("**now**", "**whole spine**", "within 24 hours", "Dexamethasone 16 mg", "spine neutral",
                  "Hypercalcaemia", "goals of care"):
        assert words in detail, (words, detail)
    # Why: the history, the known metastases, the pain, a neurological feature.
    why = detail.split("\n\n")[0]
    assert why.startswith("**Why:** Breast cancer (")
    assert "known bone metastases" in why and re.search(r"low back pain( \(also thoracic\))? since", why)
    assert "cord compression since" in why or "difficulty walking since" in why
    assert re.search(r" · \d+ more in the record$", why)  # what did not fit is counted, not silently left out
    assert "1 unreadable record (Observation): check them in the chart" in detail
    # The machine-readable evidence keeps everything the text had no room for.
    assert len(card["extension"][EVIDENCE_KEY]) >= 15
    assert card["extension"]["org.mscc-alert.unreadable"]


def test_warning_card_with_everything_at_once_stays_short_and_complete(service_client: Any) -> None:
    card = only_card(service_client, everything())
    assert card["indicator"] == "warning"
    detail = card["detail"]
    assert len(detail) <= MAX_DETAIL["warning"], len(detail)
    for words in ("**whole spine**", "within 1 week", "within 24 hours", "Hypercalcaemia", "goals of care",
                  "rest of the spine", "Safety-net"):
        assert words in detail, (words, detail)
    assert card["summary"].startswith("Known bone metastases + new spinal pain")
    assert detail.startswith("**Why:** Breast cancer (") and "low back pain" in detail


def test_the_order_of_the_detail_is_why_what_to_do_differentials(service_client: Any) -> None:
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain(),
                                                     fb.finding(fb.DIFFICULTY_WALKING, onset_days_ago=1)],
                           medicationRequests=[fb.medication_request(fb.ANASTROZOLE_SCD)])
    detail = only_card(service_client, body)["detail"]
    sections = detail.split("\n\n")
    assert sections[0].startswith("**Why:** ")
    assert sections[1].startswith("**What to do**\n- ")
    assert sections[2].startswith("**Differential:** anastrozole")
    assert len(sections) == 3


def test_why_line_reads_like_a_clinician_wrote_it(service_client: Any) -> None:
    # Whole days only: a fraction of a day ago is "yesterday" when the suite runs just after midnight.
    body = fb.hook_request(fb.patient(), conditions=[
        fb.breast_cancer(onset_days_ago=3 * 365 + 40), fb.back_pain(onset_days_ago=9),
        fb.finding(fb.DIFFICULTY_WALKING, onset_days_ago=1), fb.finding(fb.URINARY_RETENTION, onset_days_ago=0),
    ])
    why = only_card(service_client, body)["detail"].split("\n\n")[0]
    assert re.fullmatch(
        r"\*\*Why:\*\* Breast cancer \([A-Z][a-z]{2} \d{4}, 3 years ago\) · low back pain since \d{1,2} [A-Z][a-z]{2}"
        r"( \d{4})? \(9 days\) · difficulty walking since yesterday · urinary retention since today", why), why


def test_text_from_the_record_is_quoted_escaped_and_bounded(service_client: Any) -> None:
    text = "lower back ache *worse* <b>at night</b> " + "x" * 200
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.condition(
        fb.concept(text=text), onset_days_ago=5, recorded_days_ago=5)])
    detail = only_card(service_client, body)["detail"]
    assert "“lower back ache \\*worse\\* \\<b\\>at night\\</b\\>" in detail
    assert "x" * 60 not in detail and "…”" in detail
    assert "<b>" not in detail


def test_recorded_date_only_is_said(service_client: Any) -> None:
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(),
                                                     fb.back_pain(onset_days_ago=None, recorded_days_ago=5)])
    assert "low back pain recorded " in only_card(service_client, body)["detail"]
    assert "onset not documented" in only_card(service_client, body)["detail"]


def test_mri_already_ordered_replaces_the_mri_line(service_client: Any) -> None:
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain(),
                                                     fb.finding(fb.DIFFICULTY_WALKING)],
                           serviceRequests=[fb.service_request(fb.MRI_WHOLE_SPINE_SNOMED, authored_days_ago=0)])
    card = only_card(service_client, body)
    assert "MRI whole spine is ordered (ordered today): make sure it is done **within 24 hours**." in card["detail"]
    assert "as soon as possible and **within 24 hours**" not in card["detail"]
    assert "suggestions" not in card
    assert any(r.startswith("ServiceRequest/") for r in card["extension"][EVIDENCE_KEY])


def _evaluate(body: fb.JSON, policy: Policy) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    documents = [orjson.dumps(v) for v in body["prefetch"].values() if v is not None]
    evaluation = evaluate_documents(documents, patient_id=fb.PATIENT_ID, user_id=None, now=now, policy=policy,
                                    terminology=load_terminology())
    for card in evaluation.cards:
        assert_card_reads_at_a_glance(card)
    return evaluation.cards


def test_info_cards_are_short_and_say_what_is_missing() -> None:
    tier_b = fb.hook_request(fb.patient(), conditions=[fb.back_pain()],
                             medicationRequests=[fb.medication_request(fb.LETROZOLE)])
    [card] = _evaluate(tier_b, Policy())
    assert card["indicator"] == "info"
    assert "**Why:** No breast cancer coded; on letrozole" in card["detail"]
    assert "Confirm any invasive breast cancer" in card["detail"]
    in_situ = fb.hook_request(fb.patient(), conditions=[
        fb.breast_cancer(fb.icd10cm("D05.11", "Intraductal carcinoma in situ of right breast")), fb.back_pain()])
    [card] = _evaluate(in_situ, Policy(in_situ_mode="info"))
    assert card["indicator"] == "info" and "**Why:** Breast carcinoma in situ only (" in card["detail"]


def test_end_of_life_downgrade_keeps_the_goals_of_care_wording_short() -> None:
    body = fb.hook_request(fb.patient(), conditions=[
        fb.breast_cancer(), fb.back_pain(), fb.finding(fb.DIFFICULTY_WALKING),
        fb.finding(fb.icd10cm("Z51.5", "Encounter for palliative care"))])
    [card] = _evaluate(body, Policy(end_of_life_mode="downgrade"))
    assert card["indicator"] == "info"
    assert "goals of care" in card["summary"] and "goals of care" in card["detail"]
    assert "Dexamethasone 16 mg" in card["detail"]  # the clinical content stays; only the tier changes


@pytest.mark.parametrize("count", [1, 40])
def test_unreadable_records_card_names_types_not_ids(service_client: Any, count: int) -> None:
    # A breast-cancer history and back-pain records that cannot be read: they might have made a card.
    broken = [fb.observation(fb.concept(fb.BACKACHE), valueQuantity="seven") for _ in range(count)]
    card = only_card(service_client, fb.hook_request(fb.patient(), conditions=[fb.breast_cancer()],
                                                     observations=broken))
    assert card["indicator"] == "info"
    assert f"{count} unreadable record{'s' if count > 1 else ''} (Observation)" in card["detail"]
    assert card["extension"]["org.mscc-alert.unreadable"] == [f"Observation/{o['id']}" for o in broken]
    assert "links" not in card


@pytest.mark.parametrize(("history", "broken"), [
    ([], fb.observation(fb.concept(fb.BACKACHE), valueQuantity="seven")),
    ([fb.breast_cancer()], fb.observation(fb.concept(fb.loinc("72514-3")), valueQuantity="seven")),
    ([], {**fb.breast_cancer(), "code": "Malignant neoplasm of breast"}),  # a code the peek cannot read
], ids=["back-pain-without-history", "history-and-a-pain-score", "a-broken-history-and-no-pain"])
def test_unreadable_records_that_could_not_make_a_card_give_none(service_client: Any, history: list[fb.JSON],
                                                                broken: fb.JSON) -> None:
    # Back pain with no breast-cancer history, or a history with only a pain score: read or not, these records
    # could not give a card (a pain score alone never makes pain new), so there is nothing to warn about. Nor
    # could a broken record whose bytes mention only a history, with no pain anywhere in the chart.
    if broken["resourceType"] == "Condition":
        body = fb.hook_request(fb.patient(), conditions=[*history, broken])
    else:
        body = fb.hook_request(fb.patient(), conditions=history, observations=[broken])
    assert call_service(service_client, body)["cards"] == []


def _pool() -> list[tuple[str, fb.JSON]]:
    """Evidence a record may hold, each with the prefetch key it goes under."""
    long_text = fb.condition(fb.concept(text=LONG_TEXT), onset_days_ago=4, recorded_days_ago=4)
    return [
        ("conditions", fb.finding(fb.icd10cm("C79.51", "Secondary malignant neoplasm of bone"), onset_days_ago=200)),
        ("conditions", fb.back_pain(onset_days_ago=12)),
        ("conditions", fb.back_pain(*fb.THORACIC_PAIN, onset_days_ago=6)),
        ("conditions", fb.back_pain(*fb.CHRONIC_LOW_BACK_PAIN, onset_days_ago=900)),
        ("conditions", long_text),
        *(("conditions", fb.finding(n, onset_days_ago=2)) for n in ALL_NEURO),
        ("conditions", fb.finding(fb.snomed("42942008", "Compression fracture of vertebral column"))),
        ("conditions", fb.finding(fb.icd10cm("R63.4", "Abnormal weight loss"), onset_days_ago=20)),
        ("conditions", fb.finding(fb.icd10cm("E83.52", "Hypercalcemia"), onset_days_ago=2)),
        ("conditions", fb.finding(fb.icd10cm("G62.0", "Drug-induced polyneuropathy"), onset_days_ago=30)),
        ("conditions", fb.finding(fb.icd10cm("Z51.5", "Encounter for palliative care"), onset_days_ago=15)),
        ("medicationRequests", fb.medication_request(fb.ANASTROZOLE_SCD)),
        ("medicationRequests", fb.medication_request(fb.PALBOCICLIB)),
        ("medicationStatements", fb.medication_statement(fb.FULVESTRANT)),
        ("medicationRequests", fb.medication_request(fb.LETROZOLE)),
        ("procedures", fb.procedure(fb.MRI_LUMBAR_SNOMED, performed_days_ago=1)),
        ("serviceRequests", fb.service_request(fb.MRI_WHOLE_SPINE_SNOMED, authored_days_ago=0.5)),
        ("diagnosticReports", fb.diagnostic_report(fb.BONE_SCAN_LOINC, effective_days_ago=2)),
        ("observations", fb.observation(fb.concept(fb.loinc("72514-3")), valueInteger=9, effective_days_ago=1)),
        ("observations", fb.observation(fb.concept(fb.coding("http://loinc.org", "72514-3")), valueQuantity="x")),
    ]


POOL = _pool()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chosen=st.sets(st.integers(0, len(POOL) - 1), max_size=len(POOL)), history=st.booleans(),
       end_of_life=st.sampled_from(["keep", "downgrade"]))
def test_any_mix_of_evidence_gives_short_complete_cards(chosen: set[int], history: bool, end_of_life: str) -> None:
    keys: dict[str, list[fb.JSON]] = {}
    for index in sorted(chosen):
        key, resource = POOL[index]
        keys.setdefault(key, []).append(resource)
    if history:
        keys.setdefault("conditions", []).insert(0, fb.breast_cancer())
    cards = _evaluate(fb.hook_request(fb.patient(), **keys), Policy(end_of_life_mode=end_of_life))  # type: ignore[arg-type]
    for card in cards:  # _evaluate checked the length, reference and link rules
        assert card["detail"].startswith("**Why:** ")
        why = card["detail"].split("\n\n")[0]
        if card["indicator"] != "info" or "suggestions" in card:
            assert "**What to do**\n- " in card["detail"]
            assert len(why) > len("**Why:** ") + 20 and not why.endswith("…"), why
        if card["indicator"] == "critical":
            assert "within 24 hours" in card["detail"] and "Dexamethasone 16 mg" in card["detail"]


def test_record_text_with_a_slash_never_reads_like_a_reference(service_client: Any) -> None:
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.condition(
        fb.concept(text="Thoracic/Lumbar back pain, see Condition/abc-1"), onset_days_ago=5, recorded_days_ago=5)])
    detail = only_card(service_client, body)["detail"]  # the validator checks no Type/id pattern is left
    assert "“Thoracic / Lumbar back pain, see Condition / abc-1” since " in detail


def test_a_site_time_zone_dates_findings_by_its_own_calendar() -> None:
    """Servers write many dateTimes in UTC; a site's clinicians read their own calendar. Noon UTC ten days ago is
    the next day on Kiritimati (UTC+14), whatever the time the suite runs."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from fastapi.testclient import TestClient

    from cds_hooks.protocol.app import create_app
    from cds_hooks.settings import Settings

    noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=10)
    pain = fb.back_pain(onset_days_ago=None)
    pain["onsetDateTime"] = pain["recordedDate"] = noon.isoformat().replace("+00:00", "Z")
    body = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), pain])

    def pain_date(**settings: Any) -> str:
        with TestClient(create_app(Settings(database_url="memory://", **settings))) as client:
            found = re.search(r"low back pain since (\d{1,2} [A-Z][a-z]{2})", only_card(client, body)["detail"])
        assert found is not None
        return found.group(1)

    local = noon.astimezone(ZoneInfo("Pacific/Kiritimati"))
    assert pain_date(time_zone="Pacific/Kiritimati") == f"{local.day} {local:%b}"
    assert pain_date() == f"{noon.day} {noon:%b}"  # unset: the offset the record wrote


def test_an_unknown_time_zone_is_refused_at_start_up() -> None:
    from pydantic import ValidationError

    from cds_hooks.settings import Settings

    with pytest.raises(ValidationError, match="not an IANA time zone name"):
        Settings(time_zone="Mars/Olympus_Mons")
    with pytest.raises(ValidationError, match="not an IANA time zone name"):
        Settings(time_zone="../../etc/passwd")
