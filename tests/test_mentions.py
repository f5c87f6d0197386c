"""The byte-level mention test that comes before any parse (fhir_mapping/mentions.py)."""

from __future__ import annotations

import json
import re

import msgspec
import orjson
import pytest

from fhir_mapping.intake import (
    EITHER,
    HISTORY,
    MODELS,
    TRIGGER,
    Screen,
    _is_relevant,
    _Peek,
    _peek_decoder,
    _verdicts,
    mention_test,
    resource_roles,
)
from fhir_mapping.terminology import load_terminology
from tests.scenarios import bulk_export as bulk
from tests.scenarios.test_clinical_scenarios import SCENARIOS

TERMINOLOGY = load_terminology()
MENTIONS = mention_test(TERMINOLOGY)


def _resources() -> list[bytes]:
    """Every resource of the suite's Synthea patients and clinical scenarios, as NDJSON lines."""
    lines = []
    for path in bulk.synthea_bundles():
        lines += [orjson.dumps(r) for r in bulk.synthea_patient(path, "p")]
    for param in SCENARIOS:
        lines += [orjson.dumps(r) for r in bulk.request_resources(param.values[0])]
    return lines


RESOURCES = _resources()


def _relevant_peeks() -> list[tuple[bytes, _Peek]]:
    """Each resource of RESOURCES, other than a Patient, that the peek reads and finds relevant, with its peek."""
    verdict = _verdicts(TERMINOLOGY)
    found = []
    for line in RESOURCES:
        try:
            peek = _peek_decoder.decode(line)
        except msgspec.ValidationError:
            continue  # the scenarios' deliberately broken resources
        if peek.resourceType in MODELS and peek.resourceType != "Patient" and _is_relevant(peek, verdict):
            found.append((line, peek))
    return found


RELEVANT = _relevant_peeks()


def test_every_resource_the_peek_finds_relevant_mentions_what_the_rules_read() -> None:
    # The test only ever narrows: a resource whose codes or words the peek judges relevant always passes it.
    relevant = 0
    for line, _ in RELEVANT:
        relevant += 1
        assert MENTIONS(line), line[:200]
    assert relevant > 500
    # ...and it narrows: most of a real record mentions nothing the rules read.
    assert sum(map(MENTIONS, RESOURCES)) < len(RESOURCES) / 3


@pytest.mark.parametrize(("raw", "mentions"), [
    (b'{"code":"3002"}', True),  # cyclophosphamide (RxNorm), as a whole value
    (b'{"code":3002}', True),
    (b'{"code":" 3002 "}', True),
    (b'{"id":"9b1c-3002-4f"}', False),  # the same digits inside an id
    (b'{"id":"a3002b"}', False),
    (b'{"code":"C50.911"}', True),
    (b'{"code":"c50911"}', True),  # ICD-10-CM without its dot, in lower case
    (b'{"text":"LOWER BACK PAIN"}', True),
    (b'{"text":"Tamoxifen 20 mg"}', True),
    (b'{"text":"p\\u0061in"}', True),  # an escaped ASCII character could spell anything
    (b'{"text":"P\\u0041IN"}', True),
    (b'{"text":"pa\\u0130n"}', True),  # "İ", escaped
    (b'{"code":"\\t3002"}', True),  # an escaped control character beside a short code
    ('{"text":"PAİN"}'.encode(), True),  # "İ" is "i" to a case-insensitive regex
    ('{"text":"crème"}'.encode(), False),  # other non-ASCII text is only text
    (b'{"text":"cr\\u00e8me"}', False),  # ...escaped too, as json.dumps writes it
    (b'{"text":"\\"quoted\\" a\\/b c\\\\d"}', False),  # a quote, a slash, a backslash: no code or word holds one
    (b'{"code":"8867-4","display":"Heart rate"}', False),
])
def test_mentions(raw: bytes, mentions: bool) -> None:
    assert MENTIONS(raw) is mentions


def test_lines_of_a_block_are_the_lines_that_mention_anything_with_their_roles() -> None:
    lines = [*RESOURCES[:3000], b'{"code":"3002"}', b'{"x":"9b1c-3002-4f"}', b"{}", b'{"t":"pain"}']
    block = b"\n".join(lines) + b"\n"
    spans = list(MENTIONS.lines(block))
    assert [(block[start:end], roles) for start, end, roles in spans] == [
        (line, MENTIONS.roles(line)) for line in lines if MENTIONS(line)]
    assert len(spans) < len(lines)
    # A range of a larger read: the same lines, placed in the larger read.
    padded = b'{"t":"pain"}\n' + block + b'{"code":"3002"}\n'
    inner = list(MENTIONS.lines(padded, 13, 13 + len(block)))
    assert [(padded[start:end], roles) for start, end, roles in inner] == [
        (block[start:end], roles) for start, end, roles in spans]


@pytest.mark.parametrize(("raw", "roles"), [
    (b'{"code":"8867-4","display":"Heart rate"}', None),
    (b'{"code":"C50.911"}', HISTORY),  # malignant neoplasm of the right female breast
    (b'{"code":"279039007","display":"Low back pain"}', TRIGGER),
    (b'{"code":"583214","display":"paclitaxel 100 MG Injection"}', 0),  # tier C: never a history by itself
    (b'{"text":"Tamoxifen 20 mg"}', HISTORY),  # tier A
    (b'{"text":"breast lump"}', HISTORY),  # the anchor, not the phrase: the bound is what reading *could* find
    (b'{"text":"p\\u0061in"}', EITHER),  # an escape could spell anything
    (b'{"code":"C50.911","text":"back pain"}', EITHER),
])
def test_roles_bound_what_the_bytes_could_be_evidence_of(raw: bytes, roles: int | None) -> None:
    assert MENTIONS.roles(raw) == roles


