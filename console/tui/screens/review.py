"""Review: the distractor review queue, one flagged query at a time, decided with single keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image as PILImage
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Input, Label, Static

from console.service.catalogue import ReviewUndo, decide_review_undoably, undo_review
from console.tui.screens.base import ConsoleScreen
from console.tui.screens.figure import ImageViewer
from console.tui.widgets import Thumbnail, fill_table, load_preview, open_in_system_viewer
from engine.evaluation.detect import Decision, review_frame

NEIGHBOURS = 5


@dataclass(frozen=True)
class ReviewItem:
    """The review item on screen, with its nearest catalogue images."""

    row: dict
    neighbours: pl.DataFrame
    preview: PILImage.Image | None
    neighbour_previews: list[PILImage.Image | None]


class ReviewScreen(ConsoleScreen):
    """c: confirm distractor · a or 1-5: assign a suggested class · n: a new class · u: undo · s: skip · v: view."""

    AUTO_FOCUS = "#review-table"

    BINDINGS = [
        Binding("c", "confirm", "Confirm distractor"),
        Binding("a", "assign(1)", "Assign #1"),
        Binding("1", "assign(1)", "Assign #n", key_display="1-5"),
        *(Binding(f"{rank}", f"assign({rank})", f"Assign #{rank}", show=False) for rank in range(2, NEIGHBOURS + 1)),
        Binding("n", "new_class", "New class"),
        Binding("u", "undo", "Undo"),
        Binding("s", "skip", "Skip"),
        Binding("v", "view", "View"),
        Binding("o", "open_file", "Open"),
        Binding("ctrl+r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._pending = pl.DataFrame()
        self._position = 0
        self._item: ReviewItem | None = None
        self._decided = 0
        self._undoable: list[ReviewUndo] = []  # decisions of this session, newest last

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="review-counts")
        with Horizontal(id="review-body"):
            with Vertical(id="review-query", classes="panel"):
                yield Thumbnail(self.lookalike.image_class, "flagged query", id="review-picture")
                yield Static("The review queue is empty.", id="review-info")
            with Vertical(id="review-neighbours", classes="panel"):
                yield Label("Nearest catalogue images", classes="title")
                with Grid(id="review-grid"):
                    for cell in range(NEIGHBOURS):
                        yield Thumbnail(self.lookalike.image_class, "", id=f"review-cell-{cell}")
                yield DataTable(id="review-table", cursor_type="row")
        yield Input(placeholder="n, then a new class name and Enter: the query joins the catalogue as that class (escape: back)", id="review-new-class")
        yield Static("", id="review-message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#review-grid").display = self.lookalike.image_class is not None
        self.query_one("#review-new-class", Input).can_focus = False  # only n gives it the keys: c or 1 are never typed into it

    def action_new_class(self) -> None:
        box = self.query_one("#review-new-class", Input)
        box.can_focus = True
        box.focus()

    def _leave_new_class(self) -> None:
        box = self.query_one("#review-new-class", Input)
        box.value = ""
        box.can_focus = False
        self.query_one("#review-table", DataTable).focus()

    def on_key(self, event) -> None:  # noqa: ANN001 - textual.events.Key
        if event.key == "escape" and self.focused is self.query_one("#review-new-class", Input):
            event.stop()
            self._leave_new_class()

    def action_view(self) -> None:
        """The query and its nearest catalogue images full screen."""
        if self._item is None:
            return
        images = [("flagged query", self._item.row["path"])]
        neighbours = self._item.neighbours
        images += [(f"#{r['rank']} {r['label'] or '?'} {r['distance']:.3f}", r["path"]) for r in neighbours.iter_rows(named=True)] if neighbours.height else []
        self.open_modal(ImageViewer(self.lookalike.image_class, images))

    def action_open_file(self) -> None:
        if self._item is not None:
            self.say("review-message", open_in_system_viewer(self._item.row["path"]))

    # ---- the queue -----------------------------------------------------------------------------

    def action_reload(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.load_queue()

    @work(thread=True, exclusive=True, group="review")
    def load_queue(self, keep_position: bool = True) -> None:
        def read() -> None:
            queue = review_frame(self.lookalike.db)
            pending = queue.filter(pl.col("status") == "pending") if queue.height else queue
            counts = dict(queue.group_by("status").len().iter_rows()) if queue.height else {}
            position = min(self._position, max(pending.height - 1, 0)) if keep_position else 0
            item = self._read_item(pending.row(position, named=True)) if pending.height else None
            self.ui(self._show_queue, pending, counts, position, item)

        self.guarded("review-message", "reading the review queue", read)

    def _read_item(self, row: dict) -> ReviewItem:
        """The item with its nearest catalogue images under the model that flagged it."""
        searcher = self.lookalike.searcher(row["model_id"])
        path = Path(row["path"])
        show_images = self.lookalike.image_class is not None
        if path.is_file():
            neighbours = searcher.search_files([path], k=NEIGHBOURS)
        else:
            neighbours = pl.DataFrame()
        return ReviewItem(
            row, neighbours,
            load_preview(path) if show_images and path.is_file() else None,
            [load_preview(p) for p in neighbours["path"]] if show_images and neighbours.height else [],
        )

    def _show_queue(self, pending: pl.DataFrame, counts: dict, position: int, item: ReviewItem | None) -> None:
        self._pending, self._position, self._item = pending, position, item
        decided = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("distractor", "assigned", "added"))
        self.query_one("#review-counts", Static).update(
            f"{pending.height} left to review · {self._decided} decided in this session · so far: {decided}"
            + (f" · showing {position + 1} of {pending.height}" if pending.height else ""))
        info = self.query_one("#review-info", Static)
        if item is None:
            info.update("The review queue is empty: flagged queries of lookalike predict land here.")
            fill_table(self.query_one("#review-table", DataTable), pl.DataFrame(), "no item")
            for cell in range(NEIGHBOURS):
                self.query_one(f"#review-cell-{cell}", Thumbnail).display = False
            self.query_one("#review-picture", Thumbnail).show(None, "")
            return
        row = item.row
        text = Text()
        text.append("query: ", style="bold").append(f"{row['path']}\n")
        text.append("model: ", style="bold").append(f"{row['model_id']}\n")
        text.append("distractor score: ", style="bold").append(f"{row['score']:.4f} (threshold {row['threshold']:.4f})\n")
        text.append("suggested classes:\n", style="bold")
        for rank, label in enumerate(row["suggested"][:5], start=1):
            text.append(f"  {rank}. {label}\n")
        if not Path(row["path"]).is_file():
            text.append("the query file is missing: only 'confirm' or 'skip' make sense\n", style="red")
        info.update(text)
        self.query_one("#review-picture", Thumbnail).show(item.preview, Path(row["path"]).name)
        neighbours = item.neighbours
        fill_table(self.query_one("#review-table", DataTable), neighbours.select("rank", "label", "distance", "path") if neighbours.height else neighbours,
                   "no neighbours")
        for cell in range(NEIGHBOURS):
            thumb = self.query_one(f"#review-cell-{cell}", Thumbnail)
            thumb.display = cell < neighbours.height
            if cell < neighbours.height:
                picture = item.neighbour_previews[cell] if cell < len(item.neighbour_previews) else None
                thumb.show(picture, f"#{cell + 1} {neighbours['label'][cell] or '?'} {neighbours['distance'][cell]:.3f}")

    # ---- decisions -----------------------------------------------------------------------------

    def action_skip(self) -> None:
        if self._pending.height:
            self._position = (self._position + 1) % self._pending.height
            self.say("review-message", "skipped")
            self.load_queue()

    def action_confirm(self) -> None:
        if self._item is not None:
            self.record(Decision(self._item.row["id"], "distractor", None, self.lookalike.config.user))

    def action_assign(self, rank: int) -> None:
        if self._item is None:
            return
        suggested = self._item.row["suggested"]
        if rank > len(suggested):
            self.say("review-message", f"there is no suggestion #{rank}", error=True)
            return
        self.record(Decision(self._item.row["id"], "assigned", suggested[rank - 1], self.lookalike.config.user))

    @on(Input.Submitted, "#review-new-class")
    def add_new_class(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        self._leave_new_class()  # the keys go back to the screen at once: a following c confirms, it is not typed
        if self._item is None or not name:
            return
        self.record(Decision(self._item.row["id"], "added", name, self.lookalike.config.user))

    def action_undo(self) -> None:
        """Take back the newest decision of this session: an image it added leaves the catalogue again."""
        if not self._undoable:
            self.say("review-message", "nothing to undo in this session")
            return
        self.say("review-message", "undoing…")
        self.run_undo(self._undoable.pop())

    @work(thread=True, group="review-decide")
    def run_undo(self, undo: ReviewUndo) -> None:
        def run() -> None:
            row = undo_review(self.lookalike.db, undo)
            if undo.joined_image is not None:
                self.lookalike.data_changed()
            self.ui(self._undone, f"undone: {Path(row['path']).name} is {row['status']} again"
                    + (" and left the catalogue" if undo.joined_image else ""))

        self.guarded("review-message", "the undo", run)
        self.ui(self.load_queue)

    def _undone(self, outcome: str) -> None:
        self._decided -= 1
        self.say("review-message", outcome)

    def record(self, decision: Decision) -> None:
        """Store a decision; the item leaves the screen at once so that a second key press cannot decide it twice."""
        if self._item is None:
            return
        item, self._item = self._item, None
        self.say("review-message", f"recording {decision.status}…")
        self.run_decision(item, decision)

    @work(thread=True, group="review-decide")
    def run_decision(self, item: ReviewItem, decision: Decision) -> None:
        def run() -> None:
            encoder = self.lookalike.searcher(item.row["model_id"]).encoder if decision.status != "distractor" else None
            row, undo = decide_review_undoably(self.lookalike.db, decision, encoder=encoder)
            if row["label"]:
                self.lookalike.data_changed()
            outcome = f"{Path(row['path']).name}: {row['status']}" + (f" as {row['label']} (joined the catalogue)" if row["label"] else "") + " · u: undo"
            self.ui(self._decision_stored, outcome, undo)

        self.guarded("review-message", "the decision", run)
        self.ui(self.load_queue)  # after a failure too: the item comes back

    def _decision_stored(self, outcome: str, undo: ReviewUndo) -> None:
        self._decided += 1
        self._undoable.append(undo)
        self.say("review-message", outcome)
