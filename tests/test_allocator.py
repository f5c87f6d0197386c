"""cds_hooks.server.allocator: after keep_freed_memory(), a multi-megabyte block comes from the heap (reusable without
page faults) instead of a fresh mmap. Checked in a fresh interpreter, whose allocator has default settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # starts servers or subprocesses

PROBE = """
import ctypes, ctypes.util
from cds_hooks.server.allocator import keep_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_long]

def from_heap(size):
    block = libc.malloc(size)
    top = libc.sbrk(0)  # the end of the brk heap: an mmap'd block lies elsewhere
    libc.free(block)
    return block < top

before = from_heap(16 << 20)
tuned = keep_freed_memory()
after = from_heap(16 << 20)
print(before, tuned, after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_large_blocks_come_from_the_heap_once_tuned() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]
