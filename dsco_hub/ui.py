"""Rich progress bars shared by every step (loading, selection, sampling, training, writing)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(disable: bool = False) -> Progress:
    """A `rich.progress.Progress` with description, bar, count, a free `info` field, elapsed and remaining time.

    Tasks must be added with an `info=` field (an empty string is fine).
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=disable,
    )
