"""shared.malloc: after tune_malloc, freed scratch blocks stay in the process and are reused instead of being
mapped again (glibc's own accounting, ``mallinfo2``). The page faults this saves are a benchmark figure:
``python bench/bench_malloc.py``."""
import json
import subprocess
import sys
import textwrap

import pytest

from shared.malloc import _libc, numpy_hugepages, tune_malloc

pytestmark = pytest.mark.skipif(_libc() is None or not hasattr(_libc(), "mallinfo2"),
                                reason="no glibc >= 2.33 (mallopt, mallinfo2) on this platform")

_PROBE = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    from shared.malloc import _libc, tune_malloc

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = _libc()
    libc.mallinfo2.restype = Mallinfo2
    if sys.argv[1] == "tuned":
        assert tune_malloc()
    got = []
    for _ in range(4):  # like a kernel call: 8 scratch arrays of 1 MiB alive at once, then all freed
        before = libc.mallinfo2()
        arrays = [np.empty(1 << 17) for _ in range(8)]
        during = libc.mallinfo2()
        del arrays
        # bytes newly taken from the system: mapped blocks + heap growth
        got.append((during.hblkhd - before.hblkhd) + (during.arena - before.arena))
    print(json.dumps(got))
""")


def _new_system_bytes_per_call(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_tuned_process_reuses_freed_blocks():
    default = _new_system_bytes_per_call("default")
    tuned = _new_system_bytes_per_call("tuned")
    # glibc's defaults give the memory back on free (unmap, heap trim) and take it again on a later call (until
    # its dynamic thresholds adapt); tuned, the memory of the first call is reused by every later one
    assert sum(b >= 7 << 20 for b in default[1:]) >= 1, default  # the 8 MiB (less what was free already)
    assert tuned[1:] == [0, 0, 0], tuned


def test_tune_malloc_is_idempotent():
    assert tune_malloc() is tune_malloc()


def test_numpy_hugepage_advice_can_be_switched_off_and_back():
    before = numpy_hugepages(False)
    if before is None:
        pytest.skip("this numpy has no _set_madvise_hugepage")
    try:
        assert numpy_hugepages(False) is False  # returns the setting it replaces
        assert numpy_hugepages(True) is False
        assert numpy_hugepages(True) is True
    finally:
        numpy_hugepages(before)
