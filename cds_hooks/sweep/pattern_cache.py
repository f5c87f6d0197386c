"""The sweep's compiled mention test, kept on disk between runs (MSCC_ALERT_SWEEP_CACHE_DIR).

Compiling the thousand expressions of fhir_mapping/mentions.py takes 0.2-0.4 s, in every sweep and in every
spawned worker or Spark Python worker; loading the compiled database takes a fraction of a millisecond. The file
is named by the expressions' fingerprint (value sets, words and Hyperscan version), so a changed value set or
upgrade compiles afresh; only the newest file is kept.

What is loaded goes to Hyperscan's deserializer, which checks a header and a CRC but is not built to resist a
forged file. So a file is loaded only from a folder and as a file that this user owns, that are not symbolic
links, and that nobody else can write (the rule ssh applies to ~/.ssh): whoever could plant one could already
change this user's Python packages. The service never reads this cache. Any failure (a read-only disk, a file
Hyperscan rejects) only means compiling, as without a cache.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Literal

from fhir_mapping.intake import mention_patterns, use_mention_test
from fhir_mapping.mentions import Mentions
from fhir_mapping.terminology import Terminology

_log = logging.getLogger("mscc_alert.sweep")
_PREFIX = "mentions-"
_SUFFIX = ".hyperscan"

Source = Literal["loaded", "compiled", "compiled and saved"]


@functools.cache  # once a process: a Spark Python worker runs many tasks
def prepare_mention_test(terminology: Terminology, folder: Path | None) -> Source:
    return load_or_compile(terminology, folder)


def load_or_compile(terminology: Terminology, folder: Path | None) -> Source:
    """Make fhir_mapping.intake.mention_test(terminology) the cached compiled test, or compile it (and save it
    when `folder` is set and can be trusted). Says which it did."""
    patterns = mention_patterns(terminology)
    if folder is None or not hasattr(os, "getuid"):  # no cache, or no owner to check (Windows)
        use_mention_test(terminology, Mentions(patterns))
        return "compiled"
    path = folder / f"{_PREFIX}{Mentions.fingerprint(patterns)}{_SUFFIX}"
    if _trusted(path):
        try:
            use_mention_test(terminology, Mentions(patterns, compiled=path.read_bytes()))
            return "loaded"
        except (OSError, ValueError) as exc:
            _log.warning("sweep pattern cache: compiling again", extra={"reason": type(exc).__name__})
    mentions = Mentions(patterns)
    use_mention_test(terminology, mentions)
    return "compiled and saved" if _save(folder, path, mentions.serialized()) else "compiled"


def _trusted(path: Path) -> bool:
    """Whether the file and its folder are this user's alone (see the module's docstring)."""
    return _owned(path.parent) and _owned(path)


def _owned(entry: Path) -> bool:
    """Exists, is this user's, is no symbolic link, and nobody else can write it."""
    try:
        found = entry.lstat()
    except OSError:
        return False
    return not stat.S_ISLNK(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o022


def _save(folder: Path, path: Path, data: bytes) -> bool:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _owned(folder):  # an existing folder may be shared
            _log.warning("sweep pattern cache not used: its folder is not this user's alone")
            return False
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{_PREFIX}", suffix=_SUFFIX)  # created 0600
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)  # whole or not at all: a concurrent sweep never loads half a file
    except OSError as exc:
        _log.warning("sweep pattern cache not written", extra={"reason": type(exc).__name__})
        return False
    # One file at most, the current value sets' own (and no temporary file a crashed sweep left an hour ago).
    for stale in (*folder.glob(f"{_PREFIX}*{_SUFFIX}"), *folder.glob(f".{_PREFIX}*{_SUFFIX}")):
        with contextlib.suppress(OSError):
            if stale != path and (not stale.name.startswith(".") or time.time() - stale.stat().st_mtime > 3600):
                stale.unlink()
    return True
