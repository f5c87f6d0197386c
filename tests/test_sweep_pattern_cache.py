"""The sweep's compiled mention test kept on disk (cds_hooks/sweep/pattern_cache.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from cds_hooks.settings import Settings
from cds_hooks.sweep.pattern_cache import load_or_compile
from fhir_mapping.intake import mention_patterns, mention_test, use_mention_test
from fhir_mapping.mentions import Mentions
from fhir_mapping.terminology import load_terminology
from tests.scenarios.fhir_builders import back_pain, breast_cancer, heart_rate

TERMINOLOGY = load_terminology()
BLOCK = b"".join(orjson.dumps(r) + b"\n" for r in (
    breast_cancer(patient_id="p1"), heart_rate(60, effective_days_ago=1), back_pain(patient_id="p2")))


@pytest.fixture(autouse=True)
def _restore_the_mention_test() -> Iterator[None]:
    compiled = mention_test(TERMINOLOGY)
    yield
    use_mention_test(TERMINOLOGY, compiled)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_compiled_once_then_loaded_and_it_finds_the_same_lines(tmp_path: Path) -> None:
    expected = list(mention_test(TERMINOLOGY).lines(BLOCK))
    folder = tmp_path / "cache"
    assert load_or_compile(TERMINOLOGY, folder) == "compiled and saved"
    [name] = _files(folder)
    assert name == f"mentions-{Mentions.fingerprint(mention_patterns(TERMINOLOGY))}.hyperscan"
    assert (folder.stat().st_mode & 0o777, (folder / name).stat().st_mode & 0o777) == (0o700, 0o600)
    assert load_or_compile(TERMINOLOGY, folder) == "loaded"
    assert list(mention_test(TERMINOLOGY).lines(BLOCK)) == expected and len(expected) == 2


def test_a_file_hyperscan_rejects_is_compiled_again_and_replaced(tmp_path: Path) -> None:
    load_or_compile(TERMINOLOGY, tmp_path)
    [path] = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:1000] + b"\0" * 64 + path.read_bytes()[1064:])
    assert load_or_compile(TERMINOLOGY, tmp_path) == "compiled and saved"
    assert load_or_compile(TERMINOLOGY, tmp_path) == "loaded"


@pytest.mark.parametrize("loosen", ["file", "folder", "symlink"])
def test_a_file_someone_else_could_write_is_never_loaded(tmp_path: Path, loosen: str) -> None:
    folder = tmp_path / "cache"
    load_or_compile(TERMINOLOGY, folder)
    [path] = folder.iterdir()
    if loosen == "file":
        path.chmod(0o666)
    elif loosen == "folder":
        folder.chmod(0o777)
    else:
        real = tmp_path / "elsewhere.hyperscan"
        path.rename(real)
        path.symlink_to(real)
    assert load_or_compile(TERMINOLOGY, folder) != "loaded"
    if loosen == "folder":
        assert load_or_compile(TERMINOLOGY, folder) == "compiled"  # nor written into a folder others can write


def test_only_the_current_file_is_kept(tmp_path: Path) -> None:
    (tmp_path / "mentions-0123456789abcdef.hyperscan").write_bytes(b"an older value set's")
    (tmp_path / "notes.txt").write_text("not ours")
    assert load_or_compile(TERMINOLOGY, tmp_path) == "compiled and saved"
    assert _files(tmp_path) == sorted([f"mentions-{Mentions.fingerprint(mention_patterns(TERMINOLOGY))}.hyperscan",
                                       "notes.txt"])


def test_no_folder_no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_or_compile(TERMINOLOGY, None) == "compiled"
    monkeypatch.setenv("MSCC_ALERT_SWEEP_CACHE_DIR", "")
    assert Settings().sweep_cache_dir is None


def test_a_folder_that_cannot_be_made_only_means_compiling(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert load_or_compile(TERMINOLOGY, tmp_path / "file" / "cache") == "compiled"
