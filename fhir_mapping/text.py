"""Free-text fallback for records that carry words and no usable code (docs/clinical-rules.md §3 item 11).

Deliberately narrow: a phrase must name the concept, and a negation or another-person cue in the same
clause cancels it ("no back pain", "denies back pain", "back pain resolved", "family history of breast
cancer"). Words such as "feedback", "backorder" and "back of head" never match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NEGATION = re.compile(
    r"\b(no|not|denies|denied|without|negative for|free of|absence of|absent|resolved|ruled out|"
    r"rule out|r/o|never)\b",
    re.IGNORECASE,
)
_OTHER_PERSON_OR_RISK = re.compile(
    r"\b(family|mother|father|sister|brother|aunt|grandmother|daughter|fh|risk|screening|suspected|"
    r"possible|brca\d?|carrier|hereditary|prophylactic)\b",
    re.IGNORECASE,
)
_CLAUSE_SPLIT = re.compile(r"[.;\n]|\bbut\b", re.IGNORECASE)

_BACK = r"(?:back|spine|spinal|lumbar|thoracic|cervical|sacral|coccyx|neck|lumbosacral)"
_PAIN = r"(?:pain|ache|aching|backache|lumbago|dorsalgia|cervicalgia|sciatica)"
_SPINAL_PAIN = re.compile(
    rf"\b(?:{_BACK}\s+{_PAIN}|{_PAIN}\s+(?:in|of)\s+(?:the\s+)?(?:lower\s+|upper\s+|mid\s+)?{_BACK}|"
    rf"(?:lower|upper|mid)\s+back\s+{_PAIN}|backache|lumbago|dorsalgia|sciatica|cervicalgia)\b",
    re.IGNORECASE,
)
_REGIONS = (
    ("cervical", re.compile(r"\b(cervical|neck|cervicalgia)\b", re.IGNORECASE)),
    ("thoracic", re.compile(r"\b(thoracic|upper back|mid back|middle back|dorsal)\b", re.IGNORECASE)),
    ("sacral", re.compile(r"\b(sacral|sacrum|coccyx|coccygeal)\b", re.IGNORECASE)),
    ("lumbar", re.compile(r"\b(lumbar|lower back|low back|lumbago|lumbosacral|sciatica)\b", re.IGNORECASE)),
)
# CG75/NG234 features suggestive of spinal metastases (docs/clinical-rules.md §1.3 list S), as they appear in notes.
_SUGGESTIVE = re.compile(
    r"\b(night|nocturnal|worse lying|lying down|cough|sneez|strain|band-like|band like|unremitting|"
    r"progressive|worsening|severe|tender)",
    re.IGNORECASE,
)
_BREAST_CANCER = re.compile(
    r"\b(breast\s+(?:cancer|carcinoma|malignan\w*|neoplasm)|"
    r"(?:cancer|carcinoma|malignant neoplasm|malignancy)\s+of\s+(?:the\s+)?(?:\w+\s+)?breast)\b",
    re.IGNORECASE,
)
_NOT_BREAST_PRIMARY = re.compile(
    r"\b(in situ|dcis|lcis|skin of|melanoma|metasta\w*\s+to\s+(?:the\s+)?(?:\w+\s+)?breast)\b", re.IGNORECASE
)
_CORD_COMPRESSION = re.compile(r"\b(cord compression|mscc|cauda equina)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class TextPain:
    region: str
    suggestive: bool


def _affirmed_clauses(text: str, pattern: re.Pattern[str]) -> list[str]:
    clauses = []
    for clause in _CLAUSE_SPLIT.split(text):
        match = pattern.search(clause)
        if match and not _NEGATION.search(clause) and not _OTHER_PERSON_OR_RISK.search(clause):
            clauses.append(clause)
    return clauses


def spinal_pain_in(text: str | None) -> TextPain | None:
    if not text:
        return None
    clauses = _affirmed_clauses(text, _SPINAL_PAIN)
    if not clauses:
        return None
    joined = " ".join(clauses)
    region = next((name for name, pattern in _REGIONS if pattern.search(joined)), "unspecified")
    return TextPain(region=region, suggestive=bool(_SUGGESTIVE.search(joined)))


def breast_cancer_in(text: str | None) -> bool:
    if not text:
        return False
    return any(not _NOT_BREAST_PRIMARY.search(c) for c in _affirmed_clauses(text, _BREAST_CANCER))


def cord_compression_in(text: str | None) -> bool:
    return bool(text) and bool(_affirmed_clauses(text or "", _CORD_COMPRESSION))


_ANY_RELEVANT = re.compile(
    "|".join(f"(?:{p.pattern})" for p in (_SPINAL_PAIN, _BREAST_CANCER, _CORD_COMPRESSION)), re.IGNORECASE
)


# Every phrase _ANY_RELEVANT matches contains one of these (each _PAIN word holds "pain", "ache" or "aching", or is
# named here): every phrase of breast_cancer_in one of BREAST_CANCER_ANCHORS, every phrase of spinal_pain_in and
# cord_compression_in one of PAIN_AND_CORD_ANCHORS. Most texts in a chart (drug names, visit types) hold none of
# them and are settled with a few substring tests instead of the regex. Only for ASCII text: there lower() is
# exactly the regex's IGNORECASE, while elsewhere the regex also equates e.g. "ı" and "İ" with "i".
# tests/test_fast_matchers.py checks they agree. fhir_mapping.mentions seeks them in raw JSON too.
BREAST_CANCER_ANCHORS = ("breast",)
PAIN_AND_CORD_ANCHORS = ("pain", "ache", "aching", "lumbago", "dorsalgia", "sciatica", "cervicalgia",
                         "cord compression", "mscc", "cauda equina")
ANCHORS = (*PAIN_AND_CORD_ANCHORS, *BREAST_CANCER_ANCHORS)


def mentions_anything_relevant(text: str) -> bool:
    """Cheap pre-filter used when picking resources out of a large prefetch."""
    if text.isascii():
        lowered = text.lower()
        if not any(anchor in lowered for anchor in ANCHORS):
            return False
    return _ANY_RELEVANT.search(text) is not None
