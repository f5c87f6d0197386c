"""The wheel carries what `serve`, `evaluate` and the migrations read at run time, and an SPDX licence."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # builds a wheel in a subprocess

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(out)],
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("mscc_alert-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_holds_the_value_sets_and_the_migrations(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for folder in ("fhir_mapping/valuesets", "cds_hooks/feedback/migrations", "cds_hooks/feedback/migrations/versions"):
        source = {f"{folder}/{p.name}" for p in (ROOT / folder).iterdir() if p.is_file() and p.suffix != ".pyc"}
        assert source and source <= names, sorted(source - names)
    assert "cds_hooks/feedback/alembic.ini" in names
    assert {"cds_hooks/cli.py", "cards/decision.py", "fhir_mapping/intake.py"} <= names
    assert not any(name.startswith(("tests/", "examples/", "benchmarks/")) for name in names)


def test_wheel_declares_an_spdx_licence_and_ships_its_text(wheel: zipfile.ZipFile) -> None:
    metadata_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License-File"] == "LICENSE"
    licence = next(n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
    assert b"Apache License" in wheel.read(licence) and b"Version 2.0" in wheel.read(licence)