def test_the_roles_of_the_bytes_bound_the_roles_the_peek_finds() -> None:
    # The sweep keeps a line whose bytes could be no trigger without reading it, and the hook counts an
    # unreadable resource as what its bytes could be: both rely on this bound never falling short.
    verdict = _verdicts(TERMINOLOGY)
    screen = Screen(TERMINOLOGY)
    judged = 0
    for line, peek in RELEVANT:
        exact = resource_roles(peek, verdict)
        bound = MENTIONS.roles(line)
        assert bound is not None and exact & ~bound == 0, line[:200]
        # ...and the subject read alone names the patient that reading the resource names.
        assert Screen.owner(line, peek.resourceType) == screen(line)[1], line[:200]  # type: ignore[index]
        judged += 1
    assert judged > 500


def test_the_characters_always_read_are_all_that_case_insensitive_regexes_equate_with_ascii_letters() -> None:
    # The free-text and drug-name rules are case-insensitive Python regexes: outside ASCII, exactly these
    # characters match an ASCII letter, so a text could spell a word with them that no ASCII token would find.
    letter = re.compile("[a-z]", re.IGNORECASE)
    equated = {chr(cp) for cp in range(0x80, 0x110000) if letter.fullmatch(chr(cp))}
    assert equated == {"\u0130", "\u0131", "\u017f", "\u212a"}
    assert all(MENTIONS(f'{{"text":"x{ch}y"}}'.encode()) for ch in equated)


def test_no_code_or_word_holds_a_character_that_only_an_escape_outside_the_always_read_ones_could_spell() -> None:
    # Only escapes of ASCII characters (and of the four above) are always read: sound only while every code and
    # word the patterns are made of is printable ASCII with no quote, backslash or slash.
    from fhir_mapping.intake import BREAST_CANCER_ANCHORS, PAIN_AND_CORD_ANCHORS, drug_name_tiers, relevant_codes

    spelled = [code for _, code in relevant_codes(TERMINOLOGY)]
    spelled += [*PAIN_AND_CORD_ANCHORS, *BREAST_CANCER_ANCHORS, *drug_name_tiers(TERMINOLOGY)]
    assert len(spelled) > 500
    assert [text for text in spelled if not (text.isascii() and text.isprintable()) or set(text) & set('"\\/')] == []


def _escaped(value: object) -> str:
    """JSON with every character of every string (keys too) written as a \\u escape."""
    if isinstance(value, str):
        return '"' + "".join(f"\\u{ord(ch):04x}" for ch in value) + '"'
    if isinstance(value, dict):
        return "{" + ",".join(f"{_escaped(key)}:{_escaped(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(_escaped, value)) + "]"
    return json.dumps(value)


def test_escaped_resources_are_bounded_as_their_plain_bytes_are() -> None:
    # The same resources as json.dumps writes them (every character beyond ASCII escaped), and with every
    # character escaped: the bytes' roles still bound what the peek finds in the plain resource.
    verdict = _verdicts(TERMINOLOGY)
    for line, peek in RELEVANT:
        exact = resource_roles(peek, verdict)
        resource = orjson.loads(line)
        for written in (json.dumps(resource).encode(), _escaped(resource).encode()):
            assert json.loads(written) == resource
            bound = MENTIONS.roles(written)
            assert bound is not None and exact & ~bound == 0, written[:200]
        assert MENTIONS.roles(_escaped(resource).encode()) == EITHER


def test_what_the_intake_remembers_is_bounded_whatever_clients_send() -> None:
    # The verdict caches live as long as the service: entries and the size of each key are capped, so hostile
    # requests (a million distinct codes, megabyte-long displays) can neither grow them without end nor make
    # them hold large strings.
    from fhir_mapping.intake import _MAX_ENTRIES, _MAX_KEY, _CodingVerdicts, _patient_of, _short_patient_of

    verdict = _CodingVerdicts(TERMINOLOGY)
    long_text = "back pain " * 1000
    assert verdict.text_roles(True, long_text) == TRIGGER and verdict.text(False, long_text)  # still judged
    assert verdict.history_drug("tamoxifen " + "x" * 5000)
    assert verdict("http://snomed.info/sct", "1" * 5000) == (False, True)
    assert not verdict.text_role_cache and not verdict.texts and not verdict.history_drugs and not verdict.verdicts
    for n in range(_MAX_ENTRIES + 50):
        verdict("http://snomed.info/sct", str(n))
    assert len(verdict.verdicts) == _MAX_ENTRIES
    assert all(len(system or "") + len(str(code)) <= _MAX_KEY for system, code in verdict.verdicts)
    _short_patient_of.cache_clear()
    assert _patient_of("Patient/" + "p" * 5000) == "p" * 5000 and _short_patient_of.cache_info().currsize == 0
    assert _patient_of("Patient/p1") == "p1" and _short_patient_of.cache_info().currsize == 1
