"""Terminal rendering with rich: progress bars and tables. Only the CLI imports this."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)
out = Console()


class RichReporter:
    """A Reporter (compressor.progress) drawn as a rich progress bar on stderr."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **fields: float | str) -> None:
        if self._progress is None or self._task is None:
            return
        info = "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
        )
        if info:
            self._progress.update(self._task, advance=n, info=info)
        else:
            self._progress.update(self._task, advance=n)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress, self._task = None, None


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, show_lines=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*(fmt(v) for v in row))
    return t


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)
