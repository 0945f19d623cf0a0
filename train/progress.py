"""What a training run tells the person watching it (rank 0 only), on stderr (stdout keeps the CLI's JSON summary):
a tqdm bar when stderr is a terminal, else one plain line every ``every`` steps and at the last step::

    step 40/200 (20%)  loss 3.1234  2.31 steps/s  ETA 0:01:09

steps/s is the mean over the steps of this process since its first step (that one includes start-up and is left
out); ETA = remaining steps / that rate. :meth:`Progress.note` prints other lines (resume, interruption) without
breaking the bar.
"""
from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO


def progress_line(step: int, total: int, loss: float, rate: float | None) -> str:
    """The plain progress line of ``step`` of ``total`` (``rate``: steps/s, None before it is known)."""
    speed = f"{rate:.2f} steps/s  ETA {datetime.timedelta(seconds=round((total - step) / rate))}" if rate else \
        "- steps/s  ETA -"
    return f"step {step}/{total} ({100 * step // total}%)  loss {loss:.4f}  {speed}"


class Progress:
    """Progress of a run to step ``total`` (a plain line every ``every`` steps); ``enabled=False`` (ranks but 0)
    prints nothing."""

    def __init__(self, total: int, every: int, enabled: bool = True, stream: TextIO | None = None):
        self.total, self.every, self.enabled = total, max(1, every), enabled
        self.stream = stream if stream is not None else sys.stderr
        self._first: tuple[int, float] | None = None  # (step, time) at the end of this process's first step
        self.bar = None

    def _open_bar(self, step: int) -> None:
        """The tqdm bar, from the step before ``step`` (the first of this process), when stderr is a terminal."""
        if not self.stream.isatty():
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=self.total, initial=step - 1, unit="step", file=self.stream, dynamic_ncols=True)

    def rate(self, step: int) -> float | None:
        """Steps/s since the end of this process's first step (None until a second step is done)."""
        if self._first is None or step <= self._first[0]:
            return None
        return (step - self._first[0]) / max(time.perf_counter() - self._first[1], 1e-9)

    def update(self, step: int, loss: float) -> None:
        """Step ``step`` is done with training loss ``loss``."""
        if not self.enabled:
            return
        if self._first is None:
            self._first = (step, time.perf_counter())
            self._open_bar(step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif step % self.every == 0 or step == self.total:
            self.note(progress_line(step, self.total, loss, self.rate(step)))

    def note(self, text: str) -> None:
        """Print ``text`` as its own line."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
