"""Transfer progress: rich bars on a terminal, plain lines otherwise, or nothing.

Pull and push report through the small `Reporter` interface, so the
transfer code does not know how (or whether) it is shown.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Task(Protocol):
    def advance(self, n: int) -> None: ...

    def finish(self, status: str) -> None: ...


class Reporter(Protocol):
    def task(self, label: str, total: int) -> Task: ...

    def note(self, text: str) -> None: ...

    def __enter__(self) -> "Reporter": ...

    def __exit__(self, *exc) -> None: ...


class _NullTask:
    def advance(self, n: int) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


class Quiet:
    """Shows nothing."""

    def task(self, label: str, total: int) -> Task:
        return _NullTask()

    def note(self, text: str) -> None:
        pass

    def __enter__(self) -> "Quiet":
        return self

    def __exit__(self, *exc) -> None:
        pass


class _PlainTask:
    def __init__(self, owner: "Plain", label: str, total: int) -> None:
        self.owner, self.label, self.total = owner, label, total
        self.done = 0
        self.started = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n

    def finish(self, status: str) -> None:
        secs = max(time.monotonic() - self.started, 1e-6)
        extra = f" ({human(self.done)}, {human(self.done / secs)}/s)" if self.done else ""
        self.owner.note(f"{self.label}: {status}{extra}")


class Plain:
    """One line per finished item, for logs and pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self._lock = threading.Lock()

    def task(self, label: str, total: int) -> Task:
        return _PlainTask(self, label, total)

    def note(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    def __enter__(self) -> "Plain":
        return self

    def __exit__(self, *exc) -> None:
        pass


class _RichTask:
    def __init__(self, owner: "Fancy", label: str, total: int) -> None:
        self.owner = owner
        self.id = owner.bars.add_task(label, total=total or None)
        owner.bars.update(owner.overall, total=(owner.bars.tasks[owner.overall].total or 0) + total)

    def advance(self, n: int) -> None:
        self.owner.bars.advance(self.id, n)
        self.owner.bars.advance(self.owner.overall, n)

    def finish(self, status: str) -> None:
        task = self.owner.bars.tasks[self.id]
        if task.total and task.completed < task.total:
            self.owner.bars.advance(self.owner.overall, task.total - task.completed)
        self.owner.bars.update(self.id, description=f"{task.description} {status}",
                               completed=task.total or 0)


class Fancy:
    """A bar per blob (bytes, rate) and an overall line, on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TransferSpeedColumn)

        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), console=Console(stderr=True),
                             transient=False)
        self.overall = self.bars.add_task("total", total=0)

    def task(self, label: str, total: int) -> Task:
        return _RichTask(self, label, total)

    def note(self, text: str) -> None:
        self.bars.console.print(text, markup=False, highlight=False)

    def __enter__(self) -> "Fancy":
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()


def reporter(mode: str = "auto", quiet: bool = False) -> Reporter:
    """`auto` (bars on a TTY, else plain), `tty`, `plain`; quiet wins."""
    if quiet or mode == "quiet":
        return Quiet()
    if mode == "tty" or (mode == "auto" and sys.stderr.isatty()):
        return Fancy()
    return Plain()
