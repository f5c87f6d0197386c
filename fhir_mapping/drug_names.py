"""Breast-cancer drugs named in free text ("Faslodex 250 mg injection", "fulvestrant"), for medication records
that carry no usable code. Names are the ingredient and brand names of the breast-cancer-drugs value set."""

from __future__ import annotations

import functools
import re
from typing import Any

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
    return re.compile(rf"\b{_trie(sorted(names))}\b", re.IGNORECASE), names


def _trie(words: list[str]) -> str:
    """One regex for the words, sharing their prefixes ("let(?:rozole)|le..."): Python's regex engine tries a
    flat alternation name by name at every position of the text, ~3x slower on the long medication texts of a
    chart. Continuations come before the end of a shorter word, so the longest name still wins
    ("pertuzumab/trastuzumab" over "pertuzumab"), as in the flat longest-first alternation."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def pattern(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + pattern(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        group = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            return f"(?:{group})?"
        return group

    return f"(?:{pattern(root)})"


def drug_name_tiers(terminology: Terminology) -> dict[str, str]:
    """Each name drug_named knows (lower-case) -> the tier of the drug it names, as names_drug_of_tier reads it."""
    return {name: str(concept.attributes.get("tier", "")) for name, concept in sorted(_matcher(terminology)[1].items())}


def drug_named(terminology: Terminology, text: str) -> Concept | None:
    if not text:
        return None
    pattern, names = _matcher(terminology)
    match = pattern.search(text)
    return names[match.group().lower()] if match else None


def names_drug_of_tier(terminology: Terminology, text: str, tiers: frozenset[str]) -> bool:
    """Whether any drug the text names is of one of these tiers (drug_named reads only the first)."""
    pattern, names = _matcher(terminology)
    return any(names[m.group().lower()].attributes.get("tier") in tiers for m in pattern.finditer(text))
