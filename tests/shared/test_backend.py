import pytest

from shared import backend
from shared.errors import BackendUnavailable, ConfigError


def test_cpu_is_always_cpu():
    assert backend.resolve_backend("cpu") == "cpu"


def test_unknown_backend_names_the_value():
    with pytest.raises(ConfigError, match="backend='tpu'"):
        backend.resolve_backend("tpu")


def test_gpu_request_without_gpu_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(backend, "gpu_status", lambda: (False, "no CUDA device"))
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        backend.resolve_backend("gpu")
    assert backend.resolve_backend("auto") == "cpu"


def test_auto_takes_gpu_when_present(monkeypatch):
    monkeypatch.setattr(backend, "gpu_status", lambda: (True, "1 CUDA device(s)"))
    assert backend.resolve_backend("auto") == "gpu"
    assert backend.resolve_backend("gpu") == "gpu"


def test_gpu_status_on_this_machine_is_consistent():
    ok, why = backend.gpu_status()
    assert isinstance(ok, bool) and why
    if not ok:
        with pytest.raises(BackendUnavailable):
            backend.resolve_backend("gpu")
