"""Data: the ``images`` table through polars, filtered with the search ``where`` syntax, an EDA summary, and
the highlighted image relabelled or deleted (in the catalogue and every model version)."""

from __future__ import annotations

import importlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from console.service.data import Selection, delete, relabel
from console.tui.screens.base import ConsoleScreen
from console.tui.screens.figure import FigureScreen, png_picture
from console.tui.widgets import SHORT_ID_CHARS, bar_chart, fill_table, short_path
from engine.core.errors import NotFoundError

logger = logging.getLogger(__name__)

SHOWN_ROWS = 500  # rows put in the table; the summary covers every matching row
BROWSE_COLUMNS = ["path", "label", "split", "width", "height", "format", "bytes", "id"]  # what tells images apart first, the id last
SIZE_BUCKETS = [0, 64, 128, 256, 512, 1024, 2048]


@dataclass(frozen=True)
class DataView:
    where: str | None
    total: int
    matching: pl.DataFrame


def size_histogram(frame: pl.DataFrame) -> list[tuple[str, int]]:
    """Images per bucket of their longer side, in pixels."""
    longer = frame.select(pl.max_horizontal("width", "height").alias("side"))["side"]
    edges = [*SIZE_BUCKETS, None]
    counts = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (longer >= low) & (longer < high) if high is not None else longer >= low
        counts.append((f"{low}-{high - 1}px" if high is not None else f">={low}px", int(inside.sum())))
    return [(name, n) for name, n in counts if n]


def reports_eda():
    """The reports module's EDA functions (engine.reports, optional): None where it is not installed."""
    try:
        return importlib.import_module("engine.reports.eda")
    except ImportError as exc:
        logger.info("no EDA figures: %s", exc)
        return None


def skew_text(frame: pl.DataFrame) -> Text | None:
    """Split-dependent image properties, from the reports module when present."""
    eda = reports_eda()
    if eda is None or frame["split"].n_unique() < 2:
        return None
    warnings = eda.split_skew_warnings(frame)
    text = Text("Split skews\n", style="bold")
    if not warnings:
        text.append("  none found\n", style="dim")
    for warning in warnings:
        text.append(f"  ! {warning.message}\n", style="yellow")
    return text


def eda_summary(frame: pl.DataFrame) -> Group:
    """Sizes, modes, channels, formats and label counts of the images, as text charts."""
    if not frame.height:
        return Group(Text("no images match", style="dim"))

    def counts(column: str, top: int = 15) -> list[tuple[str, int]]:
        grouped = frame.group_by(column).len().sort(["len", column], descending=[True, False], nulls_last=True).head(top)
        return [("(none)" if value is None else str(value), n) for value, n in grouped.iter_rows()]

    stats = frame.select(
        *(getattr(pl.col(c), f)().alias(f"{c}_{f}") for c in ("width", "height", "bytes") for f in ("min", "median", "max"))
    ).row(0, named=True)
    sizes = Text("Sizes\n", style="bold")
    for column in ("width", "height", "bytes"):
        sizes.append(f"  {column:<7} min {stats[column + '_min']:.0f}  median {stats[column + '_median']:.0f}  max {stats[column + '_max']:.0f}\n")
    labels = frame["label"].n_unique()
    return Group(
        Text(f"{frame.height} images, {labels} label{'' if labels == 1 else 's'}\n", style="bold"),
        sizes,
        bar_chart(size_histogram(frame), title="Longer side"),
        bar_chart(counts("label"), title=f"Labels (top {min(15, labels)})"),
        bar_chart(counts("split"), title="Splits"),
        bar_chart(counts("mode"), title="Modes"),
        bar_chart(counts("channels"), title="Channels"),
        bar_chart(counts("format"), title="Formats"),
        *([skews] if (skews := skew_text(frame)) is not None else []),
    )


