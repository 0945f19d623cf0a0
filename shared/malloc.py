"""Keep freed memory in the process: glibc ``mallopt`` settings for processes that run the per-sweep kernels.

The per-sweep kernels (ground, DBSCAN, pooling, projection) allocate a few hundred kilobytes to a few megabytes of
scratch arrays per call and free them at once. With glibc's defaults, blocks above the mmap threshold (128 KiB,
raised dynamically) are mapped fresh and unmapped on free, and the heap top is trimmed back to the system: every
call then page-faults its scratch memory in again (about 350-400 minor faults per nuScenes sweep per stage,
0.4-0.6 ms of a 2-3 ms stage on the benchmark machine, ``bench/bench_kernels.py``). :func:`tune_malloc` raises the
mmap threshold to glibc's maximum (32 MiB on 64-bit) and the trim threshold, so freed scratch memory is reused
by the next call instead.

:func:`numpy_hugepages` turns off numpy's ``madvise(MADV_HUGEPAGE)`` on its large arrays (numpy asks the kernel
for transparent huge pages on every allocation of 4 MiB or more): the store writer's scene-sized arrays (a few
hundred megabytes a scene, allocated once each) then fault in 2 MiB pages that the kernel zeroes in the
fault: writing a sweep took 3.0 instead of 2.0 ms on the benchmark machine (``bench/bench_run.py
--numpy-hugepages``, docs/store.md). Same as ``NUMPY_MADVISE_HUGEPAGE=0`` in the environment
before numpy is imported, but settable at run time.

Process-wide and idempotent. Called by the preprocessing workers (``preprocess.run``), ``calico preprocess sweep``
and the kernel benchmark; never at import. Elsewhere than glibc (macOS, musl) it does nothing and returns False.
The cost is that up to ``trim_threshold`` bytes of freed memory stay mapped in the process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "numpy_hugepages", "tune_malloc"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3

#: glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2): larger blocks are always mapped.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed memory at the top of the heap is returned to the system only above this.
TRIM_THRESHOLD = 256 * 1024 * 1024


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return libc


@functools.cache
def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds (bytes) for this process; True if both were accepted."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok


def numpy_hugepages(enabled: bool) -> bool | None:
    """Whether numpy advises transparent huge pages for its large arrays from now on; returns the previous
    setting, or None where this numpy has no such switch."""
    import numpy as np

    for core in ("_core", "core"):  # numpy 2, numpy 1 (whose numpy._core is a stub for unpickling)
        fn = getattr(getattr(getattr(np, core, None), "multiarray", None), "_set_madvise_hugepage", None)
        if fn is not None:
            return bool(fn(bool(enabled)))
    return None
