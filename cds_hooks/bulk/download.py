"""Output files to disk: streamed (never whole in memory), bounded per file and in total, resumable.

`dest` holds, besides the data files:
- `manifest.json`: the server's completion manifest, byte for byte (its `transactionTime` is the next `--since`);
- `.bulk-export.json`: what this client knows: the kick-off, the status URL, and per file whether it is complete,
  so a rerun fetches only what is missing (a partial file resumes with an HTTP Range request, else is refetched);
- `errors/`: the manifest's `error` files (OperationOutcome NDJSON) as `*.ndjson.txt`, apart from the data.

A file is stored as the server sent it: a gzip `Content-Encoding` is kept (so Range offsets stay those of the
bytes on disk) and the file is named `.ndjson.gz`; anything else is `.ndjson`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests
import urllib3.exceptions

from cds_hooks.bulk.export import files_of
from cds_hooks.bulk.http import (
    BulkExportError,
    TransientError,
    Transport,
    failure_message,
    read_bounded,
    sleep_until,
)
from cds_hooks.settings import Settings

__all__ = ["Budget", "ExportState", "FileRecord", "Stopped", "fetch_file"]

_log = logging.getLogger("mscc_alert.bulk")

STATE_FILE = ".bulk-export.json"
MANIFEST_FILE = "manifest.json"
ERRORS_DIR = "errors"
_CHUNK_BYTES = 256 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


@dataclass(slots=True)
class FileRecord:
    url: str
    kind: str  # "output" or "error"
    stem: str  # "Condition.002" or "errors/OperationOutcome.001": the name before its extension
    complete: bool = False
    file: str | None = None  # the final name, relative to dest, once complete
    bytes: int = 0
    validator: str | None = None  # strong ETag or Last-Modified of the partial file, for If-Range
    encoding: str = ""  # Content-Encoding the partial file was received with ("" or "gzip")


@dataclass(slots=True)
class ExportState:
    kickoff: str
    since: str | None
    status_url: str | None = None
    manifest: bool = False
    cleaned_up: bool = False
    files: list[FileRecord] = field(default_factory=list)

    @staticmethod
    def open(dest: Path, kickoff: str, since: str | None) -> ExportState:
        """The state of this export in `dest`, or a new one; an error if `dest` holds another export's files."""
        path = dest / STATE_FILE
        if path.exists():
            try:
                raw: Any = orjson.loads(path.read_bytes())
                state = ExportState(raw["kickoff"], raw["since"], raw["status_url"], raw["manifest"],
                                    raw["cleaned_up"], [FileRecord(**f) for f in raw["files"]])
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise BulkExportError(f"{path} is unreadable ({type(exc).__name__}): use an empty folder") from None
            if (state.kickoff, state.since) != (kickoff, since):
                raise BulkExportError(f"{dest} holds the files of another export (another kick-off URL or --since):"
                                      " use an empty folder")
            return state
        if any(p.name.endswith((".ndjson", ".ndjson.gz")) or p.name == MANIFEST_FILE for p in dest.iterdir()):
            raise BulkExportError(f"{dest} already holds NDJSON files this client did not download: use an "
                                  "empty folder")
        return ExportState(kickoff, since)

    def save(self, dest: Path) -> None:
        _write_atomically(dest / STATE_FILE, orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))

    def plan(self, manifest: object) -> None:
        """One record per manifest file, named by its type and rank (names are for people; the sweep reads
        `resourceType`). Done once: the manifest of an export never changes."""
        if self.files:
            return
        counts: dict[str, int] = {}
        for kind in ("output", "error"):
            for item in files_of(manifest, kind):
                resource_type = item.get("type")
                if not isinstance(resource_type, str) or not _RESOURCE_TYPE.fullmatch(resource_type):
                    resource_type = "OperationOutcome" if kind == "error" else "Resource"
                counts[kind + resource_type] = rank = counts.get(kind + resource_type, 0) + 1
                stem = f"{resource_type}.{rank:03d}"
                url = item["url"]
                assert isinstance(url, str)
                self.files.append(FileRecord(url, kind, f"{ERRORS_DIR}/{stem}" if kind == "error" else stem))


def write_manifest(dest: Path, raw: bytes) -> None:
    _write_atomically(dest / MANIFEST_FILE, raw)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Budget:
    """Bytes on disk for the whole export (MSCC_ALERT_BULK_MAX_TOTAL_BYTES), complete files included; shared by
    the download threads."""

    def __init__(self, limit: int, used: int) -> None:
        self.limit = limit
        self.used = used
        self._lock = threading.Lock()

    def take(self, size: int) -> None:
        with self._lock:
            self.used += size
            if self.used > self.limit:
                raise BulkExportError(f"the export is larger than MSCC_ALERT_BULK_MAX_TOTAL_BYTES ({self.limit} "
                                      "bytes)")

    def give_back(self, size: int) -> None:
        with self._lock:
            self.used -= size


class Stopped(BulkExportError):
    """Another download failed, or Ctrl-C: this one stops at its next chunk (its partial file is kept)."""


