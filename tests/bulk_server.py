"""A Bulk Data server on loopback that follows the HL7 Bulk Data Access IG 2.0.0 (export.md, authorization.md),
for the client's tests: real HTTP, real JWT verification, real Range requests.

- `GET {base}/$export`, `{base}/Patient/$export`, `{base}/Group/{id}/$export`: 202 + Content-Location, or the
  configured kick-off error (an OperationOutcome), or a 400 when `_typeFilter` is sent to a server set to refuse it;
- `GET /jobs/{id}`: 202 with Retry-After and X-Progress for the first `polls_before_done` polls (or the
  configured failures), then the manifest; `DELETE /jobs/{id}` cancels (then 404);
- `GET /files/{name}`: the file, with Range support (206, If-Range against its ETag) unless switched off; a name
  in `cut_once` is cut off halfway the first time it is asked for;
- `GET {base}/.well-known/smart-configuration` and `POST /auth/token`: SMART Backend Services, the client
  assertion verified with the public key given (signature, iss = sub = client id, aud = token URL, exp within
  five minutes, jti never seen before, kid);
- `GET {base}/Patient/{id}` and `GET {base}/{Type}?patient={id}` (the hook's prefetch templates, as the delta
  sweep fetches them): the resources of `records` (default: every resource of the export files), a search as
  searchset pages of `page_size` entries with `next` links; search parameters other than `patient` are ignored
  (the service's intake keeps what the rules read). A patient in `failing_patients` gets a 500 for each.
Every request is recorded (method, path, query, headers) so tests can assert what the client sent.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class FakeBulkServer:
    # name -> bytes as stored and served (gzip bytes for a .ndjson.gz name); type per name in `types`
    files: dict[str, bytes] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    errors: dict[str, bytes] = field(default_factory=dict)  # error files (OperationOutcome NDJSON)
    gzip_transfer: set[str] = field(default_factory=set)  # served with Content-Encoding: gzip
    polls_before_done: int = 2
    retry_after: str = "0"
    poll_failures: list[tuple[int, dict[str, Any] | None]] = field(default_factory=list)  # served before progress
    kickoff_error: tuple[int, dict[str, Any]] | None = None
    refuse_type_filter: bool = False
    ranges: bool = True
    cut_once: set[str] = field(default_factory=set)
    requires_token: bool = False
    public_key: Any = None  # with it, every FHIR and file request needs a bearer token from /auth/token
    client_id: str = "mscc-alert-test"
    key_id: str = "test-key-1"
    token_lifetime: int = 300
    file_server: FakeBulkServer | None = None  # output files served by another origin
    file_host: str = "127.0.0.1"  # host name written in the manifest's file URLs
    records: list[dict[str, Any]] | None = None  # what the FHIR reads and searches serve; None: the files'
    failing_patients: set[str] = field(default_factory=set)  # their reads and searches get 500
    page_size: int = 2
    next_host: str = "127.0.0.1"  # host name written in search pages' next links
    revoke_at_first_search: bool = False  # every token issued so far is revoked when the first read or search comes

    def __post_init__(self) -> None:
        self.seen: list[Seen] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, float] = {}  # token -> expiry (time.time())
        self.jtis: set[str] = set()
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (header, claims) verified
        self.token_errors: list[str] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.base = self.origin + "/fhir"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> FakeBulkServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeBulkServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def token_url(self) -> str:
        return self.origin + "/auth/token"

    def requests_to(self, prefix: str, method: str = "GET") -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(prefix) and s.method == method]

    def fhir_requests(self) -> list[Seen]:
        """The reads and searches of the FHIR API (not the export, its jobs, files or SMART endpoints)."""
        return [s for s in self.seen if s.path.startswith("/fhir/") and not s.path.endswith("$export")
                and "/.well-known/" not in s.path]

    def fetched_patients(self) -> set[str]:
        """The patients whose records were read or searched."""
        found = set()
        for s in self.fhir_requests():
            if s.path.startswith("/fhir/Patient/"):
                found.add(s.path.removeprefix("/fhir/Patient/"))
            found.update(s.query.get("patient", []))
        return found

    def stored_resources(self) -> list[dict[str, Any]]:
        if self.records is not None:
            return self.records
        import gzip

        resources = []
        for name, data in self.files.items():
            text = gzip.decompress(data) if name.endswith(".gz") else data
            resources += [orjson.loads(line) for line in text.splitlines() if line.strip()]
        return resources

    def kickoffs(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("$export")]

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def manifest(self, request_url: str) -> dict[str, Any]:
        server = self.file_server or self
        file_origin = f"http://{self.file_host}:{server.port}"
        return {
            "transactionTime": "2026-11-30T12:00:00Z",
            "request": request_url,
            "requiresAccessToken": self.requires_token,
            "output": [{"type": server.types.get(n, "Resource"), "url": f"{file_origin}/files/{n}", "count": 0}
                       for n in server.files],
            "error": [{"type": "OperationOutcome", "url": f"{file_origin}/files/{n}"} for n in server.errors],
        }


def outcome(text: str, code: str = "processing") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def _handler(server: FakeBulkServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _record(self) -> tuple[str, dict[str, list[str]]]:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True)
            with server.lock:
                server.seen.append(Seen(self.command, parts.path, query,
                                        {k.lower(): v for k, v in self.headers.items()}))
            return parts.path, query

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/fhir+json") -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if body:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, document: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, orjson.dumps(document), headers)

        def _authorised(self) -> bool:
            if server.public_key is None:
                return True
            header = self.headers.get("Authorization") or ""
            token = header.removeprefix("Bearer ")
            with server.lock:
                expiry = server.tokens.get(token)
            if header.startswith("Bearer ") and expiry is not None and expiry > time.time():
                return True
            self._json(401, outcome("a valid access token is required", "login"),
                       {"WWW-Authenticate": "Bearer"})
            return False

        def do_GET(self) -> None:
            path, query = self._record()
            if path == "/fhir/.well-known/smart-configuration":
                self._json(200, {"token_endpoint": server.token_url,
                                 "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                                 "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384"],
                                 "scopes_supported": ["system/*.read"]})
            elif path.endswith("$export"):
                self._kickoff(path, query)
            elif path.startswith("/jobs/"):
                self._status(path.removeprefix("/jobs/"))
            elif path.startswith("/files/"):
                self._file(path.removeprefix("/files/"))
            elif path.startswith("/fhir/"):
                self._fhir(path.removeprefix("/fhir/"), query)
            else:
                self._json(404, outcome("not found", "not-found"))

        def do_DELETE(self) -> None:
            path, _ = self._record()
            job = server.jobs.get(path.removeprefix("/jobs/"))
            if not path.startswith("/jobs/") or job is None or job["deleted"]:
                self._json(404, outcome("no such export", "not-found"))
            elif self._authorised():
                job["deleted"] = True
                self._send(202)

        def do_POST(self) -> None:
            path, _ = self._record()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if path != "/auth/token":
                self._json(404, outcome("not found", "not-found"))
                return
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            problem = self._check_assertion(form)
            if problem:
                with server.lock:
                    server.token_errors.append(problem)
                self._json(400, {"error": "invalid_client", "error_description": problem})
                return
            token = secrets.token_urlsafe(16)
            with server.lock:
                server.tokens[token] = time.time() + server.token_lifetime
            self._json(200, {"access_token": token, "token_type": "bearer", "expires_in": server.token_lifetime,
                             "scope": form.get("scope", "")})

        def _check_assertion(self, form: dict[str, str]) -> str | None:
            if form.get("grant_type") != "client_credentials":
                return "grant_type must be client_credentials"
            if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                return "wrong client_assertion_type"
            assertion = form.get("client_assertion", "")
            try:
                header = jwt.get_unverified_header(assertion)
                claims = jwt.decode(assertion, server.public_key, algorithms=["ES384", "RS384"],
                                    audience=server.token_url, issuer=server.client_id,
                                    options={"require": ["iss", "sub", "aud", "exp", "jti"]})
            except jwt.PyJWTError as exc:
                return f"assertion rejected: {type(exc).__name__}"
            if header.get("kid") != server.key_id or header.get("typ") != "JWT":
                return "unknown kid or typ"
            if claims["sub"] != server.client_id:
                return "sub must be the client id"
            if claims["exp"] > time.time() + 300:
                return "exp more than five minutes ahead"
            with server.lock:
                if claims["jti"] in server.jtis:
                    return "jti replayed"
                server.jtis.add(claims["jti"])
                server.assertions.append((header, claims))
            return None

        def _kickoff(self, path: str, query: dict[str, list[str]]) -> None:
            if not self._authorised():
                return
            if self.headers.get("Prefer") != "respond-async" or self.headers.get("Accept") != "application/fhir+json":
                self._json(400, outcome("Prefer: respond-async and Accept: application/fhir+json are required"))
                return
            if server.refuse_type_filter and "_typeFilter" in query:
                self._json(400, outcome("The _typeFilter parameter is not supported by this server", "not-supported"))
                return
            if server.kickoff_error is not None:
                self._json(*server.kickoff_error)
                return
            job = secrets.token_hex(8)
            server.jobs[job] = {"polls": 0, "deleted": False, "request": server.base + path}
            self._send(202, headers={"Content-Location": f"{server.origin}/jobs/{job}"})

        def _status(self, job_id: str) -> None:
            job = server.jobs.get(job_id)
            if job is None or job["deleted"]:
                self._json(404, outcome("no such export", "not-found"))
                return
            if not self._authorised():
                return
            with server.lock:
                failure = server.poll_failures.pop(0) if server.poll_failures else None
            if failure is not None:
                status, document = failure
                if document is None:
                    self._send(status, b"Bad Gateway", content_type="text/plain")
                else:
                    self._json(status, document, {"Retry-After": "0"})
                return
            job["polls"] += 1
            if job["polls"] <= server.polls_before_done:
                self._send(202, headers={"Retry-After": server.retry_after,
                                         "X-Progress": f"{job['polls']} of {server.polls_before_done} steps"})
                return
            self._send(200, orjson.dumps(server.manifest(job["request"])), content_type="application/json")

        def _fhir(self, path: str, query: dict[str, list[str]]) -> None:
            with server.lock:
                if server.revoke_at_first_search:
                    server.revoke_at_first_search = False
                    server.tokens.clear()
            if not self._authorised():
                return
            segments = path.split("/")
            patient = segments[1] if len(segments) == 2 and segments[0] == "Patient" else \
                (query.get("patient") or [""])[0]
            if patient in server.failing_patients:
                self._json(500, outcome("the database is unavailable", "exception"))
                return
            resources = server.stored_resources()
            if len(segments) == 2:
                found = [r for r in resources if r["resourceType"] == segments[0] and r.get("id") == segments[1]]
                if found:
                    self._json(200, found[0])
                else:
                    self._json(404, outcome(f"{path} is not known", "not-found"))
                return
            if len(segments) != 1 or not patient:
                self._json(400, outcome("only Type?patient=id searches are supported", "not-supported"))
                return

            def about(resource: dict[str, Any]) -> bool:
                reference = (resource.get("subject") or resource.get("patient") or {}).get("reference")
                return resource["resourceType"] == segments[0] and reference == f"Patient/{patient}"

            matches = [r for r in resources if about(r)]
            offset = int((query.get("_offset") or ["0"])[0])
            bundle: dict[str, Any] = {
                "resourceType": "Bundle", "type": "searchset", "total": len(matches),
                "entry": [{"resource": r} for r in matches[offset:offset + server.page_size]]}
            if offset + server.page_size < len(matches):
                rest = "&".join(f"{k}={v}" for k, values in query.items() if k != "_offset" for v in values)
                bundle["link"] = [{"relation": "next",
                                   "url": f"http://{server.next_host}:{server.port}/fhir/{path}?{rest}"
                                          f"&_offset={offset + server.page_size}"}]
            self._json(200, bundle)

        def _file(self, name: str) -> None:
            data = server.files.get(name, server.errors.get(name))
            if data is None:
                self._json(404, outcome("no such file", "not-found"))
                return
            if server.requires_token and not self._authorised():
                return
            headers = {"ETag": '"' + hashlib.sha256(data).hexdigest()[:16] + '"', "Accept-Ranges": "bytes"}
            if name in server.gzip_transfer:
                import gzip

                data = gzip.compress(data, mtime=0)
                headers["Content-Encoding"] = "gzip"
            start = 0
            wanted = self.headers.get("Range")
            if server.ranges and wanted and self.headers.get("If-Range", headers["ETag"]) == headers["ETag"]:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self._send(416, headers={"Content-Range": f"bytes */{len(data)}"})
                    return
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            with server.lock:
                cut = name in server.cut_once
                server.cut_once.discard(name)
            self.send_response(206 if start else 200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/fhir+ndjson")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut:  # half the body, then the connection drops
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler
