"""Process-level settings that training on CPU needs to be fast."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of returning it to the OS.

    By default every tensor above 32 MB (and many above 128 kB) gets fresh pages from mmap and
    returns them on free, so each training step pays a page fault per 4 kB of every large
    activation: on the mini preset that was a fifth of the step. jemalloc or tcmalloc via
    LD_PRELOAD do the same job; this needs nothing installed. Returns False where the C library
    is not glibc. Call it once, before the first large allocation.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 30) == 1
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.info("mallopt is not available; freed memory goes back to the OS")
    return ok