def fetch_file(transport: Transport, record: FileRecord, dest: Path, *, settings: Settings, budget: Budget,
               with_token: bool, save: Callable[[], None], stop: threading.Event) -> None:
    """Download one manifest file into `dest` (resuming its partial file), then mark it complete."""
    part = dest / f"{record.stem}.part"
    part.parent.mkdir(exist_ok=True)
    what = f"download of {record.stem}"
    failures = 0
    while True:
        if stop.is_set():
            raise Stopped(f"the {what} was stopped")
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Accept": "application/fhir+ndjson", "Accept-Encoding": "gzip"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if record.validator:
                headers["If-Range"] = record.validator
        try:
            response = transport.send("GET", record.url, what=what, headers=headers, with_token=with_token)
        except TransientError as exc:
            failures = _retry(failures, settings, exc)
            continue
        with response:
            status = response.status_code
            if status == 416 and offset and _unsatisfied_length(response) == offset:
                break  # the partial file was already whole when the last run stopped
            if status == 206 and offset and _range_start(response) == offset and _encoding(response, what) == \
                    record.encoding:
                mode = "ab"
            elif status == 200:
                mode = "wb"
            elif status in (206, 416):
                # A range we cannot append (another start, encoding or file): fetch the whole file again.
                response.close()
                budget.give_back(offset)
                part.unlink(missing_ok=True)
                record.validator = None
                failures = _retry(failures, settings, TransientError(f"the {what} answered an unusable range"))
                continue
            else:
                body = _error_body(response, what)
                if status == 429 or status >= 500:
                    failures = _retry(failures, settings, TransientError(failure_message(f"the {what}", status, body)))
                    continue
                if status in (404, 410):
                    raise BulkExportError(failure_message(f"the {what}", status, body) + ": the server no longer "
                                          "has this export's files; use an empty folder to export again")
                raise BulkExportError(failure_message(f"the {what}", status, body))
            if mode == "wb":
                budget.give_back(offset)
                offset = 0
                record.encoding = _encoding(response, what)
                record.validator = _validator(response)
                save()
            try:
                _stream(response, part, mode, offset, settings=settings, budget=budget, what=what, stop=stop)
            except TransientError as exc:
                failures = _retry(failures, settings, exc)  # the next round resumes from what arrived
                continue
        break
    _complete(record, part, dest, save)


def _stream(response: requests.Response, part: Path, mode: str, offset: int, *, settings: Settings,
            budget: Budget, what: str, stop: threading.Event) -> None:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and offset + int(declared) > settings.bulk_max_file_bytes:
        raise BulkExportError(f"the {what}: the file is larger than MSCC_ALERT_BULK_MAX_FILE_BYTES "
                              f"({settings.bulk_max_file_bytes} bytes)")
    size = offset
    with part.open(mode) as out:
        while True:
            try:
                chunk = response.raw.read(_CHUNK_BYTES, decode_content=False)
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
                raise TransientError(f"the {what} was cut off after {size} bytes") from None
            if not chunk:
                return
            if stop.is_set():
                raise Stopped(f"the {what} was stopped")
            size += len(chunk)
            if size > settings.bulk_max_file_bytes:
                raise BulkExportError(f"the {what}: the file is larger than MSCC_ALERT_BULK_MAX_FILE_BYTES "
                                      f"({settings.bulk_max_file_bytes} bytes)")
            budget.take(len(chunk))
            out.write(chunk)


def _complete(record: FileRecord, part: Path, dest: Path, save: Callable[[], None]) -> None:
    with part.open("rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    if record.kind == "error":  # kept apart from data and unlike it: the sweep reads *.ndjson(.gz)
        suffix = ".ndjson.txt.gz" if gzipped else ".ndjson.txt"
    else:
        suffix = ".ndjson.gz" if gzipped else ".ndjson"
    name = record.stem + suffix
    os.replace(part, dest / name)
    record.file, record.bytes, record.complete = name, (dest / name).stat().st_size, True
    record.validator = None
    save()


def is_complete(record: FileRecord, dest: Path) -> bool:
    """Complete and still on disk at its recorded size (a file removed or cut since is fetched again)."""
    if not record.complete or record.file is None:
        return False
    try:
        return (dest / record.file).stat().st_size == record.bytes
    except OSError:
        return False


def _retry(failures: int, settings: Settings, error: TransientError) -> int:
    failures += 1
    if failures > settings.bulk_retries:
        raise BulkExportError(f"{error} (gave up after {failures} attempts, MSCC_ALERT_BULK_RETRIES)")
    _log.warning("bulk download: transient failure, retry %d of %d", failures, settings.bulk_retries)
    delay = min(settings.bulk_poll_min_seconds * 2 ** (failures - 1), settings.bulk_poll_max_seconds)
    sleep_until(delay, float("inf"))
    return failures


def _encoding(response: requests.Response, what: str) -> str:
    encoding = (response.headers.get("Content-Encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return ""
    if encoding == "gzip":
        return "gzip"
    raise BulkExportError(f"the {what} came with Content-Encoding {encoding[:20]!r}; only gzip is asked for")


def _validator(response: requests.Response) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator (RFC 9110 §13.1.5)
        return etag
    return response.headers.get("Last-Modified")


def _range_start(response: requests.Response) -> int | None:
    match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
    return int(match.group(1)) if match else None


def _unsatisfied_length(response: requests.Response) -> int | None:
    match = _UNSATISFIED_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
    return int(match.group(1)) if match else None


def _error_body(response: requests.Response, what: str) -> bytes:
    with contextlib.suppress(BulkExportError):
        return read_bounded(response, 1024 * 1024, what)
    return b""
