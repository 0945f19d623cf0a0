"""shared.malloc: after tune_malloc, freed scratch blocks are reused instead of being mapped (and faulted in) again."""
import subprocess
import sys
import textwrap

import pytest

from shared.malloc import _libc, numpy_hugepages, tune_malloc

pytestmark = pytest.mark.skipif(_libc() is None, reason="no glibc mallopt on this platform")

_PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "tuned":
        from shared.malloc import tune_malloc
        assert tune_malloc()
    def once():  # like a kernel call: several scratch arrays alive at once, then all freed
        arrays = [np.empty(1 << 17) for _ in range(8)]  # 8 x 1 MiB
        for a in arrays:
            a[::512] = 1.0  # touch every page
        del arrays
    once()
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        once()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 20)
""")


def _faults_per_call(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_tuned_process_reuses_freed_blocks():
    default = _faults_per_call("default")
    tuned = _faults_per_call("tuned")
    assert default > 1000  # most of the 2048 pages faulted in again per call with glibc's defaults
    assert tuned < 50      # reused: no page is faulted in again


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
