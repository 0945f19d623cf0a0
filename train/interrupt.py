"""Stopping a training run cleanly on SIGINT (Ctrl-C, also forwarded by torchrun's agent to its ranks) or SIGTERM
(a scheduler's, ``kill``).

While :class:`StopSignals` is installed (the training loop's steps), the first SIGINT or SIGTERM is only recorded;
the loop finishes the step in progress, agrees with the other ranks to stop after that same step (the flags are
all-reduced with the step's losses), writes a checkpoint of it and raises :class:`TrainingInterrupted`. A second
signal of the same kind raises ``KeyboardInterrupt`` at once (abandoning the step; the checkpoints already
written stay whole). DataLoader workers ignore both signals (:func:`ignore_stop_signals`): a Ctrl-C reaches the
whole foreground process group, and a worker that died of it would take the step down with it.
"""
from __future__ import annotations

import signal
import threading

from shared.errors import CalicoError

#: The signals that stop a run cleanly, in the order of preference for the exit status when ranks got different
#: ones (torchrun's agent forwards the signal it got to every rank; a rank may also be signalled alone).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(CalicoError):
    """The run stopped on a signal after writing a checkpoint of its last step; ``exit_status`` is 128 + the
    signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, step: int, checkpoint, out_dir):
        self.signum, self.step = int(signum), int(step)
        self.checkpoint, self.out_dir = checkpoint, out_dir
        self.exit_status = 128 + self.signum
        super().__init__(f"interrupted by {signal.Signals(self.signum).name} after step {self.step}: checkpoint "
                         f"{checkpoint} written; rerun the same command to resume (it resumes from {out_dir})")


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the training DataLoader: the worker ignores SIGINT and SIGTERM (the main process
    decides when to stop and shuts its workers down)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class StopSignals:
    """Context manager recording the first SIGINT / SIGTERM (``received``: the signals seen, in order); restores
    the previous handlers on exit. Outside the main thread (signals cannot be handled there) it records nothing."""

    def __init__(self):
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if signum in self.received:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.received.append(signum)

    def flags(self) -> list[float]:
        """1.0 / 0.0 per :data:`STOP_SIGNALS`: whether this process got it (all-reduced across ranks)."""
        return [float(s in self.received) for s in STOP_SIGNALS]


def agreed_signal(flags) -> int | None:
    """The signal every rank stops on, from the all-reduced (mean) :meth:`StopSignals.flags`: the first of
    :data:`STOP_SIGNALS` some rank got, or None."""
    return next((int(s) for s, f in zip(STOP_SIGNALS, flags) if f > 0), None)
