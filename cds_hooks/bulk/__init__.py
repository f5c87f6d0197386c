"""Bulk Data Access client (HL7 FHIR Bulk Data Access IG 2.0.0, https://hl7.org/fhir/uv/bulkdata/): a kick-off
URL in, a folder of NDJSON files out, for `mscc-alert sweep`.

    kick-off (202 + Content-Location)  ->  poll (Retry-After, X-Progress)  ->  manifest  ->  each file  ->  DELETE

Authenticated by SMART Backend Services when credentials are configured (`cds_hooks/bulk/auth.py`), open
otherwise. A rerun into the same folder carries on where the last run stopped (see `download.py`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import orjson

from cds_hooks.bulk.auth import build_auth
from cds_hooks.bulk.download import (
    MANIFEST_FILE,
    Budget,
    ExportState,
    fetch_file,
    is_complete,
    write_manifest,
)
from cds_hooks.bulk.export import (
    ExportGone,
    ExportQuery,
    ExportTimedOut,
    cancel,
    check_since,
    export_query,
    fhir_base,
    kick_off,
    poll,
)
from cds_hooks.bulk.http import BulkExportError, TokenSource, Transport
from cds_hooks.settings import Settings, https_or_loopback

__all__ = ["BulkExportError", "StatusLine", "download_export"]

_log = logging.getLogger("mscc_alert.bulk")


def download_export(kickoff_url: str, dest: Path, *, settings: Settings, since: str | None = None,
                    auth: TokenSource | None = None) -> Path:
    """Kick off, poll, download every output file into dest (NDJSON as the server sent it); return dest.

    `auth`: a token source made already (`build_auth`), so a caller can go on using its token after the export
    (the delta sweep's FHIR searches); default: one made here from the settings.
    Raises `BulkExportError` (its message is safe to print) when the export cannot be had; KeyboardInterrupt
    while the server is still preparing the export cancels it there (DELETE of the status URL)."""
    from fhir_mapping.terminology import load_terminology

    base = fhir_base(kickoff_url)
    if not https_or_loopback(kickoff_url):
        raise BulkExportError("the kick-off URL must be https (plain http only to loopback)")
    check_since(since)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)  # it will hold PHI
    state = ExportState.open(dest, kickoff_url, since)
    transport = Transport(settings, (kickoff_url, *settings.bulk_token_origins))
    try:
        transport.use_token_source(auth if auth is not None else build_auth(settings, transport, base))
        if state.manifest:
            raw = (dest / MANIFEST_FILE).read_bytes()
        else:
            raw = _export(transport, kickoff_url, state, dest, settings=settings, since=since,
                          query=export_query(load_terminology()))
        manifest = _manifest(raw)
        state.plan(manifest)
        state.save(dest)
        _download(transport, state, dest, settings=settings, with_token=manifest["requiresAccessToken"] is True)
        if not state.cleaned_up and state.status_url:
            # IG: a DELETE after completion tells the server the client is done with the files.
            state.cleaned_up = cancel(transport, state.status_url)
            state.save(dest)
    finally:
        transport.close()
    return dest


def _export(transport: Transport, kickoff_url: str, state: ExportState, dest: Path, *, settings: Settings,
            since: str | None, query: ExportQuery) -> bytes:
    deadline = time.monotonic() + settings.bulk_export_seconds
    progress = StatusLine()
    try:
        raw: bytes | None = None
        if state.status_url:  # an earlier run kicked off and stopped while the server worked: carry on
            try:
                raw = poll(transport, state.status_url, settings=settings, deadline=deadline, progress=progress)
            except ExportGone:
                state.status_url = None
        if raw is None:
            state.status_url = kick_off(transport, kickoff_url, query, since=since, settings=settings,
                                        deadline=deadline)
            state.save(dest)
            raw = poll(transport, state.status_url, settings=settings, deadline=deadline, progress=progress)
    except (KeyboardInterrupt, ExportTimedOut):
        progress.end()
        if state.status_url:
            cancelled = cancel(transport, state.status_url)
            _log.warning("bulk export stopped before completion; cancelled on the server: %s", cancelled)
            _say(f"{'cancelled' if cancelled else 'could not cancel'} the export on the server")
            state.status_url = None
            state.save(dest)
        raise
    progress.end()
    write_manifest(dest, raw)
    state.manifest = True
    state.save(dest)
    return raw


def _manifest(raw: bytes) -> dict[str, Any]:
    try:
        manifest: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BulkExportError("the export manifest is not JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("transactionTime"), str):
        raise BulkExportError("the export manifest has no transactionTime")
    if not isinstance(manifest.get("requiresAccessToken"), bool):
        raise BulkExportError("the export manifest has no requiresAccessToken")
    return manifest


def _download(transport: Transport, state: ExportState, dest: Path, *, settings: Settings, with_token: bool) -> None:
    used = sum(r.bytes for r in state.files if is_complete(r, dest))
    used += sum(p.stat().st_size for p in [*dest.glob("*.part"), *dest.glob("*/*.part")])
    budget = Budget(settings.bulk_max_total_bytes, used)
    todo = [r for r in state.files if not is_complete(r, dest)]
    for record in todo:
        record.complete = False
    lock = threading.Lock()

    def save() -> None:
        with lock:
            state.save(dest)

    progress = StatusLine()
    stop = threading.Event()
    try:
        with ThreadPoolExecutor(settings.bulk_parallel_downloads, thread_name_prefix="bulk-download") as pool:
            futures = [pool.submit(fetch_file, transport, record, dest, settings=settings, budget=budget,
                                   with_token=with_token, save=save, stop=stop) for record in todo]
            try:
                for done, future in enumerate(as_completed(futures), 1):
                    future.result()  # the first failure stops the rest
                    progress(f"downloaded {done}/{len(todo)} files, {budget.used / 1e6:,.0f} MB")
            except BaseException:
                stop.set()  # running downloads stop at their next chunk, keeping their partial files
                for future in futures:
                    future.cancel()
                raise
    except KeyboardInterrupt:
        progress.end()
        _say("download interrupted; run the same command again to resume it")
        raise
    progress.end()
    outputs = sum(1 for r in state.files if r.kind == "output")
    _log.info("bulk export downloaded: %d files (%d fetched by this run), %d error files, %d bytes", outputs,
              len(todo), len(state.files) - outputs, budget.used)
    if outputs < len(state.files):
        _say(f"the server reported problems in {len(state.files) - outputs} error file(s), kept in "
             f"{dest / 'errors'}")


def _say(message: str) -> None:
    """To the person running the command (stderr), not the log."""
    sys.stderr.write(f"mscc-alert: {message}\n")


class StatusLine:
    """One self-overwriting line on stderr, on a terminal only (a log or a pipe gets none)."""

    def __init__(self) -> None:
        self._shown = False

    def __call__(self, text: str) -> None:
        if sys.stderr.isatty():
            # Server text (X-Progress, IG: under 100 characters): printable characters only.
            clean = "".join(c for c in text[:100] if c.isprintable())
            sys.stderr.write(f"\r\x1b[Kmscc-alert: {clean}")
            sys.stderr.flush()
            self._shown = True

    def end(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            self._shown = False
