"""Process memory settings for long training runs: glibc's mmap threshold.

glibc serves allocations below its mmap threshold from heap arenas, and raises that threshold
dynamically (up to 32 MiB) after large blocks are freed. Torch's CPU tensors of a few MiB then sit in
arenas that fragment and are rarely returned to the system, so a run's peak RSS grows with every
rollout. Pinning the threshold (mallopt(M_MMAP_THRESHOLD), the same as MALLOC_MMAP_THRESHOLD_) sends
those tensors to mmap, which returns them on free. docs/performance.md has the measured effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter number


def set_mmap_threshold(mib: int) -> bool:
    """Pin glibc's mmap threshold to `mib` MiB (0 leaves the allocator alone). True when it was applied:
    on glibc Linux only, and never over a MALLOC_MMAP_THRESHOLD_ the user set in the environment."""
    if mib <= 0 or not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mib << 20))
