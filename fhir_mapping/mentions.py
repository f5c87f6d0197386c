"""Does a resource's JSON mention anything the rules read? A byte-level test made before any parse.

It looks for every code of the value sets the rules read (fhir_mapping.intake.READ_VALUE_SETS) as the value sets
spell it, and an ICD-10-CM code also without its dot; the word anchors of fhir_mapping.text
(every phrase the free-text rules match holds one); every breast-cancer drug name; and what could spell any of
them otherwise. Letters match whatever their ASCII case.

The intake reads a resource only if it mentions one, so what this says is part of what the rules are: a
resource that mentions none holds no code and no phrase the rules look for, readable or not. Each expression
also carries what its match could be evidence of (fhir_mapping.intake roles, a bit set), so the bytes alone
bound what a resource can be evidence of: whatever it says, readable or not, it holds no more than the roles
of what it mentions. A Bulk export can then be screened a block of bytes at a time (`Mentions.lines`), never
parsing the lines that mention nothing: most of an export. The matching is Hyperscan's (Intel's multi-pattern
regex matcher, in C), which scans for a thousand patterns at once at about a gigabyte a second here.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable

import hyperscan

from fhir_mapping._lines import place
from fhir_mapping.terminology import ICD10CM

# A short code is sought only as a whole value: a JSON string is the code alone (normalize_code strips its
# whitespace) and a number ends at a delimiter, so the bytes either side are never a letter, a digit, "." or
# "-". Unbounded, "3002" (cyclophosphamide) is found inside a fifth of an export's uuids. Longer codes are sought
# as they are: they seldom turn up by chance, and every bounded pattern costs Hyperscan compile time (~3 ms).
_BOUNDED_BELOW = 6
_CODE = rb"[^0-9a-z.\-]%s[^0-9a-z.\-]"
# Python's case-insensitive regexes (the free-text rules) equate four characters outside ASCII with ASCII letters:
# "İ" and "ı" with i, "ſ" with s, the Kelvin sign with k. A JSON escape can spell any ASCII character or those four
# ("p\u0061in"), and a code's value may hold an escaped control character beside the code (normalize_code strips
# it, but the bytes before the code are then a letter, which a short code's bound refuses). A resource holding
# any of these, raw or escaped, is always read, so that no spelling slips past. Other escapes spell characters
# no code or word holds: a quote, a backslash, a slash, or any other character beyond ASCII ("cr\u00e8me", as
# Python's json.dumps writes every accented name, is "crème" and no more).
_ALWAYS = (
    rb"\\u00[0-7][0-9a-f]",  # an ASCII character, escaped
    rb"\\u0130", rb"\\u0131", rb"\\u017f", rb"\\u212a",
    rb"\\[bfnrt]",
    rb"\xc4\xb0", rb"\xc4\xb1", rb"\xc5\xbf", rb"\xe2\x84\xaa",
)
# That holds while every code and word is printable ASCII with no quote, backslash or slash, which
# tests/test_mentions.py checks of the value sets and words.


_FLAGS = hyperscan.HS_FLAG_CASELESS


def expressions(codes: Iterable[tuple[str, str, int]], words: Iterable[tuple[str, int]],
                always: int) -> tuple[tuple[bytes, int], ...]:
    """The Hyperscan expressions (matched without regard to ASCII case), each with its roles, for these
    (system, code, roles) and (word, roles): each code (a short one as a whole value), and for ICD-10-CM also
    without its dot; each word anywhere; and what could spell any of them otherwise, with `always` (every
    role). Two codes or words with one spelling are one expression with the roles of both."""
    found: dict[bytes, int] = {}
    for system, code, roles in codes:
        spellings = {code.lower()}
        if system == ICD10CM:
            spellings.add(code.lower().replace(".", ""))  # "C50.911" is also sent as "C50911"
        for spelling in spellings:
            literal = re.escape(spelling.encode())
            expression = _CODE % literal if len(spelling) < _BOUNDED_BELOW else literal
            found[expression] = found.get(expression, 0) | roles
    for word, roles in words:
        expression = re.escape(word.lower().encode())
        found[expression] = found.get(expression, 0) | roles
    return (*((expression, always) for expression in _ALWAYS), *sorted(found.items()))


class Mentions:
    """Tests bytes for the expressions. Thread-safe: each thread scans with its own scratch space."""

    def __init__(self, patterns: Iterable[tuple[bytes, int]], compiled: bytes | None = None) -> None:
        """`compiled`: these very patterns compiled already (`serialized()`, from a `fingerprint` it matches),
        loaded instead of compiling them again; ValueError if Hyperscan cannot load it."""
        pairs = list(patterns)
        self._roles = [roles for _, roles in pairs]
        if compiled is not None:
            try:
                self._database = hyperscan.loadb(compiled, mode=hyperscan.HS_MODE_BLOCK)
            except hyperscan.error as exc:  # Hyperscan checks its header and a CRC of the bytecode
                raise ValueError(f"not a compiled database this Hyperscan can load ({exc})") from None
        else:
            expressions = [expression for expression, _ in pairs]
            self._database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self._database.compile(expressions=expressions, ids=list(range(len(expressions))),
                                   elements=len(expressions), flags=[_FLAGS] * len(expressions))
        self._local = threading.local()

    def serialized(self) -> bytes:
        """The compiled database, for `Mentions(patterns, compiled=...)` in another process or run."""
        return bytes(hyperscan.dumpb(self._database))

    @staticmethod
    def fingerprint(patterns: Iterable[tuple[bytes, int]]) -> str:
        """What a compiled database depends on (the expressions, their flags, this Hyperscan), as a name for it."""
        version = getattr(hyperscan, "__version__", "unknown")  # not in the type stubs
        digest = hashlib.sha256(f"hyperscan {version} flags {_FLAGS}\n".encode())
        for expression, _ in patterns:
            digest.update(expression + b"\n")
        return digest.hexdigest()[:32]

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

    def roles(self, data: bytes) -> int | None:
        """What `data` could be evidence of, from all it mentions; None when it mentions nothing."""
        found: list[int] = []
        self._database.scan(data, match_event_handler=_collector(found, self._roles), scratch=self._scratch())
        if not found:
            return None
        roles = 0
        for matched in found[::2]:  # roles, end, roles, end...
            roles |= matched
        return roles

    def lines(self, data: bytes | bytearray, start: int = 0, stop: int | None = None) -> list[tuple[int, int, int]]:
        """(start, end, roles) of each line of data[start:stop] (lines end at b"\\n") that mentions anything,
        in order, with what it could be evidence of (as `roles` says of the line). No pattern holds a newline
        but a code's bound may be one: a match is placed by its last byte, or the one before when that is the
        newline (placed in C, fhir_mapping/_lines.c: in Python, placing cost a third of the search)."""
        stop = len(data) if stop is None else stop
        found: list[int] = []  # roles, end, roles, end...
        with memoryview(data) as view, view[start:stop] as scanned:
            # Any buffer scans (the stub says bytes or str): the range is searched where it lies, never copied.
            self._database.scan(scanned, match_event_handler=_collector(found, self._roles),  # type: ignore[type-var]
                                scratch=self._scratch())
        return place(data, start, stop, found)


def _stop(*_: object) -> bool:
    return True  # a true return ends the scan (hyperscan.ScanTerminated)


def _collector(found: list[int], roles: list[int]) -> Callable[[int, int, int, int, object], None]:
    """Appends each match's roles and end offset (a flat list: the callback runs once per match)."""
    extend = found.extend

    def on_match(pattern: int, _start: int, end: int, _flags: int, _context: object) -> None:
        extend((roles[pattern], end))

    return on_match
