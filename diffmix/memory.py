"""glibc's allocator settings for diffmix's long-lived worker processes."""

from __future__ import annotations

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks up to 32 MB for reuse in this process; False where there is no glibc.

    Dask starts its workers with `MALLOC_TRIM_THRESHOLD_=65536`, which also pins glibc's mmap
    threshold at 128 KB: every larger block (a file's text, a diff, an activation) is then a fresh
    mapping, faulted in and zeroed on each use, and every free returns it. torch's CPU allocator
    does not cache, so the demo's runs trained at 10-11k tokens/s there against 16-17k in a plain
    process; the corpus build pays the same for its texts (same results either way: the allocator
    does not touch the arithmetic).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))
