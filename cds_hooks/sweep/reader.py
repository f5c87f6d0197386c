"""Bulk NDJSON files -> lines of bytes, streamed: a plain file in byte ranges (so workers can share one large
file), a gzip file as a whole (gzip cannot be entered in the middle). Memory is bounded by the block size plus
the longest line we accept; a longer line is skipped and counted, never read whole."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

SUFFIXES = (".ndjson", ".ndjson.gz")
BLOCK_BYTES = 4 * 1024 * 1024


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Chunk:
    """Lines of `path` that *start* in [start, end): a line crossing `end` belongs to this chunk, the next
    chunk skips it. A gzip file is one chunk (end is None: to the end)."""

    path: str
    start: int = 0
    end: int | None = None


def export_files(source: Path) -> tuple[list[Path], list[Path]]:
    """(NDJSON files, other files) under `source`, sorted. File names never tell the type: only the suffix
    says the file is NDJSON (and whether it is gzip)."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    ndjson = [p for p in files if p.name.endswith(SUFFIXES)]
    return ndjson, [p for p in files if not p.name.endswith(SUFFIXES)]


def plan_chunks(files: list[Path], chunk_bytes: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for path in files:
        size = path.stat().st_size
        if path.name.endswith(".gz") or size <= chunk_bytes:
            chunks.append(Chunk(str(path)))
            continue
        chunks.extend(Chunk(str(path), start, min(start + chunk_bytes, size)) for start in range(0, size, chunk_bytes))
    return chunks


@dataclass(slots=True)
class LineCounts:
    lines: int = 0  # non-blank lines handed out
    too_long: int = 0
    size: int = 0  # NDJSON bytes of the lines this chunk owns (uncompressed, for gzip)


def read_lines(chunk: Chunk, max_line_bytes: int, counts: LineCounts) -> Iterator[bytes]:
    """The non-blank lines of a chunk (without the newline), in file order."""
    if chunk.path.endswith(".gz"):
        with gzip.open(chunk.path, "rb") as stream:
            yield from _lines(stream, 0, None, max_line_bytes, counts)
        return
    with open(chunk.path, "rb") as stream:
        start = chunk.start
        if start > 0:
            # The line that starts at `start` is ours only if the byte before it ends a line.
            stream.seek(start - 1)
            start += _skip_line(stream) - 1
        yield from _lines(stream, start, chunk.end, max_line_bytes, counts)


def _skip_line(stream: IO[bytes]) -> int:
    """Read through the next newline; return how many bytes that took."""
    taken = 0
    while True:
        block = stream.read(64 * 1024)
        if not block:
            return taken
        at = block.find(b"\n")
        if at >= 0:
            stream.seek(stream.tell() - len(block) + at + 1)
            return taken + at + 1
        taken += len(block)


def _lines(stream: _Readable, offset: int, end: int | None, max_line: int, counts: LineCounts) -> Iterator[bytes]:
    tail = b""
    skipping = False  # inside a line longer than max_line: drop bytes up to its newline
    while True:
        if end is not None and offset >= end:
            return
        block = stream.read(BLOCK_BYTES)
        if not block:
            break
        if skipping:
            at = block.find(b"\n")
            if at < 0:
                offset += len(block)
                counts.size += len(block)
                continue
            skipping = False
            offset += at + 1
            counts.size += at + 1
            block = block[at + 1 :]
        parts = (tail + block).split(b"\n") if tail else block.split(b"\n")
        tail = parts.pop()
        for line in parts:
            if end is not None and offset >= end:
                return
            offset += len(line) + 1
            counts.size += len(line) + 1
            if len(line) > max_line:
                counts.too_long += 1
            elif line and not line.isspace():
                counts.lines += 1
                yield line.rstrip(b"\r")
        if len(tail) > max_line:
            counts.too_long += 1
            offset += len(tail)
            counts.size += len(tail)
            tail, skipping = b"", True
    if tail and not tail.isspace() and (end is None or offset < end):
        counts.lines += 1
        counts.size += len(tail)
        yield tail.rstrip(b"\r")
