"""How the command line shows things: rows as tables that fit the terminal (or CSV/JSON/parquet for scripts),
progress events as one rich bar, errors as one line."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from engine.core.errors import InvalidRequestError

if TYPE_CHECKING:
    import polars as pl

    from engine.core.progress import Progress, ProgressCallback

stderr = Console(stderr=True)
OUTPUT_FORMATS = ("table", "csv", "json", "parquet")
FILE_FORMATS = OUTPUT_FORMATS[1:]
SHORT_ID_CHARS = 12  # of a 32-character hash id in a table; any unique prefix is accepted back (as git does)
FLOAT_DIGITS = 3
LONG_HASH = re.compile(r"^[0-9a-f]{24,}$")
PATH_COLUMNS = ("path", "query_path")
ID_COLUMNS = ("id", "parent", "model")
MIN_PATH_CHARS = 16
MIN_TEXT_CHARS = 10  # a wrapped text column keeps this many cells before the table overflows
COLUMN_GAP = 2
ELLIPSIS = "…"
TIME_FORMAT = "%Y-%m-%d %H:%M"


def add_output_options(parser: argparse.ArgumentParser, *, out: bool = True) -> None:
    """``--format`` (and ``--out``) for a command that returns rows: tables for people, files for scripts."""
    group = parser.add_argument_group("output")
    group.add_argument("--format", choices=OUTPUT_FORMATS, default=OUTPUT_FORMATS[0],
                       help="table (for reading; ids shortened, paths relative) or csv, json, parquet (every column, in full)")
    if out:
        group.add_argument("--out", type=Path, help="write the rows to this file (its suffix gives the format unless --format)")


def output_format(args: argparse.Namespace) -> str:
    """The format asked for: ``--format``, else the suffix of ``--out``, else a table."""
    chosen, out = getattr(args, "format", "table"), getattr(args, "out", None)
    if out is not None and chosen == "table":
        suffix = Path(out).suffix.lstrip(".").lower()
        if suffix not in FILE_FORMATS:
            raise InvalidRequestError(f"cannot tell the format of {out}: give --format {'|'.join(FILE_FORMATS)} or a file ending in one")
        return suffix
    return chosen


def show_rows(args: argparse.Namespace, frames: Mapping[str, pl.DataFrame], *, empty: str, titles: Mapping[str, str] | None = None,
              views: Mapping[str, Sequence[str] | Callable[[pl.DataFrame], pl.DataFrame]] | None = None) -> None:
    """Rows as asked by ``--format``/``--out``: rich tables on stdout, or CSV/JSON/parquet in full.

    ``views`` gives what a table shows of a frame (its columns, or a function of the frame) (files always hold every column). Several frames print as
    several tables; JSON holds them as one object keyed by name; CSV and parquet hold one
    frame, so several go to one file each (``NAME.results.csv``) and need ``--out``.
    """
    chosen = output_format(args)
    out = getattr(args, "out", None)
    if chosen == "table":
        shown = [name for name, frame in frames.items() if frame.height]
        if not shown:
            print(empty)
        for name in shown:
            frame, view = frames[name], (views or {}).get(name)
            shown_frame = frame if view is None else view(frame) if callable(view) else frame.select(view)
            print_table(shown_frame, title=(titles or {}).get(name))
        return
    if chosen == "json":
        text = frames_json(frames)
        if out is None:
            print(text)
        else:
            Path(out).write_text(text)
        return
    if out is None and (chosen == "parquet" or len(frames) > 1):
        need = "binary parquet" if chosen == "parquet" else f"{len(frames)} tables ({', '.join(frames)})"
        raise InvalidRequestError(f"{need} cannot go to the terminal as {chosen}: give --out FILE, or --format json")
    for name, frame in frames.items():
        target = None if out is None else Path(out) if len(frames) == 1 else Path(out).with_suffix(f".{name}{Path(out).suffix}")
        if target is None:
            print(frame.write_csv(), end="")
        elif chosen == "csv":
            frame.write_csv(target)
        else:
            frame.write_parquet(target)


def frames_json(frames: Mapping[str, pl.DataFrame]) -> str:
    """One frame as a JSON list of rows; several as an object of such lists, keyed by name."""
    import json

    rows = {name: frame.to_dicts() for name, frame in frames.items()}
    payload = next(iter(rows.values())) if len(rows) == 1 else rows
    return json.dumps(payload, default=_json_value, ensure_ascii=False)


def _json_value(value: object) -> object:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def cell_text(name: str, value: object) -> str:
    """A value as a table shows it: hash ids shortened, paths relative to the current folder, floats rounded."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{FLOAT_DIGITS}f}"
    if isinstance(value, dt.datetime):
        return value.strftime(TIME_FORMAT)
    if isinstance(value, (list, tuple)):
        return " ".join(cell_text(name, v) for v in value)
    text = f"{value}"
    if LONG_HASH.match(text):
        return text[:SHORT_ID_CHARS]
    if _is_path(name):
        return relative_path(text)
    return text


def relative_path(path: str) -> str:
    """``path`` relative to the current folder when it lies below it, else as stored."""
    try:
        here = Path.cwd()
        candidate = Path(path)
        return candidate.relative_to(here).as_posix() if candidate.is_absolute() else path
    except (ValueError, OSError):
        return path


def print_table(frame: pl.DataFrame, title: str | None = None) -> None:
    """A frame as a rich table on stdout that fits the terminal: ids and numbers never wrap, paths lose their
    start ("…/coast/n203.jpg") before anything else is squeezed, other text wraps inside its column."""
    import polars as pl
    from rich.cells import cell_len
    from rich.table import Table

    console = Console()  # the terminal's width; 80 (or $COLUMNS) in a pipe
    cells = {name: [cell_text(name, value) for value in frame[name].to_list()] for name in frame.columns}
    widths = {name: max([cell_len(name), *(cell_len(c) for c in column)]) for name, column in cells.items()}
    paths = [name for name in frame.columns if _is_path(name)]
    if paths:
        spare = console.width - sum(w for n, w in widths.items() if n not in paths) - COLUMN_GAP * (len(widths) - 1)
        room = max(MIN_PATH_CHARS, spare // len(paths))
        for name in paths:
            cells[name] = [shorten_start(c, room) for c in cells[name]]
            widths[name] = max([cell_len(name), *(cell_len(c) for c in cells[name])])
    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold", box=None, pad_edge=False, padding=(0, COLUMN_GAP // 2))
    for name, dtype in frame.schema.items():
        numeric = dtype.is_numeric()
        fixed = numeric or dtype.is_temporal() or dtype == pl.Boolean or _is_id(name) or name in paths
        table.add_column(name, overflow="ellipsis" if fixed else "fold", justify="right" if numeric else "left", no_wrap=fixed,
                         min_width=widths[name] if fixed else min(widths[name], MIN_TEXT_CHARS))
    for row in zip(*cells.values()):
        table.add_row(*(escape(c) for c in row))
    console.print(table)


def shorten_start(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells by dropping its start: the end of a path names the file."""
    return text if len(text) <= width else ELLIPSIS + text[len(text) - width + len(ELLIPSIS):]


def _is_path(name: str) -> bool:
    return name in PATH_COLUMNS or name.endswith("_path")


def _is_id(name: str) -> bool:
    return name in ID_COLUMNS or name.endswith("_id")


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
