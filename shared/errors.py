"""Error types. Every error names the file, token or value at fault."""
from __future__ import annotations

from pathlib import Path


class CalicoError(Exception):
    """Base class of calico's own errors (the CLI prints these without a traceback)."""


class InputError(CalicoError):
    """Bad input data: a truncated or corrupt file, a missing file, a dangling token."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(CalicoError, ValueError):
    """A configuration value out of its allowed range, naming the field."""

    def __init__(self, field: str, value, why: str):
        self.field = field
        self.value = value
        super().__init__(f"config value {field}={value!r}: {why}")


class BackendUnavailable(CalicoError):
    """A requested backend (e.g. the GPU) is not available on this machine."""
