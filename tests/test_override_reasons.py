"""Override reasons on the cards: the CDS Hooks 3.0 ballot's HL7 codes where one fits, ours only for the rest.

tests/data/CodeSystem-non-adherence-reason-codes.json is the CodeSystem as published in the CDS Hooks IG source
(HL7/cds-hooks, input/vocabulary/, commit fb10ca773a846b36457137e57e137c693a99e48c), copied unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cards.content import (
    HL7_OVERRIDE_REASON_SYSTEM,
    OVERRIDE_REASON_SYSTEM,
    OVERRIDE_REASONS,
    RETIRED_OVERRIDE_REASONS,
)
from cds_hooks.feedback.models import parse_feedback
from tests.conftest import SERVICE_ID
from tests.scenarios import fhir_builders as fb

CODE_SYSTEM = Path(__file__).parent / "data" / "CodeSystem-non-adherence-reason-codes.json"


def _concepts(concepts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for concept in concepts:
        yield concept
        yield from _concepts(concept.get("concept", []))


def hl7_codes() -> dict[str, str]:
    code_system = json.loads(CODE_SYSTEM.read_text())
    assert code_system["url"] == HL7_OVERRIDE_REASON_SYSTEM
    return {c["code"]: c["definition"] for c in _concepts(code_system["concept"])}


def test_every_hl7_code_we_offer_is_in_the_published_code_system() -> None:
    codes = hl7_codes()
    offered = [code for system, code, _ in OVERRIDE_REASONS if system == HL7_OVERRIDE_REASON_SYSTEM]
    assert offered, "the standard codes are used where they fit"
    assert [code for code in offered if code not in codes] == []


def test_our_own_codes_are_only_for_reasons_the_standard_lacks() -> None:
    own = [code for system, code, _ in OVERRIDE_REASONS if system == OVERRIDE_REASON_SYSTEM]
    assert own == ["benign-cause-known"]
    assert "benign-cause-known" not in hl7_codes()
    # Every code we retired has a standard successor that the cards offer now.
    offered = {code for _, code, _ in OVERRIDE_REASONS}
    assert all(successor in offered and successor in hl7_codes() for _, successor in RETIRED_OVERRIDE_REASONS.values())


def test_cards_offer_the_reasons(service_client: Any) -> None:
    request = fb.hook_request(fb.patient(), conditions=[fb.breast_cancer(), fb.back_pain()])
    response = service_client.post(f"/cds-services/{SERVICE_ID}", json=request)
    assert response.status_code == 200
    (card,) = response.json()["cards"]
    assert [(r["system"], r["code"], r["display"]) for r in card["overrideReasons"]] == list(OVERRIDE_REASONS)
    assert all(len(r["display"]) <= 60 for r in card["overrideReasons"])  # fits an EHR's override menu


def test_feedback_with_a_retired_code_is_still_accepted() -> None:
    body = {"feedback": [{
        "card": "an-old-card", "outcome": "overridden", "outcomeTimestamp": "2026-05-01T10:00:00Z",
        "overrideReason": {"reason": {"system": OVERRIDE_REASON_SYSTEM, "code": "imaging-done-elsewhere"}},
    }]}
    (item,) = parse_feedback(json.dumps(body).encode()).feedback
    assert item.overrideReason is not None and item.overrideReason.reason is not None
    assert item.overrideReason.reason.code == "imaging-done-elsewhere"
