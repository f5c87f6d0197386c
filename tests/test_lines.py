"""fhir_mapping._lines: the C that counts and places the lines of a read, against what its answers mean."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_mapping._lines import count_lines, place

PREFIX = b'{"resourceType":"Condition"'


def _block(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


@pytest.mark.parametrize(("data", "expected"), [
    (_block(PREFIX + b"}", PREFIX + b',"id":"a"}', PREFIX + b"}"), 3),
    (_block(PREFIX + b"}"), 1),
    (b"", 0),
    (PREFIX + b"}", 0),  # no newline: no whole line
    (_block(PREFIX + b"}", b'{"resourceType":"Observation"}', PREFIX + b"}"), -1),
    (_block(PREFIX + b"}", b"{}"), -1),  # a line shorter than the prefix
    (_block(PREFIX + b"}", b""), -1),  # a blank line
    (_block(PREFIX + b"}", b" " + PREFIX + b"}"), -1),
])
def test_count_lines_counts_only_when_every_line_opens_with_the_prefix(data: bytes, expected: int) -> None:
    assert count_lines(data, 0, len(data), PREFIX) == expected
    assert count_lines(bytearray(data), 0, len(data), PREFIX) == expected  # the reader's own buffer


def test_count_lines_stops_at_the_range() -> None:
    data = _block(PREFIX + b"}", PREFIX + b"}") + b"garbage\n"
    inside = len(_block(PREFIX + b"}", PREFIX + b"}"))
    assert count_lines(data, 0, inside, PREFIX) == 2
    assert count_lines(data, 0, len(data), PREFIX) == -1
    # A range that starts inside the read: the first line is the caller's to judge, the rest are judged.
    second = len(_block(PREFIX + b"}"))
    assert count_lines(data, second, inside, PREFIX) == 1
    assert count_lines(b"xx\n" + data, 3, 3 + inside, PREFIX) == 2


@pytest.mark.parametrize(("start", "stop"), [(-1, 3), (2, 1), (0, 99)])
def test_a_range_outside_the_buffer_is_refused(start: int, stop: int) -> None:
    with pytest.raises(ValueError, match="range"):
        count_lines(b"abc\n", start, stop, PREFIX)
    with pytest.raises(ValueError, match="range"):
        place(b"abc\n", start, stop, [])


def test_a_match_outside_the_range_is_refused() -> None:
    for found in ([1, 0], [1, 5], [1]):
        with pytest.raises(ValueError):
            place(b"abc\n", 0, 4, found)


def test_a_match_ending_at_the_newline_after_a_line_is_in_that_line_once() -> None:
    # The second match ends on the blank line's newline: it is placed by the byte before, the newline that ends
    # "ab", so both are in "ab" (a read with blank lines is screened line by line; the C must agree anyway).
    assert place(b"ab\n\ncd\n", 0, 7, [1, 3, 2, 4]) == [(0, 2, 3)]


def _places(data: bytes, start: int, stop: int, found: list[int]) -> list[tuple[int, int, int]]:
    """What `place` means: each match is in the line holding its last byte (the byte before, when the last is
    a newline); each line with a match, once, in order, with the roles of all its matches."""
    spans: dict[tuple[int, int], int] = {}
    for roles, end in zip(found[::2], found[1::2], strict=True):
        inside = start + end - 1
        if data[inside:inside + 1] == b"\n" and inside > start:
            inside -= 1
        line_start = data.rfind(b"\n", start, inside) + 1 or start
        line_end = data.find(b"\n", inside, stop)
        key = (line_start, stop if line_end < 0 else line_end)
        spans[key] = spans.get(key, 0) | roles
    return [(first, last, roles) for (first, last), roles in spans.items()]


@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"x")), min_size=1, max_size=20),
    pad=st.integers(0, 3), ends=st.lists(st.tuples(st.integers(0, 7), st.integers(1, 400)), max_size=30),
    last_newline=st.booleans(),
)
def test_place_puts_each_match_in_its_line(lines: list[bytes], pad: int, ends: list[tuple[int, int]],
                                           last_newline: bool) -> None:
    body = b"\n".join(lines) + (b"\n" if last_newline else b"")
    data = b"\n" * pad + body + b"tail\n"  # the range is part of a larger read, as the reader hands it out
    start, stop = pad, pad + len(body)
    matches = sorted((end, roles) for roles, end in ends if end <= stop - start)  # found in order of their ends
    found = [value for end, roles in matches for value in (roles, end)]
    assert place(data, start, stop, found) == _places(data, start, stop, found)
    assert place(bytearray(data), start, stop, found) == _places(data, start, stop, found)
