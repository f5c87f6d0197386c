"""FhirClient against real HTTP servers on loopback (pytest-httpserver)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cds_hooks.protocol.fhir_client import FetchBudget, FetchLimits, FhirClient, FhirFetchError

TOKEN = "tok-9f8e7d6c5b4a"
PATIENT = "pat-7f3e9"
SEARCH = f"Condition?patient={PATIENT}"
FHIR_JSON = "application/fhir+json"


def fhir_body(resource: dict[str, Any]) -> bytes:
    # Indented with a trailing newline, unlike orjson's compact output, so equality proves the bytes were
    # passed through rather than re-serialised.
    return json.dumps(resource, indent=2).encode() + b"\n"


def bundle(entry_ids: list[str], next_url: str | None = None) -> bytes:
    doc: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Condition", "id": i}} for i in entry_ids],
    }
    if next_url is not None:
        doc["link"] = [{"relation": "self", "url": "ignored"}, {"relation": "next", "url": next_url}]
    return fhir_body(doc)


PATIENT_BODY = fhir_body({"resourceType": "Patient", "id": PATIENT, "gender": "female"})


def base_of(server: HTTPServer, path: str = "/fhir") -> str:
    return f"http://{server.host}:{server.port}{path}"


def serve_page(server: HTTPServer, page: int, body: bytes) -> None:
    query: dict[str, str] = {"patient": PATIENT} if page == 1 else {"patient": PATIENT, "_page": str(page)}
    server.expect_request("/fhir/Condition", query_string=query).respond_with_data(
        body, content_type=FHIR_JSON
    )


def page_url(page: int) -> str:
    return f"Condition?patient={PATIENT}&_page={page}"


def assert_safe(err: FhirFetchError) -> None:
    """str/repr must be fit for logs and OperationOutcomes; tracebacks must not leak a chained URL."""
    for text in (str(err), repr(err)):
        assert TOKEN not in text
        assert PATIENT not in text
        assert "patient=" not in text
        assert "?" not in text
        assert err.reason in text
    rendered = "".join(traceback.format_exception(err))
    assert TOKEN not in rendered
    assert PATIENT not in rendered


def fetch_error(client: FhirClient, relative_url: str) -> FhirFetchError:
    with pytest.raises(FhirFetchError) as info:
        client.fetch(relative_url)
    assert_safe(info.value)
    return info.value


def started_server() -> Iterator[HTTPServer]:
    server = HTTPServer(threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


# A second FHIR server on another port, to prove nothing is sent to it.
other_server = pytest.fixture(started_server, name="other_server")
# Tests whose handlers sleep get their own threaded server, so a handler still sleeping after the client
# gave up cannot delay the next test's requests on the shared `httpserver`.
slow_server = pytest.fixture(started_server, name="slow_server")


# --- reads and searches -------------------------------------------------------------------------------


def test_read_returns_the_raw_body_and_asks_for_fhir_json(httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        f"/fhir/Patient/{PATIENT}", method="GET", headers={"Accept": FHIR_JSON}
    ).respond_with_data(PATIENT_BODY, content_type=FHIR_JSON)
    with FhirClient(base_of(httpserver), None) as client:
        assert client.fetch(f"Patient/{PATIENT}") == [PATIENT_BODY]


@pytest.mark.parametrize("second_link_form", ["relative", "absolute-path", "absolute-url"])
def test_search_follows_next_links_in_order(httpserver: HTTPServer, second_link_form: str) -> None:
    second_link = {
        "relative": page_url(2),
        "absolute-path": "/fhir/" + page_url(2),
        "absolute-url": httpserver.url_for("/fhir/" + page_url(2)),
    }[second_link_form]
    pages = [
        bundle(["c1", "c2"], second_link),
        bundle(["c3"], httpserver.url_for("/fhir/" + page_url(3))),
        bundle(["c4"]),
    ]
    for number, body in enumerate(pages, start=1):
        serve_page(httpserver, number, body)
    # max_pages counts the first page too, so exactly max_pages pages is still a complete answer.
    with FhirClient(base_of(httpserver), TOKEN, FetchLimits(max_pages=3)) as client:
        assert client.fetch(SEARCH) == pages
    assert len(httpserver.log) == 3


def test_a_bundle_read_by_id_is_not_paged(httpserver: HTTPServer) -> None:
    body = fhir_body(
        {
            "resourceType": "Bundle",
            "id": "b1",
            "type": "collection",
            "link": [{"relation": "next", "url": "Bundle/b2"}],
        }
    )
    httpserver.expect_request("/fhir/Bundle/b1").respond_with_data(body, content_type=FHIR_JSON)
    with FhirClient(base_of(httpserver), None) as client:
        assert client.fetch("Bundle/b1") == [body]
    assert len(httpserver.log) == 1


@pytest.mark.parametrize(
    ("base_path", "relative_url", "expected_path"),
    [
        ("/fhir", f"Patient/{PATIENT}", f"/fhir/Patient/{PATIENT}"),
        ("/fhir/", f"Patient/{PATIENT}", f"/fhir/Patient/{PATIENT}"),
        ("/fhir", f"/Patient/{PATIENT}", f"/fhir/Patient/{PATIENT}"),
        ("/r4/tenant-a/fhir", f"Patient/{PATIENT}", f"/r4/tenant-a/fhir/Patient/{PATIENT}"),
        ("", f"Patient/{PATIENT}", f"/Patient/{PATIENT}"),
        ("/", f"Patient/{PATIENT}", f"/Patient/{PATIENT}"),
    ],
)
def test_base_url_path_is_kept(
    httpserver: HTTPServer, base_path: str, relative_url: str, expected_path: str
) -> None:
    httpserver.expect_request(expected_path).respond_with_data(PATIENT_BODY, content_type=FHIR_JSON)
    with FhirClient(base_of(httpserver, base_path), None) as client:
        assert client.fetch(relative_url) == [PATIENT_BODY]


def test_relative_next_link_keeps_the_base_path(httpserver: HTTPServer) -> None:
    pages = [bundle(["c1"], page_url(2)), bundle(["c2"])]
    for number, body in enumerate(pages, start=1):
        query = {"patient": PATIENT} if number == 1 else {"patient": PATIENT, "_page": str(number)}
        httpserver.expect_request("/r4/fhir/Condition", query_string=query).respond_with_data(
            body, content_type=FHIR_JSON
        )
    with FhirClient(base_of(httpserver, "/r4/fhir/"), None) as client:
        assert client.fetch(SEARCH) == pages


def test_gzip_body_is_returned_decoded(httpserver: HTTPServer) -> None:
    httpserver.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_data(
        gzip.compress(PATIENT_BODY), content_type=FHIR_JSON, headers={"Content-Encoding": "gzip"}
    )
    with FhirClient(base_of(httpserver), None) as client:
        assert client.fetch(f"Patient/{PATIENT}") == [PATIENT_BODY]


def test_caller_session_is_used(httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        f"/fhir/Patient/{PATIENT}", headers={"X-Probe": "from-caller"}
    ).respond_with_data(PATIENT_BODY, content_type=FHIR_JSON)
    with requests.Session() as session:
        session.headers["X-Probe"] = "from-caller"
        client = FhirClient(base_of(httpserver), None, session=session)
        assert client.fetch(f"Patient/{PATIENT}") == [PATIENT_BODY]


# --- authorization ------------------------------------------------------------------------------------


def serve_protected_patient(server: HTTPServer, seen: list[str | None]) -> None:
    def handler(request: Request) -> Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return Response(status=401)
        return Response(PATIENT_BODY, content_type=FHIR_JSON)

    server.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_handler(handler)


def test_bearer_token_is_sent(httpserver: HTTPServer) -> None:
    seen: list[str | None] = []
    serve_protected_patient(httpserver, seen)
    with FhirClient(base_of(httpserver), TOKEN) as client:
        assert client.fetch(f"Patient/{PATIENT}") == [PATIENT_BODY]
    assert seen == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_wrong_or_missing_token_is_unauthorized(httpserver: HTTPServer, token: str | None) -> None:
    seen: list[str | None] = []
    serve_protected_patient(httpserver, seen)
    with FhirClient(base_of(httpserver), token) as client:
        err = fetch_error(client, f"Patient/{PATIENT}")
    assert (err.reason, err.status, err.resource_type) == ("unauthorized", 401, "Patient")
    assert seen == [None if token is None else f"Bearer {token}"]


@pytest.fixture
def netrc_for_server(httpserver: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {httpserver.host} login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))


@pytest.mark.usefixtures("netrc_for_server")
@pytest.mark.parametrize(("token", "expected_header"), [(None, None), (TOKEN, f"Bearer {TOKEN}")])
def test_only_our_authorization_header_is_sent(
    httpserver: HTTPServer, token: str | None, expected_header: str | None
) -> None:
    # Neither a session-wide header nor a ~/.netrc entry may add or replace credentials.
    seen: list[str | None] = []
    serve_protected_patient(httpserver, seen)
    with requests.Session() as session:
        session.headers["Authorization"] = "Bearer leaked-session-token"
        client = FhirClient(base_of(httpserver), token, session=session)
        if token is None:
            assert fetch_error(client, f"Patient/{PATIENT}").reason == "unauthorized"
        else:
            client.fetch(f"Patient/{PATIENT}")
    assert seen == [expected_header]


# --- HTTP errors and bad bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (403, "forbidden"),
        (404, "not-found"),
        (410, "server-error"),
        (500, "server-error"),
        (503, "server-error"),
        (304, "server-error"),
    ],
)
def test_error_status(httpserver: HTTPServer, status: int, reason: str) -> None:
    httpserver.expect_request("/fhir/Condition").respond_with_data(
        fhir_body({"resourceType": "OperationOutcome", "issue": []}), status=status, content_type=FHIR_JSON
    )
    with FhirClient(base_of(httpserver), TOKEN) as client:
        err = fetch_error(client, SEARCH)
    assert (err.reason, err.status, err.resource_type) == (reason, status, "Condition")


def test_read_answering_404_is_not_found(httpserver: HTTPServer) -> None:
    httpserver.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_data(b"", status=404)
    with FhirClient(base_of(httpserver), TOKEN) as client:
        err = fetch_error(client, f"Patient/{PATIENT}")
    assert (err.reason, err.status) == ("not-found", 404)


def test_redirect_is_not_followed(httpserver: HTTPServer, other_server: HTTPServer) -> None:
    other_server.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_data(PATIENT_BODY)
    httpserver.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_data(
        b"", status=302, headers={"Location": other_server.url_for(f"/fhir/Patient/{PATIENT}")}
    )
    with FhirClient(base_of(httpserver), TOKEN) as client:
        err = fetch_error(client, f"Patient/{PATIENT}")
    assert (err.reason, err.status) == ("server-error", 302)
    assert other_server.log == []


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Service Unavailable</body></html>",
        b"",
        b"[]",
        b'{"id": "no-resource-type"}',
        fhir_body(
            {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
        ),
        fhir_body({"resourceType": "Patient", "id": PATIENT}),  # a search must answer with a Bundle
        fhir_body({"resourceType": "Bundle", "type": "searchset", "link": {"relation": "next"}}),
        fhir_body({"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next"}]}),
    ],
    ids=[
        "html",
        "empty",
        "json-array",
        "no-resourceType",
        "OperationOutcome",
        "not-a-Bundle",
        "link-not-a-list",
        "next-without-url",
    ],
)
def test_invalid_search_response(httpserver: HTTPServer, body: bytes) -> None:
    httpserver.expect_request("/fhir/Condition").respond_with_data(body, content_type=FHIR_JSON)
    with FhirClient(base_of(httpserver), TOKEN) as client:
        err = fetch_error(client, SEARCH)
    assert (err.reason, err.status) == ("invalid-response", 200)


@pytest.mark.parametrize(
    "resource",
    [{"resourceType": "OperationOutcome", "issue": []}, {"resourceType": "Observation", "id": PATIENT}],
)
def test_read_must_return_the_type_asked_for(httpserver: HTTPServer, resource: dict[str, Any]) -> None:
    httpserver.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_data(fhir_body(resource))
    with FhirClient(base_of(httpserver), TOKEN) as client:
        assert fetch_error(client, f"Patient/{PATIENT}").reason == "invalid-response"


# --- paging limits ------------------------------------------------------------------------------------


def test_more_pages_than_max_pages_is_an_error_not_a_truncation(httpserver: HTTPServer) -> None:
    serve_page(httpserver, 1, bundle(["c1"], page_url(2)))
    serve_page(httpserver, 2, bundle(["c2"], page_url(3)))
    serve_page(httpserver, 3, bundle(["c3"]))
    with FhirClient(base_of(httpserver), TOKEN, FetchLimits(max_pages=2)) as client:
        err = fetch_error(client, SEARCH)
    assert err.reason == "page-limit"
    assert [r.args.get("_page") for r, _ in httpserver.log] == [None, "2"]


def test_next_link_to_the_same_page_stops(httpserver: HTTPServer) -> None:
    serve_page(httpserver, 1, bundle(["c1"], SEARCH))
    with FhirClient(base_of(httpserver), TOKEN) as client:
        assert fetch_error(client, SEARCH).reason == "page-limit"
    assert len(httpserver.log) == 1


def test_next_link_back_to_an_earlier_page_stops(httpserver: HTTPServer) -> None:
    # The server quotes "|" where the template did not: still the same page.
    code = "http://snomed.info/sct|3"
    relative_url = f"Condition?patient={PATIENT}&code={code}"
    requoted = relative_url.replace("|", "%7C")
    httpserver.expect_request(
        "/fhir/Condition", query_string={"patient": PATIENT, "code": code}
    ).respond_with_data(bundle(["c1"], page_url(2)), content_type=FHIR_JSON)
    serve_page(httpserver, 2, bundle(["c2"], requoted))
    with FhirClient(base_of(httpserver), TOKEN) as client:
        assert fetch_error(client, relative_url).reason == "page-limit"
    assert len(httpserver.log) == 2


@pytest.mark.parametrize("form", ["other-port", "https-same-port", "other-host-spelling", "bad-port", "userinfo"])
def test_foreign_next_link_is_refused(httpserver: HTTPServer, other_server: HTTPServer, form: str) -> None:
    other_server.expect_request("/fhir/Condition").respond_with_data(
        bundle(["stolen"]), content_type=FHIR_JSON
    )
    foreign = {
        "other-port": other_server.url_for("/fhir/" + page_url(2)),
        "https-same-port": f"https://{httpserver.host}:{httpserver.port}/fhir/{page_url(2)}",
        "other-host-spelling": f"http://127.0.0.2:{httpserver.port}/fhir/{page_url(2)}",
        "bad-port": f"http://{httpserver.host}:99999999/fhir/{page_url(2)}",
        "userinfo": f"http://someone@{httpserver.host}:{httpserver.port}/fhir/{page_url(2)}",
    }[form]
    serve_page(httpserver, 1, bundle(["c1"], foreign))
    with FhirClient(base_of(httpserver), TOKEN) as client:
        err = fetch_error(client, SEARCH)
    assert err.reason == "foreign-next-link"
    assert other_server.log == []
    assert len(httpserver.log) == 1


# --- size and time limits -----------------------------------------------------------------------------


def test_single_page_over_max_bytes(httpserver: HTTPServer) -> None:
    serve_page(httpserver, 1, bundle([f"c{i}" for i in range(500)]))
    with FhirClient(base_of(httpserver), TOKEN, FetchLimits(max_bytes=4096)) as client:
        err = fetch_error(client, SEARCH)
    assert (err.reason, err.status) == ("too-large", 200)


def test_max_bytes_counts_all_pages(httpserver: HTTPServer) -> None:
    first, second = bundle([f"c{i}" for i in range(40)], page_url(2)), bundle([f"d{i}" for i in range(40)])
    serve_page(httpserver, 1, first)
    serve_page(httpserver, 2, second)
    each_fits = max(len(first), len(second))
    with FhirClient(base_of(httpserver), TOKEN, FetchLimits(max_bytes=each_fits)) as client:
        assert fetch_error(client, SEARCH).reason == "too-large"
    with FhirClient(base_of(httpserver), TOKEN, FetchLimits(max_bytes=len(first) + len(second))) as client:
        assert client.fetch(SEARCH) == [first, second]


def test_max_bytes_counts_decoded_bytes(httpserver: HTTPServer) -> None:
    # ~2 KB on the wire, 4 MB once inflated.
    inflated = b'{"resourceType": "Bundle", "type": "searchset", "pad": "' + b" " * 4_000_000 + b'"}'
    httpserver.expect_request("/fhir/Condition").respond_with_data(
        gzip.compress(inflated), content_type=FHIR_JSON, headers={"Content-Encoding": "gzip"}
    )
    with FhirClient(base_of(httpserver), TOKEN, FetchLimits(max_bytes=100_000)) as client:
        assert fetch_error(client, SEARCH).reason == "too-large"


def test_oversized_body_is_not_downloaded(httpserver: HTTPServer) -> None:
    chunk, total_chunks = b" " * 1024, 64 * 1024  # 64 MiB offered, far beyond loopback socket buffers
    produced = 0
    finished = threading.Event()

    def endless() -> Iterator[bytes]:
        nonlocal produced
        try:
            yield b'{"resourceType": "Bundle", "pad": "'
            for _ in range(total_chunks):
                produced += 1
                yield chunk
        finally:
            finished.set()

    httpserver.expect_request("/fhir/Condition").respond_with_handler(
        lambda _request: Response(endless(), content_type=FHIR_JSON)
    )
    with FhirClient(base_of(httpserver), TOKEN, FetchLimits(max_bytes=16 * 1024)) as client:
        assert fetch_error(client, SEARCH).reason == "too-large"
    assert finished.wait(timeout=30), "server still writing after the client gave up"
    assert produced < total_chunks


def sleepy(seconds: float, body: bytes) -> Callable[[Request], Response]:
    def handler(_request: Request) -> Response:
        time.sleep(seconds)
        return Response(body, content_type=FHIR_JSON)

    return handler


def test_read_timeout_waiting_for_headers(slow_server: HTTPServer) -> None:
    slow_server.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_handler(sleepy(0.6, PATIENT_BODY))
    with FhirClient(base_of(slow_server), TOKEN, FetchLimits(read_timeout=0.1)) as client:
        err = fetch_error(client, f"Patient/{PATIENT}")
    assert (err.reason, err.status) == ("timeout", None)


def test_read_timeout_in_the_middle_of_the_body(slow_server: HTTPServer) -> None:
    def stalls() -> Iterator[bytes]:
        yield b'{"resourceType": "Patient", '
        time.sleep(0.6)
        yield b'"id": "x"}'

    slow_server.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_handler(
        lambda _request: Response(stalls(), content_type=FHIR_JSON)
    )
    with FhirClient(base_of(slow_server), TOKEN, FetchLimits(read_timeout=0.1)) as client:
        err = fetch_error(client, f"Patient/{PATIENT}")
    assert (err.reason, err.status) == ("timeout", 200)


def test_total_seconds_bounds_the_whole_search(slow_server: HTTPServer) -> None:
    # Each page alone is well inside read_timeout; together they exceed total_seconds.
    for number in (1, 2, 3):
        query = {"patient": PATIENT} if number == 1 else {"patient": PATIENT, "_page": str(number)}
        slow_server.expect_request("/fhir/Condition", query_string=query).respond_with_handler(
            sleepy(0.3, bundle([f"c{number}"], page_url(number + 1)))
        )
    limits = FetchLimits(read_timeout=5.0, total_seconds=0.5)
    with FhirClient(base_of(slow_server), TOKEN, limits) as client:
        assert fetch_error(client, SEARCH).reason == "timeout"
    assert len(slow_server.log) < 3


def test_last_page_gets_only_what_is_left_of_total_seconds(slow_server: HTTPServer) -> None:
    serve_slow = slow_server.expect_request
    serve_slow("/fhir/Condition", query_string={"patient": PATIENT}).respond_with_handler(
        sleepy(0.1, bundle(["c1"], page_url(2)))
    )
    serve_slow("/fhir/Condition", query_string={"patient": PATIENT, "_page": "2"}).respond_with_handler(
        sleepy(1.0, bundle(["c2"]))
    )
    limits = FetchLimits(read_timeout=5.0, total_seconds=0.4)
    with FhirClient(base_of(slow_server), TOKEN, limits) as client:
        assert fetch_error(client, SEARCH).reason == "timeout"


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_slow_drip_body_hits_total_seconds(slow_server: HTTPServer, framing: str) -> None:
    # Every byte arrives well within read_timeout; the whole body does not arrive within total_seconds.
    parts = [b'{"resourceType": "Patient", "id": "x"', *([b" "] * 10), b"}"]
    sent = 0
    finished = threading.Event()

    def drips() -> Iterator[bytes]:
        nonlocal sent
        try:
            for part in parts:
                yield part
                sent += 1
                time.sleep(0.15)
        finally:
            finished.set()

    headers = {"Content-Length": str(sum(map(len, parts)))} if framing == "content-length" else {}
    slow_server.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_handler(
        lambda _request: Response(drips(), content_type=FHIR_JSON, headers=headers)
    )
    limits = FetchLimits(read_timeout=1.0, total_seconds=0.4)
    with FhirClient(base_of(slow_server), TOKEN, limits) as client:
        err = fetch_error(client, f"Patient/{PATIENT}")
    assert (err.reason, err.status) == ("timeout", 200)
    # The client hung up mid-body instead of waiting for the rest.
    assert finished.wait(timeout=10)
    assert sent < len(parts)


def test_connection_refused_is_unreachable() -> None:
    with socket.socket() as reserved:  # bound but not listening: connects are refused, port stays ours
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        with FhirClient(f"http://127.0.0.1:{port}/fhir", TOKEN) as client:
            err = fetch_error(client, SEARCH)
    assert (err.reason, err.status, err.resource_type) == ("unreachable", None, "Condition")


def test_connection_closed_mid_body_is_unreachable(httpserver: HTTPServer) -> None:
    def truncated() -> Iterator[bytes]:
        yield PATIENT_BODY[:20]

    httpserver.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_handler(
        lambda _request: Response(
            truncated(),
            content_type=FHIR_JSON,
            headers={"Content-Length": str(len(PATIENT_BODY)), "Connection": "close"},
        )
    )
    with FhirClient(base_of(httpserver), TOKEN, FetchLimits(read_timeout=2.0)) as client:
        err = fetch_error(client, f"Patient/{PATIENT}")
    assert (err.reason, err.status) == ("unreachable", 200)


# --- argument checking --------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["ftp://h/fhir", "h/fhir", "http:///fhir", "http://h/fhir?x=1"])
def test_bad_base_url_is_rejected(base_url: str) -> None:
    with pytest.raises(ValueError):
        FhirClient(base_url, None)


@pytest.mark.parametrize(
    "relative_url",
    [
        "",
        f"patient/{PATIENT}",
        "Patient/",
        f"Patient/{PATIENT}/_history/2",
        "Patient/..",
        f"http://evil.example/Patient/{PATIENT}",
        f"Patient/{PATIENT}{'x' * 64}",
    ],
)
def test_relative_url_outside_the_prefetch_subset_is_rejected(relative_url: str) -> None:
    with FhirClient("http://127.0.0.1:9/fhir", None) as client, pytest.raises(ValueError) as info:
        client.fetch(relative_url)
    assert PATIENT not in str(info.value)


@pytest.mark.parametrize("other_name", ["localhost", "[::1]"])
def test_next_link_with_another_loopback_name_is_refused(httpserver: HTTPServer, other_name: str) -> None:
    """127.0.0.1, localhost and [::1] on one port can be different listeners: a next link naming another of
    them is another origin, and the token is not sent there."""
    port = httpserver.port
    first = {"resourceType": "Bundle", "type": "searchset", "entry": [],
             "link": [{"relation": "next", "url": f"http://{other_name}:{port}/fhir/Condition?page=2"}]}
    httpserver.expect_request("/fhir/Condition", query_string="patient=p1").respond_with_json(first)
    with FhirClient(f"http://127.0.0.1:{port}/fhir", "tok") as client:
        err = fetch_error(client, "Condition?patient=p1")
    assert err.reason == "foreign-next-link"
    assert len(httpserver.log) == 1


# --- one budget for a hook call ---------------------------------------------------------------------------


def test_one_budget_is_shared_by_every_fetch_of_a_call(httpserver: HTTPServer) -> None:
    """Each answer fits alone; together they are over the call's budget, so the second fetch fails."""
    body = bundle([f"c{i}" for i in range(100)])
    httpserver.expect_request("/fhir/Condition").respond_with_data(body, content_type=FHIR_JSON)
    budget = FetchBudget(len(body) * 3 // 2, 10.0)
    with FhirClient(base_of(httpserver), TOKEN) as first, FhirClient(base_of(httpserver), TOKEN) as second:
        assert first.fetch(SEARCH, budget) == [body]
        assert second.fetch(SEARCH) == [body]  # with a budget of its own it fits
        with pytest.raises(FhirFetchError) as info:
            second.fetch(SEARCH, budget)
    assert info.value.reason == "too-large"


def test_a_spent_budget_stops_the_other_fetches_at_once(httpserver: HTTPServer) -> None:
    small = fhir_body({"resourceType": "Patient", "id": PATIENT})
    httpserver.expect_request("/fhir/Condition").respond_with_data(bundle(["c"] * 500), content_type=FHIR_JSON)
    httpserver.expect_request(f"/fhir/Patient/{PATIENT}").respond_with_data(small, content_type=FHIR_JSON)
    budget = FetchBudget(4096, 10.0)
    with FhirClient(base_of(httpserver), TOKEN) as client:
        with pytest.raises(FhirFetchError):
            client.fetch(SEARCH, budget)
        # The Patient alone would fit in what was left: the call's budget is spent, so it fails too.
        with pytest.raises(FhirFetchError) as info:
            client.fetch(f"Patient/{PATIENT}", budget)
    assert info.value.reason == "too-large"


def test_a_declared_length_over_the_budget_is_too_large_and_spends_it(httpserver: HTTPServer) -> None:
    body = bundle([f"c{i}" for i in range(200)])
    httpserver.expect_request("/fhir/Condition").respond_with_data(body, content_type=FHIR_JSON)
    budget = FetchBudget(len(body) - 1, 10.0)
    with FhirClient(base_of(httpserver), TOKEN) as client, pytest.raises(FhirFetchError) as info:
        client.fetch(SEARCH, budget)
    assert (info.value.reason, budget.bytes_left) == ("too-large", -1)


def test_pages_are_handed_over_one_at_a_time(httpserver: HTTPServer) -> None:
    pages = [bundle(["c1"], page_url(2)), bundle(["c2"])]
    for number, body in enumerate(pages, start=1):
        serve_page(httpserver, number, body)
    with FhirClient(base_of(httpserver), TOKEN) as client:
        iterator = client.pages(SEARCH)
        assert bytes(next(iterator)) == pages[0]
        assert len(httpserver.log) == 1  # the second page is fetched only when asked for
        assert bytes(next(iterator)) == pages[1]
        assert next(iterator, None) is None


def test_status_line_and_headers_dripping_hit_total_seconds() -> None:
    """Each byte of the head arrives well within read_timeout, the whole head not within total_seconds: the
    per-read timeout alone would wait for it as long as the server drips."""
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 60 + b"\r\n\r\n"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sent = 0
    done = threading.Event()

    def drip() -> None:
        nonlocal sent
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            try:
                for byte in head:  # bounded: ~80 bytes, 8 s at most
                    connection.sendall(bytes([byte]))
                    sent += 1
                    time.sleep(0.1)
            except OSError:
                pass  # the client hung up
        done.set()

    threading.Thread(target=drip, daemon=True).start()
    limits = FetchLimits(read_timeout=1.0, total_seconds=0.5)
    started = time.monotonic()
    with listener, FhirClient(f"http://127.0.0.1:{listener.getsockname()[1]}/fhir", TOKEN, limits) as client:
        err = fetch_error(client, f"Patient/{PATIENT}")
        elapsed = time.monotonic() - started
    assert err.reason == "timeout"
    assert elapsed < 2.0, elapsed
    assert done.wait(timeout=10)
    assert sent < len(head)
