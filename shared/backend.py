"""Compute-backend selection, made once per run: ``auto``, ``cpu`` or ``gpu``.

``cupy`` and ``cuml`` are optional imports. Asking for ``gpu`` where there is none is an error
(:class:`BackendUnavailable`), never a silent fallback; ``auto`` picks the GPU only when CuPy sees a device
and cuML imports.
"""
from __future__ import annotations

import functools
from typing import Literal

from shared.errors import BackendUnavailable, ConfigError

BackendName = Literal["auto", "cpu", "gpu"]
BACKENDS = ("auto", "cpu", "gpu")


@functools.lru_cache(maxsize=1)
def gpu_status() -> tuple[bool, str]:
    """(available, reason). Available means CuPy sees at least one CUDA device and cuML imports."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install
        return False, f"cupy is not importable ({exc.__class__.__name__}: {exc}); install calico[gpu]"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no CUDA device ({exc.__class__.__name__}: {exc})"
    if n <= 0:
        return False, "no CUDA device"
    try:
        import cuml  # noqa: F401
    except Exception as exc:
        return False, f"cuml is not importable ({exc.__class__.__name__}: {exc}); install calico[gpu]"
    return True, f"{n} CUDA device(s)"


def resolve_backend(name: str) -> Literal["cpu", "gpu"]:
    """Resolve ``auto|cpu|gpu`` to ``cpu`` or ``gpu``; ``gpu`` without a GPU raises BackendUnavailable."""
    if name not in BACKENDS:
        raise ConfigError("backend", name, f"expected one of {', '.join(BACKENDS)}")
    if name == "cpu":
        return "cpu"
    ok, why = gpu_status()
    if name == "gpu":
        if not ok:
            raise BackendUnavailable(f"backend 'gpu' was requested but is not available: {why}")
        return "gpu"
    return "gpu" if ok else "cpu"
