"""What a run shows while it works: files done of total, percent, files/s, faces, errors, ETA.

On a terminal, a live bar drawn by rich (already installed with Ray, so no new dependency;
it redraws in place, takes custom columns, and knows when stderr is not a terminal).
Anywhere else (a log file, `ray job logs`), one plain line about every `interval` seconds,
so a log stays readable. Ray's own progress output is off (see session.quiet_ray).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

PLAIN_EVERY_S = 30.0
REFRESH_PER_S = 2.0  # the bar redraws at least every 0.5 s


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or unknown
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Display:
    """What both displays share: a rich bar when `stream` is a terminal, else plain lines at
    most every `interval` seconds (the first at once when `first_line_now`)."""

    def __init__(self, enabled: bool, stream: IO[str] | None, interval: float, clock: Any,
                 first_line_now: bool) -> None:
        self._enabled = enabled
        self._stream = stream or sys.stderr
        self._clock, self._interval = clock, interval
        self._last = clock() - (interval if first_line_now else 0.0)
        self._bar: Any = None
        self._task: Any = None

    def _wants_bar(self) -> bool:
        return self._enabled and getattr(self._stream, "isatty", lambda: False)()

    def _start_bar(self, columns: list[Any], total: int, **fields: Any) -> None:
        from rich.console import Console
        from rich.progress import Progress as Bar

        self._bar = Bar(*columns, console=Console(file=self._stream),
                        refresh_per_second=REFRESH_PER_S, transient=False)
        self._task = self._bar.add_task("", total=total, **fields)
        self._bar.start()

    def _plain(self, line: str, now: float) -> None:
        """Print `line` if the interval has passed since the last one."""
        if self._enabled and now - self._last >= self._interval:
            self._last = now
            print(line, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class Progress(_Display):
    """Counts committed files, faces and error files against `total`, and shows them."""

    def __init__(self, total: int, enabled: bool = True, stream: IO[str] | None = None,
                 interval: float = PLAIN_EVERY_S, clock: Any = time.monotonic) -> None:
        super().__init__(enabled, stream, interval, clock, first_line_now=False)
        self.total, self.files, self.faces, self.errors = total, 0, 0, 0
        self._started = self._last
        if total and self._wants_bar():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._start_bar([TextColumn("fer-batch"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("files"), TaskProgressColumn(),
                             TextColumn("{task.fields[rate]} files/s, {task.fields[faces]} "
                                        "faces, {task.fields[errors]} errors, ETA"),
                             TimeRemainingColumn()], total, rate="0.0", faces=0, errors=0)

    def update(self, files: int, faces: int, errors: int) -> None:
        """Add what one commit held."""
        self.files += files
        self.faces += faces
        self.errors += errors
        now = self._clock()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.files, rate=f"{self.rate(now):.1f}",
                             faces=self.faces, errors=self.errors)
        else:
            self._plain(self.line(now), now)

    def rate(self, now: float | None = None) -> float:
        elapsed = (self._clock() if now is None else now) - self._started
        return self.files / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        """The plain form: `[fer-batch] 1200/5000 files (24%), 8.1 files/s, ...`."""
        rate = self.rate(now)
        left = (self.total - self.files) / rate if rate > 0 else float("nan")
        share = 100 * self.files / self.total if self.total else 100.0
        return (f"[fer-batch] {self.files}/{self.total} files ({share:.0f}%), "
                f"{rate:.1f} files/s, {self.faces} faces, {self.errors} errors, "
                f"ETA {_duration(left)}")


class NativeStderrTo:
    """Within the block, what Ray's C++ core writes to this process's stderr (file
    descriptor 2: lines such as `E ... core_worker.cc:...`) goes to `path` instead, while
    Python's own sys.stderr (fer-batch's progress and messages) stays on the terminal."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._saved: int | None = None
        self._stream: Any = None
        self._old_stderr: Any = None

    def __enter__(self) -> NativeStderrTo:
        import os

        try:
            uses_fd2 = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):  # a captured or replaced sys.stderr
            uses_fd2 = False
        sys.stderr.flush()
        self._saved = os.dup(2)
        if uses_fd2:  # keep Python's stderr on the terminal, through a copy of the fd
            self._old_stderr = sys.stderr
            self._stream = os.fdopen(os.dup(self._saved), "w", buffering=1,
                                     encoding=sys.stderr.encoding, errors="backslashreplace")
            sys.stderr = self._stream
        log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
        os.close(log)
        return self

    def __exit__(self, *exc: Any) -> None:
        import os

        if self._saved is None:
            return
        if self._stream is not None:
            self._stream.flush()
            sys.stderr = self._old_stderr
            self._stream.close()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None


class TrainProgress(_Display):
    """Epochs and steps of a `fer-batch train` run, with the running loss and accuracy: a
    live bar on a terminal, one plain line about every `interval` seconds elsewhere. Fed
    with what the first worker last wrote (fer_batch/train/loop.py, `ProgressFile`)."""

    def __init__(self, epochs: int, steps_per_epoch: int, enabled: bool = True,
                 stream: IO[str] | None = None, interval: float = PLAIN_EVERY_S,
                 clock: Any = time.monotonic) -> None:
        super().__init__(enabled, stream, interval, clock, first_line_now=True)
        self.epochs, self.steps = epochs, max(1, steps_per_epoch)
        self._seen: dict[str, Any] | None = None
        if self._wants_bar():
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

            self._start_bar([TextColumn("fer-batch train"), BarColumn(),
                             TextColumn("{task.fields[where]}, ETA"), TimeRemainingColumn()],
                            epochs * self.steps, where="")

    def line(self, state: dict[str, Any]) -> str:
        """`epoch 3/10, step 120/448, loss 1.4210, accuracy 0.4512`."""
        return (f"epoch {state['epoch'] + 1}/{self.epochs}, step {state['step']}/{self.steps}, "
                f"loss {state['loss']:.4f}, accuracy {state['accuracy']:.4f}")

    def show(self, state: dict[str, Any] | None) -> None:
        if not self._enabled or not state or state == self._seen:
            return
        self._seen = state
        if self._bar is not None:
            done = state["epoch"] * self.steps + min(state["step"], self.steps)
            self._bar.update(self._task, completed=done, where=self.line(state))
        else:
            self._plain(f"[fer-batch] {self.line(state)}", self._clock())

    def finished(self) -> None:
        """The run ended well: the bar shows every step done."""
        if self._bar is not None:
            self._bar.update(self._task, completed=self.epochs * self.steps)
