"""One line when Numba compiles kernels, instead of a silent wait on the first run.

The kernels are compiled with ``cache=True``: the first run after installing (or changing) the code compiles them
and writes the cache (``__pycache__`` next to the sources, or ``$NUMBA_CACHE_DIR``); later runs load them from it.
:func:`announce_compilation` listens to Numba's ``numba:compile`` event, which fires only for a kernel that is not
in the cache (loading from the cache fires nothing), so the line is printed only when compilation really
happens, once, as it starts.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

#: Seconds that compiling every preprocessing kernel took on a cold cache (2-core VM, ``warm_up`` of
#: :mod:`preprocess.sweep`: 32 s; loading them from the cache: 0.4 s).
PREPROCESS_COMPILE_S = 30


def compile_message(what: str, seconds: float | None = None) -> str:
    """The line printed: ``compiling <what> (Numba, first run only[, ~N s on a free core]; cached afterwards)...``."""
    eta = f", ~{seconds:.0f} s on a free core" if seconds else ""
    return f"compiling {what} (Numba, first run only{eta}; cached afterwards)..."


@contextmanager
def announce_compilation(notify: Callable[[str], object], what: str = "the CPU kernels",
                         seconds: float | None = None) -> Iterator[None]:
    """Call ``notify(compile_message(what, seconds))`` once, when the first Numba compilation inside the block
    starts; never when every kernel comes from the cache."""
    from numba.core import event

    lock, said = threading.Lock(), []

    class _First(event.Listener):
        def on_start(self, ev) -> None:
            with lock:
                if said:
                    return
                said.append(True)
            notify(compile_message(what, seconds))

        def on_end(self, ev) -> None:
            pass

    with event.install_listener("numba:compile", _First()):
        yield
