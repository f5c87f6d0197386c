"""Which rules made a card: the package version plus a short hash of everything that decides what a card says.

The hash covers the value-set files (fhir_mapping/valuesets/*.json) and the Python modules of `fhir_mapping`
and `cards` (the extraction, the decision, the policy defaults and the card wording). Two services that give
the same version read the same codes with the same rules; a code added to a value set or a changed threshold
gives a new one, even when the package version was not bumped. It is read from the installed package's own
files once per process and cached (a few milliseconds, never per request).

Line endings are normalised before hashing, so a checkout with CRLF line endings gives the same hash.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from importlib.resources.abc import Traversable

__all__ = ["CARD_EXTENSION_KEY", "rules_hash", "rules_version", "source_label"]

DISTRIBUTION = "mscc-alert"
# The key under which each card's `extension` carries rules_version() (CDS Hooks 2.0 §"Extensions": an
# extension's name should be namespaced to avoid clashes).
CARD_EXTENSION_KEY = "org.mscc-alert.rules-version"
_HASH_CHARS = 8


def _package_files() -> list[tuple[str, Traversable]]:
    roots = (("fhir_mapping", files("fhir_mapping"), ".py"),
             ("fhir_mapping/valuesets", files("fhir_mapping") / "valuesets", ".json"),
             ("cards", files("cards"), ".py"))
    found = [(f"{prefix}/{entry.name}", entry) for prefix, root, suffix in roots for entry in root.iterdir()
             if entry.is_file() and entry.name.endswith(suffix)]
    return sorted(found, key=lambda item: item[0])


@cache
def rules_hash() -> str:
    """A short SHA-256 of the value sets and the rules modules (path and content of each, in path order)."""
    digest = hashlib.sha256()
    for name, entry in _package_files():
        content = entry.read_bytes().replace(b"\r\n", b"\n")
        digest.update(name.encode() + b"\0" + str(len(content)).encode() + b"\0" + content)
    return digest.hexdigest()[:_HASH_CHARS]


@cache
def _package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


@cache
def rules_version() -> str:
    """The package version and the rules hash, e.g. "0.1.0+3f2a9c1d" (a PEP 440 local version)."""
    return f"{_package_version()}+{rules_hash()}"


@cache
def source_label() -> str:
    """The card's `source.label`: "mscc-alert 0.1.0 · rules 3f2a9c1d"."""
    return f"{DISTRIBUTION} {_package_version()} · rules {rules_hash()}"
