"""Plumbing shared by the benchmark scripts: thread pinning, the machine line, malloc tuning, median timings.

Import this module first in a benchmark (``import _common`` from a script run as ``python bench/X.py``): the
thread limits must be set before numpy or numba load their thread pools.
"""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np

_THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_threads(n: int = 1, pin: bool = True) -> None:
    """BLAS/OpenMP/Numba thread pools of ``n`` threads; with ``pin`` and n == 1, the process on one CPU."""
    if "numpy" in sys.modules and "numba" in sys.modules and os.environ.get("NUMBA_NUM_THREADS") != str(n):
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    if pin and n == 1:
        try:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        except (AttributeError, OSError):
            pass


def machine() -> str:
    """CPU model, logical CPUs, Python and numpy versions: the line every benchmark prints first."""
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    return (f"{model} ({platform.machine()}, {os.cpu_count()} logical CPUs), Python {platform.python_version()}, "
            f"numpy {np.__version__}")


def add_malloc_option(ap) -> None:
    """``--default-malloc``: leave glibc's malloc thresholds alone (default: tuned as the preprocessing workers)."""
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc thresholds alone (default: shared.malloc.tune_malloc, as the "
                         "preprocessing workers run)")


def setup_malloc(args) -> str:
    """Apply ``--default-malloc`` (see :func:`add_malloc_option`); the line to print."""
    if getattr(args, "default_malloc", False):
        return "malloc: glibc defaults (--default-malloc)"
    from shared.malloc import tune_malloc

    return f"malloc: thresholds tuned as in the preprocessing workers (shared.malloc; applied: {tune_malloc()})"


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, float, object]:
    """Median and minimum milliseconds of ``repeats`` calls of ``fn`` (after one warm-up call that also loads or
    compiles Numba kernels), and the last result."""
    out = fn() if warmup else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3, float(np.min(times)) * 1e3, out


def timed_steps(step, steps: int, cuda: bool, rss0: int) -> tuple[list[float], float]:
    """One warm-up call of ``step`` then ``steps`` timed ones: (seconds of each, peak MiB). Peak memory: on CUDA
    ``torch.cuda.max_memory_allocated`` (reset it before building the model), on CPU the growth of the process's
    maximum resident set size from ``rss0`` (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, taken just before the
    model was built)."""
    import resource

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if cuda:
        import torch

        return times, torch.cuda.max_memory_allocated() / 2**20
    return times, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024


def timed_training(model, batch: dict, steps: int, device: str, amp: bool, rss0: int) -> tuple[list[float], float]:
    """:func:`timed_steps` of training steps of ``model`` on ``batch``: AdamW (lr 1e-4, wd 0.01) over the parameters
    that require gradients, ``model(batch)["loss"]`` backward, bfloat16 autocast when ``amp`` on CUDA (as the
    loop). ``rss0``: as :func:`timed_steps`, taken before the model was built."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and amp) else torch.autocast("cpu", enabled=False):
            out = model(batch)
        out["loss"].backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        return out["loss"].item()

    return timed_steps(step, steps, cuda, rss0)


def median_ms(fn, repeats: int, warmup: bool = True) -> float:
    """Median milliseconds of ``repeats`` calls (see :func:`timed`)."""
    return timed(fn, repeats, warmup)[0]


def add_timer(totals, obj, name: str) -> None:
    """Wrap ``obj.name`` so that its wall time is added to ``totals[name]`` (a defaultdict(float)); a name that
    ``obj`` lacks (an older checkout) is left out."""
    fn = getattr(obj, name, None)
    if fn is None:
        return

    def wrapped(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            totals[name] += time.perf_counter() - t0

    setattr(obj, name, wrapped)
