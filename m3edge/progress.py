"""Progress of the long commands (export, verify, eval, train, bench), always on stderr: stdout is the result's
(one JSON object under ``--json``).

On a terminal, a tqdm bar when tqdm is installed (the export extra). Otherwise (CI, ``ssh host cmd | tee``, a
device without tqdm) plain lines a log keeps, at most one per ~5% of the work and per ``interval`` seconds,
each with n/N, elapsed time and an ETA::

    export host-cpu: 12/45 modules (27%), 3.1 s elapsed, ETA 8.4 s - layer0.expert_05

``quiet`` prints nothing. Steps that announce a phase (``update(..., force=True)``) always get their line.
Stdlib only: the device runs ``eval`` and ``bench`` without the export extra.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Callable

STEPS = 20  # a line each 1/20th (5%) of the total when not on a terminal
INTERVAL = 1.0  # and at most one a second (a phase's line excepted)


def fmt_seconds(s: float) -> str:
    """``12.3 s`` under a minute, then ``m:ss`` and ``h:mm:ss``."""
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


def is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal (a closed or fake stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """``n`` of ``total`` units done; ``total=None`` when the count is not known ahead (lines then say n only)."""

    def __init__(self, desc: str, total: int | None, unit: str = "step", quiet: bool = False,
                 stream: IO[str] | None = None, interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.desc, self.total, self.unit, self.quiet = desc, total, unit, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.clock = interval, clock
        self.n = 0
        self.t0 = clock()
        self._last_line = None  # when the last line was printed
        self._last_step = 0  # the last 5% step printed (the start counts as printed)
        self._closed = False
        self.bar = None
        if not quiet and is_terminal(self.stream):
            try:
                from tqdm import tqdm
            except ImportError:  # a device without the export extra: lines on the terminal too
                pass
            else:
                self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def line(self, label: str = "") -> str:
        """The progress line for the count so far, with ``label`` at its end."""
        elapsed = self.clock() - self.t0
        if self.total:
            head = f"{self.desc}: {self.n}/{self.total} {self.unit}s ({self.n / self.total:.0%}), " \
                   f"{fmt_seconds(elapsed)} elapsed"
            if 0 < self.n < self.total:
                head += f", ETA {fmt_seconds(elapsed / self.n * (self.total - self.n))}"
        else:
            head = f"{self.desc}: {self.n} {self.unit}s, {fmt_seconds(elapsed)} elapsed"
        return head + (f" - {label}" if label else "")

    def update(self, n: int = 1, label: str = "", force: bool = False) -> None:
        """``n`` more units done; ``label`` says what (the module exported, the row measured). ``force``: print
        this step's line whatever the throttle (a new phase, a result worth keeping in the log)."""
        self.n += n
        if self.total is not None and self.n > self.total:  # a caller's estimate was short: never print 13/12
            self.total = self.n
        if self.quiet:
            return
        if self.bar is not None:
            if self.bar.total != self.total:
                self.bar.total = self.total
            if label:
                self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(n)
            if force and label:
                self.bar.write(f"{self.desc}: {label}", file=self.stream)
            return
        now = self.clock()
        step = self._step()
        due = step > self._last_step and (self._last_line is None or now - self._last_line >= self.interval)
        if force or due or (self.total is not None and self.n == self.total):
            self._print(label, now, step)

    def _step(self) -> int:
        return self.n * STEPS // self.total if self.total else self.n

    def _print(self, label: str, now: float, step: int) -> None:
        print(self.line(label), file=self.stream, flush=True)
        self._last_line, self._last_step = now, step

    def note(self, message: str) -> None:
        """A line that is not a step (what a phase is doing), above the bar on a terminal."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(f"{self.desc}: {message}", file=self.stream)
        else:
            print(f"{self.desc}: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar; in line mode, print the final count unless it was the last line already."""
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet and self.n and self._last_step != self._step():
            self._print("", self.clock(), -1)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
