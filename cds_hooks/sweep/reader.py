"""Bulk NDJSON files -> lines of bytes, streamed: a plain file in byte ranges (so workers can share one large
file), a gzip file as a whole (gzip cannot be entered in the middle). Memory is bounded by the block size plus
the longest line we accept; a longer line is skipped and counted, never read whole."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from cds_hooks.sweep.workers import ShownFailure

SUFFIXES = (".ndjson", ".ndjson.gz")
# A read: small enough that the buffer stays in a core's cache while the screen makes its few passes over it
# (4 MiB reads were slower, more so with two workers sharing the cache), large enough that Python's per-read
# steps are nothing beside the work.
BLOCK_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class _Readable(Protocol):
    def readinto(self, buffer: bytearray, /) -> int: ...


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
    for block in read_blocks(chunk, max_line_bytes, counts):
        yield from lines_of(block, counts)


# What read_blocks hands out: (data, start, stop), whole lines data[start:stop], each ending in a newline and not
# yet counted in LineCounts.lines (see lines_of), valid until the next block is asked for (data is the reader's
# buffer, filled again by the next read), or a list of lines already made usable and counted.
Block = tuple[bytes | bytearray, int, int] | list[bytes]


def lines_of(block: Block, counts: LineCounts) -> list[bytes]:
    if isinstance(block, list):
        return block
    data, start, stop = block
    with memoryview(data) as view:
        return _usable(bytes(view[start:stop]).split(b"\n")[:-1], counts)  # one copy out of the reader's buffer


def placed_lines_of(block: tuple[bytes | bytearray, int, int], counts: LineCounts) -> tuple[list[bytes], list[int]]:
    """The lines `lines_of` gives of a range, each with where in `data` it starts (as Mentions.lines places
    them)."""
    data, start, stop = block
    with memoryview(data) as view:
        pieces = bytes(view[start:stop]).split(b"\n")[:-1]
    starts: list[int] = []
    kept: list[bytes] = []
    at = start
    for piece in pieces:
        if _is_line(piece):
            kept.append(piece)
            starts.append(at)
        at += len(piece) + 1
    return _usable(kept, counts), starts


def read_blocks(chunk: Chunk, max_line_bytes: int, counts: LineCounts) -> Iterator[Block]:
    """The chunk's lines, a block at a time: as a range of what was read where every line of it is ours and short
    enough (the common case: a screen may then search it without splitting or copying it), else as a list.
    UnreadableFile if the file cannot be read to its end: a sweep that went on would miss its patients unsaid."""
    try:
        yield from _read_blocks(chunk, max_line_bytes, counts)
    except (OSError, EOFError, zlib.error) as exc:
        raise UnreadableFile(f"{chunk.path}: {_why(exc)}") from None


class UnreadableFile(ShownFailure):
    """An export file that cannot be read to its end (gone, not gzip, cut short): its path and why, which is safe
    to show (the reason is our own words, never the error's text, which can quote the file's bytes)."""


def _why(exc: BaseException) -> str:
    if isinstance(exc, gzip.BadGzipFile) and str(exc).startswith("Not a gzipped file"):
        return "not a gzip file"  # its header; a bad checksum or length at the end is corrupt data
    if isinstance(exc, EOFError):
        return "its gzip data ends early (a download cut short?)"
    if isinstance(exc, zlib.error | gzip.BadGzipFile):
        return "its gzip data is corrupt"
    assert isinstance(exc, OSError)
    return exc.strerror or type(exc).__name__


def _read_blocks(chunk: Chunk, max_line_bytes: int, counts: LineCounts) -> Iterator[Block]:
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


def _usable(lines: Sequence[bytes | bytearray], counts: LineCounts) -> list[bytes]:
    """Drop blank lines, strip CR of CRLF endings, and count (as bytes: a read's buffer is used again)."""
    usable = [bytes(line.rstrip(b"\r")) for line in lines if _is_line(line)]
    counts.lines += len(usable)
    return usable


def _is_line(line: bytes | bytearray) -> bool:
    return bool(line) and not line.isspace()


def _batches(stream: _Readable, offset: int, end: int | None, max_line: int,
             counts: LineCounts) -> Iterator[Block]:
    """`offset`: where in the file the next line starts. Each read goes into the same buffer (a fresh 4 MiB
    object per read was faulted in page by page: half the cost of reading) and is handed out as a range of
    it, valid until the next block is asked for; only a line that two reads cut is put together, as a list of
    its own."""
    buffer = bytearray(BLOCK_BYTES)
    tail = bytearray()  # the part read so far of a line the last read cut (grown in place, however long)
    skipping = False  # inside a line longer than max_line: drop bytes up to its newline
    at_start = offset == 0
    while True:
        if end is not None and offset >= end and not skipping:  # a skipped line is ours to its end, wherever
            return
        size = stream.readinto(buffer)
        if not size:
            break
        data = buffer if size == len(buffer) else bytes(memoryview(buffer)[:size])  # a short read: the file's last
        pos = 0  # where in `data` the next line starts
        if at_start and data.startswith(_BOM):
            # Some writers open a UTF-8 file with a byte-order mark: it is not part of the first resource.
            pos, offset, counts.size = len(_BOM), offset + len(_BOM), counts.size + len(_BOM)
        at_start = False
        if skipping or tail:
            at = data.find(b"\n", pos)
            if at < 0:
                if skipping:
                    offset += size - pos
                    counts.size += size - pos
                else:
                    tail += data[pos:]
                    skipping = _too_long(tail, max_line, counts)
                    if skipping:
                        offset, tail = offset + len(tail), bytearray()
                continue
            if skipping:
                skipping = False
                offset += at + 1 - pos
                counts.size += at + 1 - pos
            else:
                line, tail = bytes(tail + data[pos:at]), bytearray()
                offset += len(line) + 1
                counts.size += len(line) + 1
                if len(line) > max_line:
                    counts.too_long += 1
                else:
                    yield _usable([line], counts)
                if end is not None and offset >= end:
                    return
            pos = at + 1
        stop = data.rfind(b"\n", pos) + 1 or pos  # data[pos:stop]: the complete lines
        span = stop - pos
        if (end is None or offset + span <= end) and _no_line_longer(data, pos, stop, max_line):
            # Every line of the range is ours and none is too long: the common case, handed out whole.
            offset += span
            counts.size += span
            if span:
                yield data, pos, stop
        else:
            mine: list[bytes | bytearray] = []
            for piece in bytes(memoryview(data)[pos:stop]).split(b"\n")[:-1]:
                if end is not None and offset >= end:
                    yield _usable(mine, counts)
                    return
                offset += len(piece) + 1
                counts.size += len(piece) + 1
                if len(piece) > max_line:
                    counts.too_long += 1
                else:
                    mine.append(piece)
            yield _usable(mine, counts)
        if end is not None and offset >= end:
            return  # the cut line starts at or past the end: the next range's
        tail = bytearray(data[stop:])
        skipping = _too_long(tail, max_line, counts)
        if skipping:
            offset, tail = offset + len(tail), bytearray()
    if tail and (end is None or offset < end):
        counts.size += len(tail)
        yield _usable([tail], counts)


def _too_long(tail: bytes | bytearray, max_line: int, counts: LineCounts) -> bool:
    """A cut line already longer than max_line: counted too long, and its bytes so far counted read."""
    if len(tail) <= max_line:
        return False
    counts.too_long += 1
    counts.size += len(tail)
    return True


def _no_line_longer(data: bytes | bytearray, start: int, stop: int, max_line: int) -> bool:
    """Whether no line of data[start:stop] is longer than max_line, without splitting it: every window of
    max_line // 2 bytes holding a newline bounds each line below max_line (a few finds a block); else the
    lines are measured."""
    if stop - start <= max_line:
        return True
    step = max(max_line // 2, 1)
    if all(data.find(b"\n", at, at + step) >= 0 for at in range(start, stop, step)):
        return True
    return max(map(len, data[start:stop].split(b"\n"))) <= max_line
