"""Does a resource's JSON mention anything the rules read? A byte-level test made before any parse.

It looks for every code of the value sets the rules read (fhir_mapping.intake.READ_VALUE_SETS) as the value sets
spell it, and an ICD-10-CM code also without its dot; the word anchors of fhir_mapping.text
(every phrase the free-text rules match holds one); every breast-cancer drug name; and what could spell any of
them otherwise. Letters match whatever their ASCII case.

The intake reads a resource only if it mentions one, so what this says is part of what the rules are: a
resource that mentions none holds no code and no phrase the rules look for, readable or not. A Bulk export can
then be screened a block of bytes at a time (`Mentions.lines`), never parsing the lines that mention nothing:
most of an export. The matching is Hyperscan's (Intel's multi-pattern regex matcher, in C), which scans for a
thousand patterns at once at gigabytes a second.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator

import hyperscan

from fhir_mapping.terminology import ICD10CM

# A short code is sought only as a whole value: a JSON string is the code alone (normalize_code strips its
# whitespace) and a number ends at a delimiter, so the bytes either side are never a letter, a digit, "." or
# "-". Unbounded, "3002" (cyclophosphamide) is found inside a fifth of an export's uuids. Longer codes are sought
# as they are: they seldom turn up by chance, and every bounded pattern costs Hyperscan compile time (~3 ms).
_BOUNDED_BELOW = 6
_CODE = rb"[^0-9a-z.\-]%s[^0-9a-z.\-]"
# A JSON escape ("\u0070ain") can spell any of them, and Python's case-insensitive regexes (the free-text rules)
# equate four characters outside ASCII with ASCII letters: "İ" and "ı" with i, "ſ" with s, the Kelvin sign with k.
# A resource holding any of these is always read, so that no spelling slips past.
_ALWAYS = (rb"\\", rb"\xc4\xb0", rb"\xc4\xb1", rb"\xc5\xbf", rb"\xe2\x84\xaa")


_NEWLINE = ord("\n")


def expressions(codes: Iterable[tuple[str, str]], words: Iterable[str]) -> tuple[bytes, ...]:
    """The Hyperscan expressions (matched without regard to ASCII case) for these (system, code) pairs and
    words: each code (a short one as a whole value), and for ICD-10-CM also without its dot; each word
    anywhere."""
    found: set[bytes] = set()
    for system, code in codes:
        spellings = {code.lower()}
        if system == ICD10CM:
            spellings.add(code.lower().replace(".", ""))  # "C50.911" is also sent as "C50911"
        for spelling in spellings:
            literal = re.escape(spelling.encode())
            found.add(_CODE % literal if len(spelling) < _BOUNDED_BELOW else literal)
    found.update(re.escape(word.lower().encode()) for word in words)
    return (*_ALWAYS, *sorted(found))


class Mentions:
    """Tests bytes for the expressions. Thread-safe: each thread scans with its own scratch space."""

    def __init__(self, patterns: Iterable[bytes]) -> None:
        compiled = list(patterns)
        self._database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._database.compile(expressions=compiled, ids=list(range(len(compiled))), elements=len(compiled),
                               flags=[hyperscan.HS_FLAG_CASELESS] * len(compiled))
        self._local = threading.local()

    def _scratch(self) -> hyperscan.Scratch:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._database)
        return scratch

    def __call__(self, data: bytes) -> bool:
        """Whether `data` mentions anything (the scan stops at the first match)."""
        try:
            self._database.scan(data, match_event_handler=_stop, scratch=self._scratch())
        except hyperscan.ScanTerminated:
            return True
        return False

    def lines(self, data: bytes, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int]]:
        """(start, end) in `data` of each line of data[start:stop] (lines end at b"\\n") that mentions anything,
        in order. No pattern holds a newline but a code's bound may be one: a match is placed by its last byte,
        or the one before when that is the newline."""
        stop = len(data) if stop is None else stop
        ends: list[int] = []
        with memoryview(data) as view, view[start:stop] as scanned:
            # Any buffer scans (the stub says bytes or str): the range is searched where it lies, never copied.
            self._database.scan(scanned, match_event_handler=_collector(ends),  # type: ignore[type-var]
                                scratch=self._scratch())
        line_end = -1
        for end in ends:  # reported in order of where each match ends, from `start`
            inside = start + end - 1
            if data[inside] == _NEWLINE:
                inside -= 1
            if inside < line_end:
                continue  # the line is reported already
            line_start = data.rfind(b"\n", start, inside) + 1 or start
            line_end = data.find(b"\n", inside, stop)
            if line_end < 0:
                line_end = stop
            yield line_start, line_end


def _stop(*_: object) -> bool:
    return True  # a true return ends the scan (hyperscan.ScanTerminated)


def _collector(ends: list[int]) -> Callable[[int, int, int, int, object], None]:
    append = ends.append

    def on_match(_id: int, _start: int, end: int, _flags: int, _context: object) -> None:
        append(end)

    return on_match
