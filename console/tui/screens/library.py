"""Library: what the database holds, ingesting a folder with live progress, and the ingest errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.validation import Function
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, ProgressBar, Static

from console.service.catalogue import IngestRequest, ingest
from console.service.data import coverage_frame, index_recall_frame
from console.tui.screens.base import ConsoleScreen
from console.tui.widgets import fill_table
from engine.core.progress import Progress
from engine.storage.database import Database
from ingest.pipeline import IngestConfig, IngestReport


@dataclass(frozen=True)
class LibrarySnapshot:
    """What the Library screen shows, read in one go by a worker."""

    tables: pl.DataFrame
    counts: pl.DataFrame
    models: pl.DataFrame
    recent: pl.DataFrame
    errors: pl.DataFrame


def _optional_fraction(value: str) -> bool:
    if not value.strip():
        return True
    try:
        return 0.0 < float(value) < 1.0
    except ValueError:
        return False


def read_library(db: Database) -> LibrarySnapshot:
    """Counts per table, per split and label, the models, recent ingests (per source folder), errors."""
    images = db.images_frame(columns=["split", "label", "source", "ingested_at"])
    counts = images.group_by("split", "label").len("images").sort("split", "label", nulls_last=True) if images.height else pl.DataFrame()
    recent = (
        images.group_by("source").agg(pl.len().alias("images"), pl.col("ingested_at").max().alias("last")).sort("last", descending=True)
        if images.height else pl.DataFrame()
    )
    models = db.models_frame()
    if models.height:
        active = db.active_model_id()
        coverage = coverage_frame(db).select("model_id", "status", "rows", "missing").rename({"model_id": "id"})
        models = models.with_columns((pl.col("id") == active).alias("active")).join(coverage, on="id", how="left").select(
            "id", "active", "status", "rows", "missing", "parent", "dim")
        recall = index_recall_frame(db)
        if recall.height:  # the recall check of each version's index, once one was built
            models = models.join(recall.select(pl.col("model_id").alias("id"), pl.col("index_recall").alias("index recall")), on="id", how="left")
    errors = db.errors_frame()
    return LibrarySnapshot(db.summary(), counts, models, recent, errors)  # counted last: the reads above may create tables


class LibraryScreen(ConsoleScreen):
    """Tables and counts, ingest a folder, the ingest errors."""

    AUTO_FOCUS = "#ingest-path"

    BINDINGS = [("ctrl+r", "reload", "Reload")]

    def __init__(self) -> None:
        super().__init__()
        self._errors = pl.DataFrame()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="library-top"):
            with Vertical(id="library-overview", classes="panel"):
                yield Label("Tables", classes="title")
                yield DataTable(id="library-tables", cursor_type="row")
                yield Label("Images per split and label", classes="title")
                yield DataTable(id="library-counts", cursor_type="row")
                yield Label("Models", classes="title")
                yield DataTable(id="library-models", cursor_type="row")
            with Vertical(id="library-ingest", classes="panel"):
                yield Label("Ingest a folder", classes="title")
                yield Input(placeholder="folder of images (class = sub-folder)", id="ingest-path",
                            validators=[Function(lambda v: Path(v).expanduser().is_dir(), "not a folder")], valid_empty=False)
                with Horizontal(classes="row"):
                    yield Input(placeholder="split (e.g. train)", id="ingest-split")
                    yield Input(placeholder="holdout fraction", id="ingest-holdout",
                                validators=[Function(_optional_fraction, "a fraction between 0 and 1")])
                    yield Button("Ingest", id="ingest-start", variant="primary")
                yield ProgressBar(total=1, id="ingest-progress", show_eta=False)
                yield Static("", id="ingest-status")
                yield Label("Recent ingests", classes="title")
                yield DataTable(id="library-recent", cursor_type="row")
        with Vertical(id="library-errors", classes="panel"):
            with Horizontal(classes="row"):
                yield Label("Ingest errors", classes="title")
                yield Input(placeholder="filter errors (text in path or reason)", id="errors-filter")
            yield DataTable(id="errors-table", cursor_type="row")
        yield Footer()

    # ---- reading -------------------------------------------------------------------------------

    def action_reload(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.load_library()

    @work(thread=True, exclusive=True, group="library-read")
    def load_library(self) -> None:
        self.guarded("ingest-status", "reading the database", lambda: self.ui(self._show_library, read_library(self.lookalike.db)))

    def _show_library(self, snapshot: LibrarySnapshot) -> None:
        fill_table(self.query_one("#library-tables", DataTable), snapshot.tables, "no tables yet")
        fill_table(self.query_one("#library-counts", DataTable), snapshot.counts, "no images yet")
        fill_table(self.query_one("#library-models", DataTable), snapshot.models, "no models yet")
        fill_table(self.query_one("#library-recent", DataTable), snapshot.recent, "nothing ingested yet")
        self._errors = snapshot.errors
        self._show_errors()

    @on(Input.Changed, "#errors-filter")
    def _show_errors(self) -> None:
        needle = self.query_one("#errors-filter", Input).value.strip().lower()
        errors = self._errors
        if needle and errors.height:
            errors = errors.filter(pl.col("path").str.to_lowercase().str.contains(needle, literal=True)
                                   | pl.col("reason").str.to_lowercase().str.contains(needle, literal=True))
        fill_table(self.query_one("#errors-table", DataTable), errors.select("path", "reason", "when") if errors.height else errors, "no ingest errors")

    # ---- ingest --------------------------------------------------------------------------------

    @on(Button.Pressed, "#ingest-start")
    @on(Input.Submitted, "#ingest-path")
    def start_ingest(self) -> None:
        if self.query_one("#ingest-start", Button).disabled:
            self.say("ingest-status", "an ingest is running: wait for it to finish", error=True)
            return
        path_input = self.query_one("#ingest-path", Input)
        holdout_input = self.query_one("#ingest-holdout", Input)
        for field_input in (path_input, holdout_input):
            result = field_input.validate(field_input.value)
            if result is not None and not result.is_valid:
                self.say("ingest-status", f"{field_input.placeholder}: {'; '.join(result.failure_descriptions)}", error=True)
                field_input.focus()
                return
        holdout = float(holdout_input.value) if holdout_input.value.strip() else None
        split = self.query_one("#ingest-split", Input).value.strip() or None
        config = IngestConfig(split=split, holdout=holdout)
        self.query_one("#ingest-start", Button).disabled = True
        self.query_one("#ingest-progress", ProgressBar).update(total=None, progress=0)
        self.say("ingest-status", "scanning and loading the encoder…")
        self.run_ingest(Path(path_input.value).expanduser(), config)

    @work(thread=True, exclusive=True, group="ingest")
    def run_ingest(self, folder: Path, config: IngestConfig) -> None:
        def progress(event: Progress) -> None:
            self.ui(self._show_progress, event)

        def run() -> None:
            request = IngestRequest(folder, config, self.lookalike.ingest_encoder_config())
            report = ingest(self.lookalike.db, request, encoder=self.lookalike.ingest_encoder(), progress=progress)
            self.lookalike.data_changed()
            self.ui(self._ingest_done, folder, report)

        try:
            self.guarded("ingest-status", f"ingest of {folder}", run)
        finally:
            self.ui(self._ingest_finished)

    def _show_progress(self, event: Progress) -> None:
        self.query_one("#ingest-progress", ProgressBar).update(total=event.total, progress=event.done)
        self.say("ingest-status", f"{event.done}/{event.total} {event.unit} · {event.detail}", error=False)

    def _ingest_done(self, folder: Path, report: IngestReport) -> None:
        self.query_one("#ingest-progress", ProgressBar).update(total=max(report.total, 1), progress=max(report.total, 1))
        self.say("ingest-status", f"ingested {folder}: {report.total} files, {report.encoded} new, {report.skipped} known, "
                                  f"{report.errors} errors in {report.seconds:.1f}s → model {report.model_id}", error=bool(report.errors))
        self.reload()

    def _ingest_finished(self) -> None:
        self.query_one("#ingest-start", Button).disabled = False

