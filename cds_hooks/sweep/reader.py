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
_BOM = b"\xef\xbb\xbf"


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


def chunk_size(chunk: Chunk) -> int:
    """Bytes of the range (a whole file: its size on disk; for gzip the compressed size, a fair guide to its work)."""
    if chunk.end is not None:
        return chunk.end - chunk.start
    return Path(chunk.path).stat().st_size


@dataclass(slots=True)
class LineCounts:
    lines: int = 0  # non-blank lines handed out
    too_long: int = 0
    size: int = 0  # NDJSON bytes of the lines this chunk owns (uncompressed, for gzip)


def read_lines(chunk: Chunk, max_line_bytes: int, counts: LineCounts) -> Iterator[bytes]:
    """The non-blank lines of a chunk (without the newline), in file order."""
    for batch in read_batches(chunk, max_line_bytes, counts):
        yield from batch


# What read_blocks hands out: a block of whole lines as bytes, each line ending in a newline (not yet counted in
# LineCounts.lines: see lines_of), or a list of lines already made usable and counted.
Block = bytes | list[bytes]


def read_batches(chunk: Chunk, max_line_bytes: int, counts: LineCounts) -> Iterator[list[bytes]]:
    """The same lines, a block's worth at a time (the screen runs over lists: no generator step per line)."""
    for block in read_blocks(chunk, max_line_bytes, counts):
        yield lines_of(block, counts)


def lines_of(block: Block, counts: LineCounts) -> list[bytes]:
    if isinstance(block, list):
        return block
    return _usable(block.split(b"\n")[:-1], counts)


def read_blocks(chunk: Chunk, max_line_bytes: int, counts: LineCounts) -> Iterator[Block]:
    """The chunk's lines, a block at a time: as bytes where every line of the block is ours and short enough
    (the common case: a screen may then search the block without splitting it), else as a list."""
    if chunk.path.endswith(".gz"):
        with gzip.open(chunk.path, "rb") as stream:
            yield from _batches(stream, 0, None, max_line_bytes, counts)
        return
    with open(chunk.path, "rb") as stream:
        start = chunk.start
        if start > 0:
            # The line that starts at `start` is ours only if the byte before it ends a line.
            stream.seek(start - 1)
            start += _skip_line(stream) - 1
        yield from _batches(stream, start, chunk.end, max_line_bytes, counts)


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


def _usable(lines: list[bytes], counts: LineCounts) -> list[bytes]:
    """Drop blank lines, strip CR of CRLF endings, and count."""
    lines = [line.rstrip(b"\r") for line in lines if line and not line.isspace()]
    counts.lines += len(lines)
    return lines


def _batches(stream: _Readable, offset: int, end: int | None, max_line: int,
             counts: LineCounts) -> Iterator[Block]:
    tail = b""
    skipping = False  # inside a line longer than max_line: drop bytes up to its newline
    at_start = offset == 0
    while True:
        if end is not None and offset >= end:
            return
        block = stream.read(BLOCK_BYTES)
        if not block:
            break
        if at_start and block.startswith(_BOM):
            # Some writers open a UTF-8 file with a byte-order mark: it is not part of the first resource.
            block, offset, counts.size = block[len(_BOM) :], offset + len(_BOM), counts.size + len(_BOM)
        at_start = False
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
        joined = tail + block if tail else block
        span = joined.rfind(b"\n") + 1  # the complete lines with their newlines
        tail = joined[span:]
        if (end is None or offset + span <= end) and _no_line_longer(joined, span, max_line):
            # Every line of the block is ours and none is too long: the common case, handed out whole.
            offset += span
            counts.size += span
            if span:
                yield joined[:span]
        else:
            parts = joined[:span].split(b"\n")[:-1]
            mine: list[bytes] = []
            for line in parts:
                if end is not None and offset >= end:
                    yield _usable(mine, counts)
                    return
                offset += len(line) + 1
                counts.size += len(line) + 1
                if len(line) > max_line:
                    counts.too_long += 1
                else:
                    mine.append(line)
            yield _usable(mine, counts)
        if len(tail) > max_line:
            counts.too_long += 1
            offset += len(tail)
            counts.size += len(tail)
            tail, skipping = b"", True
    if tail and (end is None or offset < end):
        counts.size += len(tail)
        yield _usable([tail], counts)


def _no_line_longer(joined: bytes, span: int, max_line: int) -> bool:
    """Whether no line of joined[:span] is longer than max_line, without splitting it: every window of
    max_line // 2 bytes holding a newline bounds each line below max_line (a few finds a block); else the
    lines are measured."""
    if span <= max_line:
        return True
    step = max(max_line // 2, 1)
    if all(joined.find(b"\n", start, start + step) >= 0 for start in range(0, span, step)):
        return True
    return max(map(len, joined[:span].split(b"\n"))) <= max_line
