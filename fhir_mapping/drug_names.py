"""Breast-cancer drugs named in free text ("Faslodex 250 mg injection", "fulvestrant"), for medication records
that carry no usable code. Names are the ingredient and brand names of the breast-cancer-drugs value set."""

from __future__ import annotations

import functools
import re

from fhir_mapping.terminology import Concept, Terminology


@functools.cache
def _matcher(terminology: Terminology) -> tuple[re.Pattern[str], dict[str, Concept]]:
    names: dict[str, Concept] = {}
    for concept in terminology.value_set("breast-cancer-drugs"):
        ingredient = str(concept.attributes.get("ingredient", "")).strip().lower()
        if ingredient:
            names.setdefault(ingredient, concept)
        if concept.attributes.get("tty") == "BN":
            names.setdefault(concept.display.lower(), concept)
    # Longest first, so "pertuzumab/trastuzumab" style names win over their parts.
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE), names


def drug_named(terminology: Terminology, text: str) -> Concept | None:
    if not text:
        return None
    pattern, names = _matcher(terminology)
    match = pattern.search(text)
    return names[match.group().lower()] if match else None
