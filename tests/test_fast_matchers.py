"""The fast matchers on the intake's hot path must agree with the plain regexes they stand for: a text they turn
away is a resource never validated, so a missed back-pain note or drug name would be a missed alert."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_mapping import text
from fhir_mapping.drug_names import _matcher, drug_named
from fhir_mapping.terminology import load_terminology
from fhir_mapping.text import mentions_anything_relevant

PHRASES = [
    "back pain", "Low Back Pain", "pain in the lower back", "pain of upper spine", "neck ache", "lumbar aching",
    "BACKACHE", "lumbago", "Dorsalgia", "sciatica", "cervicalgia", "breast cancer", "Carcinoma of the left breast",
    "malignancy of breast", "cord compression", "MSCC", "Cauda Equina", "thoracic  pain", "sacral\tache",
    "ſciatica", "K", "breaſt cancer", "back paın", "BACK PAİN", "lumbago\u0307", "Lumbago!", "spine-pain",
    "pain", "back", "Breast", "ache",
]
WORDS = st.sampled_from([*PHRASES, "no", "denies", "the", "of", "in", "lower", "left", "Hydrochlorothiazide", "."])


@pytest.mark.parametrize("phrase", PHRASES)
def test_prefilter_agrees_with_the_regex_on_known_phrases(phrase: str) -> None:
    assert mentions_anything_relevant(phrase) == (text._ANY_RELEVANT.search(phrase) is not None)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=8).map(" ".join))
def test_prefilter_never_drops_what_the_regex_matches(sample: str) -> None:
    assert mentions_anything_relevant(sample) == (text._ANY_RELEVANT.search(sample) is not None)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=8).map(" ".join))
def test_each_test_of_a_text_needs_an_anchor_of_its_own(sample: str) -> None:
    # fhir_mapping.mentions bounds what a resource could be evidence of by which anchors its bytes hold: a
    # breast-cancer phrase must hold a breast-cancer anchor, a pain or cord-compression phrase one of the others.
    if not sample.isascii():
        return  # outside ASCII the bytes are always read as anything (fhir_mapping.mentions)
    lowered = sample.lower()
    if text.breast_cancer_in(sample):
        assert any(anchor in lowered for anchor in text.BREAST_CANCER_ANCHORS)
    if text.spinal_pain_in(sample) or text.cord_compression_in(sample):
        assert any(anchor in lowered for anchor in text.PAIN_AND_CORD_ANCHORS)


@pytest.mark.parametrize("phrase", PHRASES)
def test_each_known_phrase_holds_an_anchor_of_its_test(phrase: str) -> None:
    lowered = phrase.lower()
    if phrase.isascii() and text.breast_cancer_in(phrase):
        assert any(anchor in lowered for anchor in text.BREAST_CANCER_ANCHORS)
    if phrase.isascii() and (text.spinal_pain_in(phrase) or text.cord_compression_in(phrase)):
        assert any(anchor in lowered for anchor in text.PAIN_AND_CORD_ANCHORS)


def test_prefilter_settles_drug_names_and_visit_types_without_the_regex() -> None:
    assert not mentions_anything_relevant("Hydrochlorothiazide 25 MG Oral Tablet | Evaluation+Plan note")
    assert mentions_anything_relevant("Backache (finding)")


# --- drug names: the prefix-sharing regex must match exactly what a flat longest-first alternation matches ---
TERMINOLOGY = load_terminology()
_PATTERN, NAMES = _matcher(TERMINOLOGY)
FLAT = re.compile(
    r"\b(?:" + "|".join(re.escape(n) for n in sorted(NAMES, key=len, reverse=True)) + r")\b", re.IGNORECASE
)
FRAGMENTS = st.sampled_from([*NAMES, *(n[: len(n) // 2] for n in NAMES), *(n.upper() for n in NAMES),
                             "/", "-", " ", "mg", "Oral Tablet", "x", "ſ", "İ", "Hydrochlorothiazide"])


def _match(pattern: re.Pattern[str], sample: str) -> tuple[int, int, str] | None:
    found = pattern.search(sample)
    return (found.start(), found.end(), found.group().lower()) if found else None


@settings(max_examples=500, deadline=None)
@given(st.lists(FRAGMENTS, max_size=6).map("".join))
def test_drug_name_regex_matches_as_the_flat_alternation(sample: str) -> None:
    assert _match(_PATTERN, sample) == _match(FLAT, sample)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_drug_name_is_found_whole(name: str) -> None:
    assert drug_named(TERMINOLOGY, f"Rx: {name.upper()} 2.5 MG") is NAMES[name]
