"""The Bulk Data client (cds_hooks/bulk) against a Bulk Data server on loopback (tests/bulk_server.py), which
follows the HL7 Bulk Data Access IG 2.0.0 and verifies SMART Backend Services client assertions for real."""

from __future__ import annotations

import gzip
import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from cds_hooks.bulk import BulkExportError, download_export
from cds_hooks.bulk.auth import load_signing_key
from cds_hooks.bulk.export import export_query, fhir_base
from cds_hooks.bulk.http import retry_after_seconds
from cds_hooks.settings import Settings, https_or_loopback
from fhir_mapping.terminology import load_terminology
from tests.bulk_server import FakeBulkServer, outcome
from tests.scenarios import fhir_builders as fb

CLIENT_ID = "mscc-alert-test"
KEY_ID = "test-key-1"


def ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


def export_files() -> tuple[dict[str, bytes], dict[str, str]]:
    """Two patients over several files per type: one plain, one a gzip file, one sent gzip-encoded."""
    alice, bob = "bulk-alice-1", "bulk-bob-2"
    conditions = [fb.breast_cancer(patient_id=alice), fb.back_pain(patient_id=alice),
                  fb.back_pain(patient_id=bob)] + [fb.finding(fb.GENERIC_WEAKNESS, patient_id=bob)] * 40
    files = {
        "Patient.1.ndjson": ndjson([fb.patient(patient_id=alice), fb.patient(patient_id=bob)]),
        "Condition.1.ndjson": ndjson(conditions[:2]),
        "Condition.2.ndjson": ndjson(conditions[2:]),
        "Condition.3.ndjson.gz": gzip.compress(ndjson(conditions[:1]), mtime=0),
        "Encounter.1.ndjson": ndjson([fb.encounter(patient_id=alice)]),
    }
    types = {name: name.split(".")[0] for name in files}
    return files, types


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": "memory://", "bulk_poll_min_seconds": 0.01,
                              "bulk_poll_max_seconds": 0.2, "bulk_retries": 3}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(autouse=True)
def _no_bulk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MSCC_ALERT_BULK_"):
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> Iterator[FakeBulkServer]:
    files, types = export_files()
    errors = {"errors.1.ndjson": ndjson([outcome("Observation export was partial")])}
    with FakeBulkServer(files=files, types=types, errors=errors, gzip_transfer={"Encounter.1.ndjson"}) as s:
        yield s


def ec_key(tmp_path: Path) -> tuple[Path, Any]:
    key = ec.generate_private_key(ec.SECP384R1())
    return _write_key(tmp_path, key), key.public_key()


def _write_key(tmp_path: Path, key: Any) -> Path:
    path = tmp_path / "client-key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def credentials(key_file: Path) -> dict[str, Any]:
    return {"bulk_client_id": CLIENT_ID, "bulk_private_key_file": key_file, "bulk_key_id": KEY_ID}


def stored(dest: Path, stem: str) -> bytes:
    """A downloaded data file's NDJSON, whether stored plain or gzip."""
    [path] = [p for p in dest.iterdir() if p.name.startswith(stem + ".") and not p.name.endswith(".part")]
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


# --- units ---------------------------------------------------------------------------------------------------
def test_export_asks_for_what_the_prefetch_templates_ask_for() -> None:
    query = export_query(load_terminology())
    assert set(query.types) == {"Patient", "Condition", "MedicationStatement", "MedicationRequest", "Observation",
                                "ServiceRequest", "DiagnosticReport", "ImagingStudy", "Procedure", "Encounter"}
    by_type = {f.split("?")[0]: f for f in query.type_filters}
    assert set(by_type) == {"Observation", "ServiceRequest", "DiagnosticReport", "ImagingStudy", "Procedure",
                            "Encounter"}  # Condition and medications come whole, as the hook fetches them
    assert "72514-3" in by_type["Observation"].split("code=", 1)[1].split(",")  # a pain-score code the rules read
    assert "279039007" in by_type["Encounter"].split("reason-code=", 1)[1].split(",")  # low back pain as a visit reason
    assert all("patient=" not in f and "{{" not in f for f in query.type_filters)


