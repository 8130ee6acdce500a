"""How the command line shows things: frames as tables, progress events as one rich bar, errors as one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    import polars as pl

    from engine.core.progress import Progress, ProgressCallback

stderr = Console(stderr=True)
FRAME_WIDTH_CHARS = 200
FRAME_STRING_CHARS = 80


def print_frame(frame: pl.DataFrame) -> None:
    """A frame on stdout, every row and column."""
    import polars as pl

    with pl.Config(tbl_rows=max(frame.height, 1), tbl_cols=-1, fmt_str_lengths=FRAME_STRING_CHARS, tbl_width_chars=FRAME_WIDTH_CHARS):
        print(frame)


def print_table(frame: pl.DataFrame, title: str | None = None) -> None:
    """A frame as a rich table on stdout that fits the terminal (long text cells wrap inside their column)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold", show_lines=False)
    for name in frame.columns:
        table.add_column(name, overflow="fold", no_wrap=name in ("id", "kind", "score", "status"))
    for row in frame.iter_rows():
        table.add_row(*("" if value is None else f"{value}" for value in row))
    Console().print(table)


def print_error(message: str, prefix: str = "error") -> None:
    """One line on stderr: ``error: ...`` (or ``warning: ...``)."""
    colour = "red" if prefix == "error" else "yellow"
    stderr.print(f"[{colour}]{prefix}:[/{colour}] {escape(message)}", soft_wrap=True, highlight=False)


@contextmanager
def progress_bar(lines: bool = False) -> Iterator[ProgressCallback]:
    """The one renderer of :class:`engine.core.progress.Progress` events: a rich bar per task on stderr.

    With ``lines``, each event is also printed as a line on stdout (training epochs: a log worth keeping).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with RichProgress(*columns, console=stderr, transient=lines) as bar:
        tasks: dict[str, int] = {}

        def show(event: Progress) -> None:
            if event.task not in tasks:
                tasks[event.task] = bar.add_task(event.task, total=event.total, detail="")
            bar.update(tasks[event.task], total=event.total, completed=event.done, detail=event.detail)
            if lines:  # on stdout, as "epoch   3/40  loss ...": a log worth keeping
                print(f"{event.unit.removesuffix('s')} {event.done:3d}/{event.total}  {event.detail}", flush=True)

        yield show
