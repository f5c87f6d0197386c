"""A stand-in FHIR server on loopback for trying the fhirServer fallback: serves one Bundle's resources.

    .venv/bin/python -m examples.fhir_server examples/fhir-server-bundle.json --port 8090 --token example-token

Answers `Type/id` reads and `Type?patient=...` searches (other search parameters are ignored) as searchset
Bundles of at most 2 entries per page with `next` links, so paging is exercised too. With --token, any
request without `Authorization: Bearer <token>` gets 401. For trying things out, not for production.
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

PAGE = 2


def make_handler(resources: list[dict[str, Any]], token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = orjson.dumps(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                self._send(401, {"resourceType": "OperationOutcome",
                                 "issue": [{"severity": "error", "code": "login", "diagnostics": "bad token"}]})
                return
            url = urlsplit(self.path)
            parts = url.path.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2][:1].isupper():  # a read: /fhir/Type/id
                kind, rid = parts[-2], parts[-1]
                found = [r for r in resources if r["resourceType"] == kind and r.get("id") == rid]
                if found:
                    self._send(200, found[0])
                else:
                    self._send(404, {"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "not-found", "diagnostics": f"{kind}/{rid} not found"}]})
                return
            kind = parts[-1]
            offset = int(parse_qs(url.query).get("_offset", ["0"])[0])
            matches = [r for r in resources if r["resourceType"] == kind]
            bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                                      "entry": [{"resource": r} for r in matches[offset:offset + PAGE]]}
            if offset + PAGE < len(matches):
                bundle["link"] = [{"relation": "next", "url": f"{url.path}?{url.query}&_offset={offset + PAGE}"}]
            self._send(200, bundle)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the queries hold patient ids

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token")
    args = parser.parse_args()
    with open(args.bundle, "rb") as handle:
        bundle = orjson.loads(handle.read())
    resources = [entry["resource"] for entry in bundle.get("entry", [])]
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(resources, args.token))
    print(f"serving {len(resources)} resources at http://127.0.0.1:{args.port}/fhir")
    server.serve_forever()


if __name__ == "__main__":
    main()