@pytest.mark.parametrize(("url", "base"), [
    ("https://ehr.example.org/fhir/$export", "https://ehr.example.org/fhir"),
    ("https://ehr.example.org/fhir/Patient/$export", "https://ehr.example.org/fhir"),
    ("https://ehr.example.org/fhir/Group/oncology-7/$export", "https://ehr.example.org/fhir"),
    ("https://ehr.example.org:8443/r4/Group/g1/%24export", "https://ehr.example.org:8443/r4"),
])
def test_kickoff_url_shapes(url: str, base: str) -> None:
    assert fhir_base(url) == base


@pytest.mark.parametrize("url", [
    "https://ehr.example.org/fhir/Patient", "https://ehr.example.org/fhir/$export?_type=Patient",
    "ftp://ehr.example.org/fhir/$export", "https://ehr.example.org/fhir/Group/bad id!/$export",
])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(BulkExportError):
        fhir_base(url)


def test_plain_http_only_to_loopback() -> None:
    assert https_or_loopback("https://ehr.example.org/fhir")
    assert https_or_loopback("http://127.0.0.1:8080/fhir") and https_or_loopback("http://[::1]/x")
    assert https_or_loopback("http://localhost:1/")
    assert not https_or_loopback("http://ehr.example.org/fhir")
    assert not https_or_loopback("http://localhost.example.org/fhir")
    assert not https_or_loopback("http://127.0.0.1.example.org/fhir")
    assert not https_or_loopback("https://user:secret@ehr.example.org/fhir")  # would go out as Basic auth


def test_http_kickoff_beyond_loopback_is_refused_before_any_connection(tmp_path: Path) -> None:
    with pytest.raises(BulkExportError, match="https"):
        download_export("http://ehr.example.org/fhir/$export", tmp_path / "out", settings=settings())


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    response = requests.Response()
    response.headers["Retry-After"] = "120"
    assert retry_after_seconds(response) == 120
    response.headers["Retry-After"] = formatdate(time.time() + 60, usegmt=True)
    seconds = retry_after_seconds(response)
    assert seconds is not None and 55 <= seconds <= 61
    response.headers["Retry-After"] = "soon"
    assert retry_after_seconds(response) is None


def test_credentials_are_all_or_none_and_bounds_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="MSCC_ALERT_BULK_PRIVATE_KEY_FILE"):
        Settings(bulk_client_id="x", bulk_key_id="k")
    with pytest.raises(ValidationError, match="POLL_MIN"):
        Settings(bulk_poll_min_seconds=10, bulk_poll_max_seconds=1)
    with pytest.raises(ValidationError, match="https"):
        Settings(bulk_token_url="http://auth.example.org/token")
    with pytest.raises(ValidationError, match="origin"):
        Settings(bulk_token_origins="https://files.example.org/path")
    assert Settings(bulk_token_origins="https://files.example.org, http://127.0.0.1:9").bulk_token_origins == (
        "https://files.example.org", "http://127.0.0.1:9")


def test_signing_keys_are_checked(tmp_path: Path) -> None:
    assert load_signing_key(ec_key(tmp_path)[0])[1] == "ES384"
    assert load_signing_key(_write_key(tmp_path, rsa.generate_private_key(65537, 2048)))[1] == "RS384"
    with pytest.raises(BulkExportError, match="P-384"):
        load_signing_key(_write_key(tmp_path, ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(BulkExportError, match="cannot read"):
        load_signing_key(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(BulkExportError, match="not an unencrypted PEM private key"):
        load_signing_key(tmp_path / "junk.pem")


# --- against the server ----------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_open_server_export_lands_in_the_folder(server: FakeBulkServer, tmp_path: Path) -> None:
    dest = download_export(server.base + "/$export", tmp_path / "export", settings=settings())

    [kickoff] = server.kickoffs()
    assert kickoff.headers["prefer"] == "respond-async" and kickoff.headers["accept"] == "application/fhir+json"
    assert kickoff.query["_outputFormat"] == ["application/fhir+ndjson"]
    assert set(kickoff.query["_type"][0].split(",")) == set(export_query(load_terminology()).types)
    assert {f.split("?")[0] for f in kickoff.query["_typeFilter"]} >= {"Observation", "Encounter"}
    assert "_since" not in kickoff.query
    assert len(server.requests_to("/jobs/")) == 3  # two 202s, then the manifest
    for name, data in server.files.items():
        resource_type, rank = name.rsplit(".ndjson", 1)[0].split(".")
        sent = gzip.decompress(data) if name.endswith(".gz") else data
        assert stored(dest, f"{resource_type}.{int(rank):03d}") == sent
    assert (dest / "Encounter.001.ndjson.gz").exists()  # sent with Content-Encoding: gzip, kept as sent
    assert sorted(p.name for p in dest.glob("*.ndjson*")) == [
        "Condition.001.ndjson", "Condition.002.ndjson", "Condition.003.ndjson.gz", "Encounter.001.ndjson.gz",
        "Patient.001.ndjson"]
    assert (dest / "errors" / "OperationOutcome.001.ndjson.txt").read_bytes() == server.errors["errors.1.ndjson"]
    assert orjson.loads((dest / "manifest.json").read_bytes())["transactionTime"] == "2026-11-30T12:00:00Z"
    assert not any(s.authorization for s in server.seen)  # an open server gets no token
    assert len(server.requests_to("/jobs/", "DELETE")) == 1  # done with the files: the server may free them

    before = len(server.seen)
    download_export(server.base + "/$export", dest, settings=settings())  # a rerun: nothing left to do
    assert len(server.seen) == before


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/Patient/$export", "/Group/breast-clinic/$export"])
def test_patient_and_group_level_with_since(server: FakeBulkServer, tmp_path: Path, path: str) -> None:
    download_export(server.base + path, tmp_path / "x", settings=settings(), since="2026-11-01T00:00:00Z")
    [kickoff] = server.kickoffs()
    assert kickoff.path == "/fhir" + path
    assert kickoff.query["_since"] == ["2026-11-01T00:00:00Z"]
    with pytest.raises(BulkExportError, match="FHIR instant"):
        download_export(server.base + path, tmp_path / "y", settings=settings(), since="yesterday")


@pytest.mark.e2e
def test_a_server_refusing_type_filter_is_asked_again_without_it(server: FakeBulkServer, tmp_path: Path) -> None:
    server.refuse_type_filter = True
    download_export(server.base + "/$export", tmp_path / "x", settings=settings())
    first, second = server.kickoffs()
    assert "_typeFilter" in first.query and "_typeFilter" not in second.query
    assert second.query["_type"] == first.query["_type"]
    assert stored(tmp_path / "x", "Patient.001") == server.files["Patient.1.ndjson"]


@pytest.mark.e2e
def test_type_filter_can_be_switched_off(server: FakeBulkServer, tmp_path: Path) -> None:
    download_export(server.base + "/$export", tmp_path / "x", settings=settings(bulk_type_filter=False))
    [kickoff] = server.kickoffs()
    assert "_typeFilter" not in kickoff.query and "_type" in kickoff.query


@pytest.mark.e2e
def test_kickoff_error_says_what_the_server_said(server: FakeBulkServer, tmp_path: Path) -> None:
    server.kickoff_error = (400, outcome("Group breast-clinic is unknown"))
    with pytest.raises(BulkExportError, match=r"kick-off request failed \(HTTP 400\): Group breast-clinic is unknown"):
        download_export(server.base + "/Group/breast-clinic/$export", tmp_path / "x", settings=settings())
    assert len(server.kickoffs()) == 1 and not server.requests_to("/jobs/")


@pytest.mark.e2e
def test_a_failed_export_fails_clearly(server: FakeBulkServer, tmp_path: Path) -> None:
    server.poll_failures = [(500, outcome("An internal timeout has occurred", "processing"))]
    with pytest.raises(BulkExportError, match=r"export failed \(HTTP 500\): An internal timeout has occurred"):
        download_export(server.base + "/$export", tmp_path / "x", settings=settings())
    assert len(server.requests_to("/jobs/")) == 1  # not retried: the OperationOutcome says it is not transient


@pytest.mark.e2e
def test_transient_polling_failures_are_retried(server: FakeBulkServer, tmp_path: Path) -> None:
    server.poll_failures = [(502, None), (429, outcome("slow down", "throttled")), (503, outcome("busy", "transient"))]
    download_export(server.base + "/$export", tmp_path / "x", settings=settings())
    assert len(server.requests_to("/jobs/")) == 6
    assert stored(tmp_path / "x", "Patient.001") == server.files["Patient.1.ndjson"]


@pytest.mark.e2e
def test_transient_failures_are_bounded(server: FakeBulkServer, tmp_path: Path) -> None:
    server.poll_failures = [(503, None)] * 10
    with pytest.raises(BulkExportError, match="gave up after 3 attempts"):
        download_export(server.base + "/$export", tmp_path / "x", settings=settings(bulk_retries=2))
    assert len(server.requests_to("/jobs/")) == 3


@pytest.mark.e2e
def test_retry_after_is_honoured(server: FakeBulkServer, tmp_path: Path) -> None:
    server.polls_before_done, server.retry_after = 1, "1"
    download_export(server.base + "/$export", tmp_path / "x", settings=settings(bulk_poll_max_seconds=5))
    first, second = server.requests_to("/jobs/")
    assert 0.9 <= second.at - first.at < 4


@pytest.mark.e2e
def test_export_deadline_cancels_the_export(server: FakeBulkServer, tmp_path: Path) -> None:
    server.polls_before_done = 10_000
    with pytest.raises(BulkExportError, match="MSCC_ALERT_BULK_EXPORT_SECONDS"):
        download_export(server.base + "/$export", tmp_path / "x", settings=settings(bulk_export_seconds=0.5))
    assert len(server.requests_to("/jobs/", "DELETE")) == 1


@pytest.mark.e2e
def test_x_progress_shown_on_a_terminal_only(server: FakeBulkServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    download_export(server.base + "/$export", tmp_path / "a", settings=settings())
    assert "steps" not in pipe.getvalue()
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    download_export(server.base + "/$export", tmp_path / "b", settings=settings())
    assert "2 of 2 steps" in terminal.getvalue()


@pytest.mark.e2e
def test_interrupted_download_resumes_with_range_on_rerun(server: FakeBulkServer, tmp_path: Path) -> None:
    server.cut_once = {"Condition.2.ndjson"}
    dest = tmp_path / "x"
    with pytest.raises(BulkExportError, match="cut off"):
        download_export(server.base + "/$export", dest, settings=settings(bulk_retries=0))
    assert not list(dest.glob("Condition.002.ndjson")) and (dest / "Condition.002.part").exists()
    half = (dest / "Condition.002.part").stat().st_size
    assert 0 < half < len(server.files["Condition.2.ndjson"])
    state = orjson.loads((dest / ".bulk-export.json").read_bytes())
    complete = [f["url"].rsplit("/", 1)[1] for f in state["files"] if f["complete"]]
    assert complete  # two at a time: the third file starts only once one of the first two is done

    download_export(server.base + "/$export", dest, settings=settings(bulk_retries=0))
    assert len(server.kickoffs()) == 1  # the manifest was kept: no new export
    first, again = server.requests_to("/files/Condition.2.ndjson")
    assert "range" not in first.headers and again.headers["range"] == f"bytes={half}-"
    assert again.headers["if-range"].startswith('"')
    assert stored(dest, "Condition.002") == server.files["Condition.2.ndjson"]
    for name in complete:  # complete files are not fetched again
        assert len(server.requests_to(f"/files/{name}")) == 1
    assert all(f["complete"] for f in orjson.loads((dest / ".bulk-export.json").read_bytes())["files"])
    assert not list(dest.glob("*.part"))


@pytest.mark.e2e
def test_interrupted_download_resumes_within_the_run(server: FakeBulkServer, tmp_path: Path) -> None:
    server.cut_once = {"Condition.2.ndjson"}
    download_export(server.base + "/$export", tmp_path / "x", settings=settings())
    assert len(server.requests_to("/files/Condition.2.ndjson")) == 2
    assert stored(tmp_path / "x", "Condition.002") == server.files["Condition.2.ndjson"]


@pytest.mark.e2e
def test_without_range_support_the_file_is_fetched_again(server: FakeBulkServer, tmp_path: Path) -> None:
    server.cut_once, server.ranges = {"Condition.2.ndjson", "Encounter.1.ndjson"}, False
    download_export(server.base + "/$export", tmp_path / "x", settings=settings())
    assert stored(tmp_path / "x", "Condition.002") == server.files["Condition.2.ndjson"]
    assert gzip.decompress((tmp_path / "x" / "Encounter.001.ndjson.gz").read_bytes()) == \
        server.files["Encounter.1.ndjson"]


@pytest.mark.e2e
def test_byte_bounds_per_file_and_in_total(server: FakeBulkServer, tmp_path: Path) -> None:
    largest = max(len(d) for d in server.files.values())
    with pytest.raises(BulkExportError, match="MSCC_ALERT_BULK_MAX_FILE_BYTES"):
        download_export(server.base + "/$export", tmp_path / "a", settings=settings(bulk_max_file_bytes=largest - 1))
    total = sum(len(d) for d in server.files.values())
    with pytest.raises(BulkExportError, match="MSCC_ALERT_BULK_MAX_TOTAL_BYTES"):
        download_export(server.base + "/$export", tmp_path / "b", settings=settings(bulk_max_total_bytes=total // 2))


@pytest.mark.e2e
def test_a_folder_holding_another_export_is_refused(server: FakeBulkServer, tmp_path: Path) -> None:
    download_export(server.base + "/$export", tmp_path / "x", settings=settings())
    with pytest.raises(BulkExportError, match="another export"):
        download_export(server.base + "/Patient/$export", tmp_path / "x", settings=settings())


# --- SMART Backend Services -------------------------------------------------------------------------------------
@pytest.fixture
def secured(server: FakeBulkServer) -> FakeBulkServer:
    server.requires_token = True
    return server


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["EC", "RSA"])
def test_backend_services_token_on_every_request(secured: FakeBulkServer, tmp_path: Path, kind: str) -> None:
    if kind == "EC":
        key_file, public = ec_key(tmp_path)
    else:
        private = rsa.generate_private_key(65537, 2048)
        key_file, public = _write_key(tmp_path, private), private.public_key()
    secured.public_key = public
    download_export(secured.base + "/$export", tmp_path / "x", settings=settings(**credentials(key_file)))

    [(header, claims)] = secured.assertions
    assert header["alg"] == ("ES384" if kind == "EC" else "RS384") and header["kid"] == KEY_ID
    assert claims["iss"] == claims["sub"] == CLIENT_ID and claims["aud"] == secured.token_url
    assert claims["exp"] - time.time() <= 300
    [token_request] = secured.requests_to("/auth/token", "POST")
    assert "authorization" not in token_request.headers
    assert secured.requests_to("/fhir/.well-known/smart-configuration")  # token endpoint discovered
    protected = [s for s in secured.seen if s.path.startswith(("/fhir/$export", "/jobs/", "/files/"))]
    assert protected and all((s.authorization or "").startswith("Bearer ") for s in protected)
    assert stored(tmp_path / "x", "Patient.001") == secured.files["Patient.1.ndjson"]


@pytest.mark.e2e
def test_files_get_no_token_when_the_manifest_says_none_is_needed(server: FakeBulkServer, tmp_path: Path) -> None:
    key_file, server.public_key = ec_key(tmp_path)  # the FHIR endpoints need a token; the files do not
    server.requires_token = False
    download_export(server.base + "/$export", tmp_path / "x", settings=settings(**credentials(key_file)))
    assert all(s.authorization for s in server.requests_to("/jobs/"))
    assert server.requests_to("/files/") and not any(s.authorization for s in server.requests_to("/files/"))


@pytest.mark.e2e
def test_scope_and_token_url_from_settings(secured: FakeBulkServer, tmp_path: Path) -> None:
    key_file, secured.public_key = ec_key(tmp_path)
    download_export(secured.base + "/$export", tmp_path / "x", settings=settings(
        **credentials(key_file), bulk_scope="system/*.rs", bulk_token_url=secured.token_url))
    assert not secured.requests_to("/fhir/.well-known/smart-configuration")
    [token_request] = secured.requests_to("/auth/token", "POST")
    assert secured.token_errors == [] and len(secured.assertions) == 1
    assert token_request.method == "POST"


@pytest.mark.e2e
def test_a_wrong_key_is_refused_clearly(secured: FakeBulkServer, tmp_path: Path) -> None:
    key_file, _ = ec_key(tmp_path)
    secured.public_key = ec.generate_private_key(ec.SECP384R1()).public_key()  # registered: another key
    with pytest.raises(BulkExportError, match=r"token endpoint refused the client \(HTTP 400: invalid_client"):
        download_export(secured.base + "/$export", tmp_path / "x", settings=settings(**credentials(key_file)))
    assert not secured.kickoffs()


@pytest.mark.e2e
def test_the_token_is_renewed_when_it_expires(secured: FakeBulkServer, tmp_path: Path) -> None:
    key_file, secured.public_key = ec_key(tmp_path)
    secured.token_lifetime, secured.polls_before_done, secured.retry_after = 1, 4, "1"
    download_export(secured.base + "/$export", tmp_path / "x", settings=settings(**credentials(key_file),
                                                                                 bulk_poll_max_seconds=0.5))
    assert len(secured.assertions) >= 2  # each with its own jti (the server refuses a replayed one)
    assert secured.token_errors == []


@pytest.mark.e2e
def test_a_revoked_token_is_replaced_on_401(secured: FakeBulkServer, tmp_path: Path) -> None:
    key_file, secured.public_key = ec_key(tmp_path)
    secured.poll_failures = []
    original = secured.manifest

    def manifest_after_revoking(request_url: str) -> dict[str, Any]:
        secured.revoke_tokens()  # the file downloads now meet a 401 first
        return original(request_url)

    secured.manifest = manifest_after_revoking  # type: ignore[method-assign]
    download_export(secured.base + "/$export", tmp_path / "x", settings=settings(**credentials(key_file)))
    assert len(secured.assertions) == 2
    assert stored(tmp_path / "x", "Condition.001") == secured.files["Condition.1.ndjson"]


@pytest.mark.e2e
def test_the_token_goes_only_to_the_export_servers_origin(tmp_path: Path) -> None:
    files, types = export_files()
    key_file, public = ec_key(tmp_path)
    with FakeBulkServer(files=files, types=types, requires_token=True, public_key=public) as file_server, \
            FakeBulkServer(requires_token=True, public_key=public, file_server=file_server) as export_server:
        file_server.tokens = export_server.tokens  # one authorisation server for both
        with pytest.raises(BulkExportError, match=r"HTTP 401"):
            download_export(export_server.base + "/$export", tmp_path / "a", settings=settings(**credentials(key_file)))
        assert file_server.seen and not any(s.authorization for s in file_server.seen)

        allowed = settings(**credentials(key_file), bulk_token_origins=(file_server.origin,))
        download_export(export_server.base + "/$export", tmp_path / "b", settings=allowed)
        assert stored(tmp_path / "b", "Patient.001") == files["Patient.1.ndjson"]

    # Same port, another name: `localhost` is not the origin the token was given for.
    with FakeBulkServer(files=files, types=types, requires_token=True, public_key=public,
                        file_host="localhost") as server:
        with pytest.raises(BulkExportError, match=r"HTTP 401"):
            download_export(server.base + "/$export", tmp_path / "c", settings=settings(**credentials(key_file)))
        assert not any(s.authorization for s in server.requests_to("/files/"))
        assert all(s.authorization for s in server.requests_to("/jobs/"))


@pytest.mark.e2e
def test_file_urls_over_plain_http_beyond_loopback_are_refused(server: FakeBulkServer, tmp_path: Path) -> None:
    server.file_host = "files.example.org"  # never resolved: refused before any connection
    with pytest.raises(BulkExportError, match="not https"):
        download_export(server.base + "/$export", tmp_path / "x", settings=settings())


@pytest.mark.e2e
def test_no_token_or_patient_id_in_logs(secured: FakeBulkServer, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    key_file, secured.public_key = ec_key(tmp_path)
    caplog.set_level(logging.DEBUG)
    download_export(secured.base + "/$export", tmp_path / "x", settings=settings(**credentials(key_file)))
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "bulk export kicked off" in logged
    for secret in [*secured.tokens, "bulk-alice-1", "bulk-bob-2", "client_assertion=", "eyJ"]:
        assert secret not in logged


def _export_in_subprocess(server: FakeBulkServer, dest: Path) -> subprocess.Popen[bytes]:
    """`download_export` in its own process, started once the server has answered two status polls."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from cds_hooks.bulk import download_export
        from cds_hooks.settings import Settings
        download_export({server.base + "/$export"!r}, Path({str(dest)!r}),
                        settings=Settings(database_url="memory://", bulk_poll_min_seconds=0.05,
                                          bulk_poll_max_seconds=0.05))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, env=env,
                               cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 60
    while len(server.requests_to("/jobs/")) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    return process


@pytest.mark.e2e
def test_ctrl_c_while_the_server_works_cancels_the_export(server: FakeBulkServer, tmp_path: Path) -> None:
    server.polls_before_done = 10_000
    process = _export_in_subprocess(server, tmp_path / "x")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert b"cancelled the export on the server" in stderr
    assert len(server.requests_to("/jobs/", "DELETE")) == 1
    state = orjson.loads((tmp_path / "x" / ".bulk-export.json").read_bytes())
    assert state["status_url"] is None  # a rerun kicks off afresh


@pytest.mark.e2e
def test_a_run_killed_while_the_server_works_is_picked_up_by_the_next(server: FakeBulkServer,
                                                                      tmp_path: Path) -> None:
    server.polls_before_done = 10_000
    process = _export_in_subprocess(server, tmp_path / "x")
    process.kill()  # no chance to cancel: the export goes on on the server
    process.communicate(timeout=60)
    assert not server.requests_to("/jobs/", "DELETE")
    server.polls_before_done = 0
    download_export(server.base + "/$export", tmp_path / "x", settings=settings())
    assert len(server.kickoffs()) == 1  # the same export, polled again rather than kicked off anew
    assert stored(tmp_path / "x", "Patient.001") == server.files["Patient.1.ndjson"]


# --- the sweep, end to end --------------------------------------------------------------------------------------
def _sweep_env(key_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_ALERT_")}
    env.update({"MSCC_ALERT_BULK_CLIENT_ID": CLIENT_ID, "MSCC_ALERT_BULK_PRIVATE_KEY_FILE": str(key_file),
                "MSCC_ALERT_BULK_KEY_ID": KEY_ID, "MSCC_ALERT_BULK_POLL_MIN_SECONDS": "0.05",
                "MSCC_ALERT_BULK_POLL_MAX_SECONDS": "0.2"})
    return env


@pytest.mark.e2e
def test_sweep_of_a_kickoff_url_end_to_end(tmp_path: Path) -> None:
    """`mscc-alert sweep http://…/$export --out DIR`: the client downloads the export (authenticated), the
    sweep's rules find the patient with breast cancer and new back pain, and nobody else."""
    alice, bob, carol = "bulk-alice-1", "bulk-bob-2", "bulk-carol-3"  # cancer + new pain; pain only; cancer only
    files = {
        "Patient.1.ndjson": ndjson([fb.patient(patient_id=alice), fb.patient(patient_id=bob)]),
        "Patient.2.ndjson.gz": gzip.compress(ndjson([fb.patient(patient_id=carol)])),
        "Condition.1.ndjson": ndjson([fb.back_pain(patient_id=bob), fb.breast_cancer(patient_id=alice),
                                      fb.breast_cancer(patient_id=carol)]),
        "Condition.2.ndjson": ndjson([fb.back_pain(patient_id=alice)]),
    }
    types = {name: name.split(".")[0] for name in files}
    key_file, public = ec_key(tmp_path)
    out = tmp_path / "out"
    with FakeBulkServer(files=files, types=types, requires_token=True, public_key=public,
                        errors={"errors.1.ndjson": ndjson([outcome("Observation export was partial")])},
                        gzip_transfer={"Condition.2.ndjson"}) as server:
        result = subprocess.run([sys.executable, "-m", "cds_hooks", "sweep", server.base + "/$export", "--out",
                                 str(out), "--since", "2026-01-01T00:00:00Z"],
                                capture_output=True, env=_sweep_env(key_file), timeout=300,
                                cwd=Path(__file__).resolve().parents[1])
        assert result.returncode == 0, result.stderr.decode()
        [kickoff] = server.kickoffs()
        assert kickoff.query["_since"] == ["2026-01-01T00:00:00Z"] and kickoff.authorization
        assert server.assertions and not server.token_errors
    worklist = [orjson.loads(line) for line in (out / "worklist.ndjson").read_bytes().splitlines() if line]
    assert [(w["patientId"], w["indicator"]) for w in worklist] == [(alice, "warning")]
    assert (out / "export" / "manifest.json").exists()
    assert (out / "export" / "errors" / "OperationOutcome.001.ndjson.txt").exists()  # not read as data
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["patients"] == 3
    stderr = result.stderr.decode()
    assert not any(p in stderr for p in (alice, bob, carol)) and not any(t in stderr for t in server.tokens)


@pytest.mark.e2e
def test_sweep_says_why_an_export_failed(tmp_path: Path) -> None:
    key_file, public = ec_key(tmp_path)
    with FakeBulkServer(kickoff_error=(403, outcome("client not authorised for Group 9")), public_key=public) as s:
        result = subprocess.run([sys.executable, "-m", "cds_hooks", "sweep", s.base + "/Group/9/$export", "--out",
                                 str(tmp_path / "out")], capture_output=True, env=_sweep_env(key_file), timeout=300,
                                cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2
    assert "kick-off request failed (HTTP 403): client not authorised for Group 9" in result.stderr.decode()
    assert b"Traceback" not in result.stderr
