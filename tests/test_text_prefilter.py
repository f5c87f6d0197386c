"""The substring pre-filter in front of the free-text regex must never turn away a text the regex matches:
a text it drops is a resource never validated, so a missed back-pain note would be a missed alert."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_mapping import text
from fhir_mapping.text import mentions_anything_relevant

PHRASES = [
    "back pain", "Low Back Pain", "pain in the lower back", "pain of upper spine", "neck ache", "lumbar aching",
    "BACKACHE", "lumbago", "Dorsalgia", "sciatica", "cervicalgia", "breast cancer", "Carcinoma of the left breast",
    "malignancy of breast", "cord compression", "MSCC", "Cauda Equina", "thoracic  pain", "sacral\tache",
    "ſciatica", "K", "breaſt cancer", "Lumbago!", "spine-pain", "pain", "back", "Breast", "ache",
]
WORDS = st.sampled_from([*PHRASES, "no", "denies", "the", "of", "in", "lower", "left", "Hydrochlorothiazide", "."])


@pytest.mark.parametrize("phrase", PHRASES)
def test_prefilter_agrees_with_the_regex_on_known_phrases(phrase: str) -> None:
    assert mentions_anything_relevant(phrase) == (text._ANY_RELEVANT.search(phrase) is not None)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=8).map(" ".join))
def test_prefilter_never_drops_what_the_regex_matches(sample: str) -> None:
    assert mentions_anything_relevant(sample) == (text._ANY_RELEVANT.search(sample) is not None)


def test_prefilter_settles_drug_names_and_visit_types_without_the_regex() -> None:
    assert not mentions_anything_relevant("Hydrochlorothiazide 25 MG Oral Tablet | Evaluation+Plan note")
    assert mentions_anything_relevant("Backache (finding)")
