"""Keep freed memory for the next request instead of returning it to the kernel (glibc only).

Each hook request allocates and frees a few times its body size. With glibc's defaults, blocks of 128 KiB and
up are mmap'd and the top of the heap is trimmed after a large free, so every request faults its memory in
again, page by page: about a third of the service time at 1,000 resources on the benchmark (README, "Performance").
Raising the mmap threshold to its maximum (32 MiB) and the trim threshold to 128 MiB lets the next request reuse
the same pages. The cost is that resident memory stays near its high-water mark instead of shrinking after a
burst (40 concurrent 10,000-resource requests left a worker at 670 MB, its peak); the peak itself is
unchanged. Bodies over 32 MiB are still mmap'd and freed at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

_log = logging.getLogger("mscc_alert.allocator")

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for it on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 128 * 1024 * 1024


@functools.cache  # once a process (a forked child inherits the settings)
def keep_freed_memory() -> bool:
    """True if the allocator took the settings; False on a libc without mallopt (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _log.info("allocator tuning skipped: no glibc mallopt")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if tuned:
        _log.info("allocator: freed memory is kept for reuse (mmap threshold 32 MiB, trim threshold 128 MiB)")
    else:
        _log.warning("allocator tuning refused by mallopt: requests will fault their memory in afresh")
    return tuned
