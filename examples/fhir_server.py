"""A stand-in FHIR server on loopback for trying the fhirServer fallback: serves one Bundle's resources.

    .venv/bin/python -m examples.generate                          # first: writes examples/generated/
    .venv/bin/python -m examples.fhir_server --token example-token  # serves examples/generated/fhir-server-bundle.json

Answers `Type/id` reads and `Type?patient=...` searches (other search parameters are ignored) as searchset
Bundles of at most 2 entries per page with `next` links, so paging is exercised too. With --token, any
request without `Authorization: Bearer <token>` gets 401. For trying things out, not for production.
"""

from __future__ import annotations

import argparse
import errno
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

PAGE = 2
DEFAULT_BUNDLE = "examples/generated/fhir-server-bundle.json"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", nargs="?", default=DEFAULT_BUNDLE,
                        help="a FHIR Bundle whose resources to serve (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8090, help="loopback port to listen on (default: %(default)s)")
    parser.add_argument("--token", help="require Authorization: Bearer TOKEN (default: no token needed)")
    args = parser.parse_args(argv)
    try:
        with open(args.bundle, "rb") as handle:
            bundle = orjson.loads(handle.read())
    except FileNotFoundError:
        print(f"fhir_server: {args.bundle} not found; run `.venv/bin/python -m examples.generate` first",
              file=sys.stderr)
        return 2
    resources = [entry["resource"] for entry in bundle.get("entry", [])]
    try:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(resources, args.token))
    except OSError as exc:
        why = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        print(f"fhir_server: cannot listen on 127.0.0.1:{args.port}: {why} (choose another --port)", file=sys.stderr)
        return 2
    print(f"serving {len(resources)} resources at http://127.0.0.1:{args.port}/fhir"
          f"{' (bearer token required)' if args.token else ''}; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