class DataScreen(ConsoleScreen):
    """Browse and summarise the images; s searches with the highlighted image; relabel or delete it (a delete asks
    for a second press)."""

    AUTO_FOCUS = "#data-where"

    BINDINGS = [
        ("ctrl+r", "reload", "Reload"),
        ("s", "search_selected", "Search with selected"),
        ("f", "figure", "EDA figure"),
        ("ctrl+l", "relabel_selected", "Relabel selected"),
        ("ctrl+d", "delete_selected", "Delete selected"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._view: DataView | None = None
        self._delete_armed: str | None = None  # the image a first delete press named; the second press deletes it
        self._notice: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(classes="row"):
            yield Input(placeholder="where, e.g. label = 'CLASS' AND width >= 256 (empty: every image)", id="data-where")
            yield Button("Filter", id="data-filter", variant="primary")
        with Horizontal(classes="row"):  # its own row: at 80 columns the filter keeps its width
            yield Input(placeholder="new class for the highlighted image", id="data-label")
            yield Button("Relabel", id="data-relabel")
            yield Button("Delete", id="data-delete", variant="error")
        yield Static("", id="data-message")
        with Horizontal(id="data-body"):
            yield DataTable(id="data-table", cursor_type="row", classes="panel")
            with VerticalScroll(id="data-eda", classes="panel"):
                yield Static("", id="data-summary")
        yield Footer()

    def action_reload(self) -> None:
        self.reload()

    def reload(self) -> None:
        """Re-read the images under the filter on show (the last applied one, not a half-typed one)."""
        if self._view is None:
            self.apply_filter()
        else:
            self.load_images(self._view.where)

    @on(Button.Pressed, "#data-filter")
    @on(Input.Submitted, "#data-where")
    def apply_filter(self) -> None:
        where = self.query_one("#data-where", Input).value.strip() or None
        self.say("data-message", f"reading images{' where ' + where if where else ''}…")
        self.load_images(where)

    @work(thread=True, exclusive=True, group="data")
    def load_images(self, where: str | None) -> None:
        def read() -> None:
            db = self.lookalike.db
            matching = db.images_frame(where=where)  # a bad filter raises a one-line WhereFilterError
            view = DataView(where, db.images.count_rows(), matching)
            self.ui(self._show, view, eda_summary(matching))

        self.guarded("data-message", "filtering", read)

    def _show(self, view: DataView, summary: Group) -> None:
        self._view = view
        shown = view.matching.head(SHOWN_ROWS).select(BROWSE_COLUMNS) if view.matching.height else view.matching
        if shown.height:  # the end of a path names the image: the shared start of every path would push it off screen
            shown = shown.with_columns(pl.col("path").map_elements(short_path, return_dtype=pl.String), pl.col("id").str.slice(0, SHORT_ID_CHARS))
        fill_table(self.query_one("#data-table", DataTable), shown, "no images match")
        more = f" (first {SHOWN_ROWS} shown)" if view.matching.height > SHOWN_ROWS else ""
        notice, self._notice = self._notice, None  # what the last edit did, shown once with the re-read view
        self.say("data-message", (f"{notice}. " if notice else "") + f"{view.matching.height} of {view.total} images match{' where ' + view.where if view.where else ''}{more}")
        self.query_one("#data-summary", Static).update(summary)

    def action_search_selected(self) -> None:
        table = self.query_one("#data-table", DataTable)
        if self._view is None or not self._view.matching.height or table.cursor_row < 0:
            return
        self.lookalike.search_for_image(self._view.matching["id"][min(table.cursor_row, self._view.matching.height - 1, SHOWN_ROWS - 1)])

    def _selected(self) -> str | None:
        table = self.query_one("#data-table", DataTable)
        if self._view is None or not self._view.matching.height or table.cursor_row < 0:
            return None
        return self._view.matching["id"][min(table.cursor_row, self._view.matching.height - 1, SHOWN_ROWS - 1)]

    @on(Button.Pressed, "#data-relabel")
    @on(Input.Submitted, "#data-label")
    def action_relabel_selected(self) -> None:
        image_id, label = self._selected(), self.query_one("#data-label", Input).value.strip()
        if image_id is None or not label:
            self.say("data-message", "highlight an image and type its new class first", error=True)
            return
        self.say("data-message", f"relabelling {image_id[:12]} to {label} in every model version…")
        self.edit(f"relabel {image_id[:12]}", lambda db: relabel(db, Selection(ids=(image_id,)), label))

    @on(Button.Pressed, "#data-delete")
    def action_delete_selected(self) -> None:
        image_id = self._selected()
        if image_id is None:
            return
        if self._delete_armed != image_id:
            self._delete_armed = image_id
            self.say("data-message", f"delete {image_id[:12]} from the catalogue and every model version? press Delete (ctrl+d) again")
            return
        self._delete_armed = None
        self.say("data-message", f"deleting {image_id[:12]}…")
        self.edit(f"delete {image_id[:12]}", lambda db: delete(db, Selection(ids=(image_id,)), allow_empty=False))

    @work(thread=True, exclusive=True, group="data-edit")
    def edit(self, what: str, change) -> None:  # noqa: ANN001 - a use case of console.service.data
        def run() -> None:
            report = change(self.lookalike.db)
            behind = [c.model_id for c in report.versions if not c.in_step]
            self.ui(self.lookalike.data_changed)
            self._notice = f"{what}: done; {len(report.versions) - len(behind)} model versions in step" + (f", behind: {', '.join(behind)}" if behind else "")
            self.ui(self.reload)

        self.guarded("data-message", what, run)

    def action_figure(self) -> None:
        if self._view is None or not self._view.matching.height:
            self.say("data-message", "no images to draw", error=True)
            return
        self.say("data-message", "drawing the EDA figure…")
        self.draw_figure(self._view)

    @work(thread=True, exclusive=True, group="data-figure")
    def draw_figure(self, view: DataView) -> None:
        def draw() -> None:
            eda = reports_eda()
            if eda is None:
                raise NotFoundError("EDA figures need the reports module (engine.reports), which is not installed")
            from engine.reports.common import figure_png

            png = figure_png(eda.eda_figure(view.matching))
            path = Path(tempfile.gettempdir()) / f"lookalike-eda-{time.strftime('%Y%m%d-%H%M%S')}.png"
            path.write_bytes(png)
            title = f"EDA of {view.matching.height} images{' where ' + view.where if view.where else ''}: {path}"
            self.ui(self.say, "data-message", f"EDA figure saved to {path}")
            self.ui(self.open_modal, FigureScreen(self.lookalike.image_class, [("eda", png_picture(png))], title))

        self.guarded("data-message", "the EDA figure", draw)
