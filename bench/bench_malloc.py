"""Benchmark: minor page faults per kernel-like call with glibc's malloc defaults and after
``shared.malloc.tune_malloc`` (the figure behind shared/malloc.py; the unit test only checks the behaviour, that
freed blocks are reused).

    python bench/bench_malloc.py [--calls 20] [--arrays 8] [--mib 1]

A call allocates ``--arrays`` scratch arrays of ``--mib`` MiB, touches every page, frees them (as the per-sweep
kernels do); each mode runs in a fresh process, one warm-up call, then ``--calls`` measured ones
(``getrusage(RUSAGE_SELF).ru_minflt``). Expected: with the defaults most pages fault in again on every call; tuned,
almost none.
"""
from __future__ import annotations

import _common

_common.limit_threads(1)

import argparse
import subprocess
import sys
import textwrap

_PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    mode, calls, arrays, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    if mode == "tuned":
        from shared.malloc import tune_malloc
        assert tune_malloc()
    n = int(mib * (1 << 17))  # float64 elements
    def once():
        scratch = [np.empty(n) for _ in range(arrays)]
        for a in scratch:
            a[::512] = 1.0  # touch every 4 KiB page
        del scratch
    once()
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        once()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / calls)
""")


def faults_per_call(mode: str, calls: int, arrays: int, mib: float) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, str(calls), str(arrays), str(mib)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20, help="measured calls per mode (after one warm-up)")
    ap.add_argument("--arrays", type=int, default=8, help="scratch arrays alive at once per call")
    ap.add_argument("--mib", type=float, default=1.0, help="size of each scratch array (MiB)")
    args = ap.parse_args(argv)
    print(_common.machine())
    pages = int(args.arrays * args.mib * 256)
    print(f"a call: {args.arrays} x {args.mib:g} MiB scratch arrays ({pages} pages of 4 KiB), touched, freed")
    for mode in ("default", "tuned"):
        f = faults_per_call(mode, args.calls, args.arrays, args.mib)
        print(f"{mode:8s} {f:8.1f} minor faults per call ({100 * f / pages:.0f} % of the pages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
