"""Progress shared by every step (loading, selection, sampling, training, writing).

On a terminal, Rich progress bars. Elsewhere (a CI runner's log, a file), Rich would print each bar once, when it
ends, so a long evaluation would look hung: `progress_bar` gives plain lines instead, at a bounded rate (each 10 %
of a task, or every 60 s, as tqdm does in CI), with the task, the count, the elapsed time and an ETA.
`set_quiet(True)` (`--quiet`) prints no progress at all.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_QUIET = False
PLAIN_EVERY_FRACTION = 0.1  # a plain progress line at each 10 % of a task ...
PLAIN_EVERY_SECONDS = 60.0  # ... or after this many seconds without one


def set_quiet(quiet: bool) -> None:
    """`--quiet`: no progress output from here on (errors and results still print)."""
    global _QUIET
    _QUIET = bool(quiet)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class _PlainTask:
    description: str
    total: float | None
    info: str
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_line: float = field(default_factory=time.monotonic)
    last_step: int = -1  # the last 10 % step printed
    done: bool = False


class PlainProgress:
    """Progress as plain lines for logs: the subset of `rich.progress.Progress` that dsco-hub uses.

    A line reads `[dsco-hub] evaluate result: 450/900 (50 %) 320 images, elapsed 0:02:10, ETA 0:02:10`. It is
    printed when a task is added, at each `PLAIN_EVERY_FRACTION` of its total, after `PLAIN_EVERY_SECONDS` without a
    line, and when it completes (once).

    Args:
        stream (`TextIO`, *optional*, defaults to `sys.stderr`): where lines go.
        disable (`bool`, *optional*, defaults to False): print nothing (other processes of a launch, `--quiet`).
        clock (`Callable[[], float]`, *optional*): monotonic seconds (tests pass a fake clock).
    """

    def __init__(self, stream: TextIO | None = None, disable: bool = False, clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.disable = disable
        self.clock = clock
        self.tasks: dict[int, _PlainTask] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = 100.0, info: str = "", **fields) -> int:
        """Start a task; returns its id. `info` is a free text shown after the count."""
        now = self.clock()
        task_id = len(self.tasks)
        self.tasks[task_id] = _PlainTask(description, total, info, started=now, last_line=now)
        self._line(task_id, force=True)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        """Add `advance` to the task's count."""
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        info: str | None = None,
        **fields,
    ) -> None:
        """Change a task's total, count (`completed` or `advance`) or `info`, as `Progress.update` does."""
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if info is not None:
            task.info = info
        self._line(task_id, force=info is not None and self._finished(task))

    @staticmethod
    def _finished(task: _PlainTask) -> bool:
        return task.total is not None and task.completed >= task.total

    def _line(self, task_id: int, force: bool = False) -> None:
        task, now = self.tasks[task_id], self.clock()
        step = int(task.completed / task.total / PLAIN_EVERY_FRACTION) if task.total else 0
        finished = self._finished(task)
        due = step > task.last_step or now - task.last_line >= PLAIN_EVERY_SECONDS
        if finished and task.done and not force:
            return
        if not (due or force or (finished and not task.done)):
            return
        task.last_step, task.last_line, task.done = max(step, task.last_step), now, task.done or finished
        if self.disable:
            return
        elapsed = now - task.started
        count = f"{task.completed:g}/{task.total:g}" if task.total is not None else f"{task.completed:g}"
        share = f" ({100 * task.completed / task.total:.0f} %)" if task.total else ""
        eta = ""
        if task.total and 0 < task.completed < task.total:
            eta = f", ETA {_clock(elapsed * (task.total - task.completed) / task.completed)}"
        info = f" {task.info}" if task.info else ""
        self.stream.write(f"[dsco-hub] {task.description}: {count}{share}{info}, elapsed {_clock(elapsed)}{eta}\n")
        self.stream.flush()


def progress_bar(disable: bool = False) -> Progress | PlainProgress:
    """Progress for one command: Rich bars on a terminal, `PlainProgress` lines elsewhere, nothing when quiet.

    Rich's bars show the description, bar, count, a free `info` field, elapsed and remaining time. Tasks must be
    added with an `info=` field (an empty string is fine).

    Args:
        disable (`bool`, *optional*, defaults to False): no output (the other processes of a launch).
    """
    disable = disable or _QUIET
    console = Console(stderr=True)  # standard output stays for results (`--json -`)
    if not console.is_terminal:
        return PlainProgress(disable=disable)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )
