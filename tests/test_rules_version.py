"""Every card says which rules made it: the package version plus a hash of the value sets and rules modules."""

from __future__ import annotations

import hashlib
import re
from importlib.metadata import version
from importlib.resources.abc import Traversable
from pathlib import Path

import pytest

from cards import version as rules

ROOT = Path(__file__).resolve().parent.parent


def test_rules_version_is_the_package_version_and_a_short_hash() -> None:
    value = rules.rules_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+\+[0-9a-f]{8}", value), value
    assert value.startswith(version("mscc-alert") + "+")
    assert rules.source_label() == f"mscc-alert {version('mscc-alert')} · rules {rules.rules_hash()}"


def test_hash_covers_the_value_sets_and_the_rules_modules() -> None:
    names = [name for name, _ in rules._package_files()]
    assert "fhir_mapping/valuesets/spinal-pain.json" in names
    assert "cards/decision.py" in names and "fhir_mapping/extract.py" in names
    assert names == sorted(names)
    # Recomputed independently from the source tree: the same files, the same bytes, the same hash.
    digest = hashlib.sha256()
    for name in names:
        content = (ROOT / name).read_bytes().replace(b"\r\n", b"\n")
        digest.update(name.encode() + b"\0" + str(len(content)).encode() + b"\0" + content)
    assert rules.rules_hash() == digest.hexdigest()[:8]
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "fhir_mapping" / "valuesets").glob("*.json")}
    assert on_disk <= set(names)


def test_a_changed_value_set_changes_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    files = rules._package_files()
    baseline = rules.rules_hash()

    class Edited:
        """A value-set file with one byte more."""

        def __init__(self, original: Traversable) -> None:
            self.original = original

        def read_bytes(self) -> bytes:
            return self.original.read_bytes() + b" "

    edited = [(name, Edited(entry) if name.endswith("spinal-pain.json") else entry) for name, entry in files]
    monkeypatch.setattr(rules, "_package_files", lambda: edited)
    rules.rules_hash.cache_clear()
    try:
        assert rules.rules_hash() != baseline
    finally:
        monkeypatch.undo()
        rules.rules_hash.cache_clear()
    assert rules.rules_hash() == baseline
