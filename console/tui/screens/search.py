"""Search: query by image file or catalogue image, under a ``where`` filter, with thumbnails and predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image as PILImage
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.validation import Integer
from textual.widgets import Button, DataTable, Footer, Header, Input, Select, Static

from console.service import search as search_service
from console.tui.screens.base import ConsoleScreen
from console.tui.screens.figure import ImageViewer
from console.tui.widgets import SHORT_ID_CHARS, Thumbnail, fill_table, load_preview, open_in_system_viewer, short_path

GRID_CELLS = 10  # thumbnails shown for the top results
TALL_TERMINAL_ROWS = 40  # from this height on the thumbnails double
RESULT_COLUMNS = ("split", "width", "height")
BOX_COLUMNS = ("x", "y", "w", "h")  # a region result's box, in its image's pixels


def box_of(row: dict) -> tuple[int, int, int, int]:
    return row["x"], row["y"], row["w"], row["h"]


@dataclass(frozen=True)
class SearchRequest:
    query: str
    where: str | None
    k: int
    model: str | None
    regions: bool = False  # the catalogue's regions (lookalike regions), each result with its box


@dataclass(frozen=True)
class SearchOutcome:
    """Everything one search shows, computed in a worker."""

    request: SearchRequest
    model_id: str
    results: pl.DataFrame
    predictions: pl.DataFrame
    distractor: tuple[float, float, bool] | None  # score, threshold, flagged; None without a calibration
    query_preview: PILImage.Image | None
    previews: list[PILImage.Image | None]


class SearchScreen(ConsoleScreen):
    """Nearest catalogue images of a query, as a thumbnail grid and a table; the selected one large."""

    AUTO_FOCUS = "#search-query"

    BINDINGS = [
        ("ctrl+r", "reload", "Reload models"),
        ("p", "pick_selected", "Query with selected"),
        ("v", "view", "View full screen"),
        ("o", "open_file", "Open in viewer"),
        ("ctrl+g", "toggle_regions", "Regions"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._outcome: SearchOutcome | None = None
        self._regions = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="search-form", classes="row"):
            yield Input(placeholder="query: image file path or catalogue image id", id="search-query")
            yield Input(placeholder="where, e.g. label = 'CLASS' AND width >= 256", id="search-where")
            yield Input("10", placeholder="k", id="search-k", validators=[Integer(minimum=1, maximum=1000)])
            yield Select([], prompt="model", id="search-model")
            yield Button("Search", id="search-go", variant="primary")
        yield Static("Enter a query and press Enter.", id="search-message")
        with Horizontal(id="search-body"):
            with Vertical(id="search-results", classes="panel"):
                with Grid(id="search-grid"):
                    for cell in range(GRID_CELLS):
                        yield Thumbnail(self.lookalike.image_class, "", id=f"search-cell-{cell}")
                yield DataTable(id="search-table", cursor_type="row")
            with VerticalScroll(id="search-detail", classes="panel"):
                yield Thumbnail(self.lookalike.image_class, "query", id="search-query-picture")
                yield Static("", id="search-predictions")
                yield Thumbnail(self.lookalike.image_class, "selected result", id="search-large")
                yield Static("", id="search-meta")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#search-grid").display = self.lookalike.image_class is not None

    # ---- models --------------------------------------------------------------------------------

    def action_reload(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.load_models()

    @work(thread=True, exclusive=True, group="search-models")
    def load_models(self) -> None:
        def read() -> None:
            db = self.lookalike.db
            self.ui(self._show_models, [m.id for m in db.find_models()], db.active_model_id())

        self.guarded("search-message", "reading the models", read)

    def _show_models(self, model_ids: list[str], active: str | None) -> None:
        select = self.query_one("#search-model", Select)
        current = select.value
        select.set_options([(f"{m} (active)" if m == active else m, m) for m in model_ids])
        if current in model_ids:
            select.value = current

    # ---- searching -----------------------------------------------------------------------------

    def action_toggle_regions(self) -> None:
        """Search the objects inside catalogue images (their regions, boxes drawn) or whole images."""
        self._regions = not self._regions
        self.say("search-message", "regions on: results are the catalogue regions nearest the whole query (lookalike regions makes them); "
                 "ctrl+g for whole images" if self._regions else "regions off: whole images")

    def query_with(self, query: str, where: str | None = None) -> None:
        """Search with ``query`` (a path or an image id) under ``where`` (None: no filter, not the last one typed)
        as if the operator had typed them."""
        self.query_one("#search-query", Input).value = query
        self.query_one("#search-where", Input).value = where or ""
        self.start_search()

    def action_pick_selected(self) -> None:
        """Use the highlighted result (a catalogue image) as the next query."""
        row = self._selected_result()
        if row is not None:
            self.query_with(row["image_id"], self.query_one("#search-where", Input).value.strip() or None)  # the same filter

    @on(Button.Pressed, "#search-go")
    @on(Input.Submitted, "#search-query, #search-where, #search-k")
    def start_search(self) -> None:
        query = self.query_one("#search-query", Input).value.strip()
        k_input = self.query_one("#search-k", Input)
        if not query:
            self.say("search-message", "give a query: an image file path or a catalogue image id", error=True)
            return
        checked = k_input.validate(k_input.value)
        if checked is not None and not checked.is_valid:
            self.say("search-message", f"k: {'; '.join(checked.failure_descriptions)}", error=True)
            return
        model = self.query_one("#search-model", Select).value
        request = SearchRequest(query, self.query_one("#search-where", Input).value.strip() or None, int(k_input.value),
                                None if model is Select.NULL else str(model), self._regions)
        self.say("search-message", f"searching for {query}…")
        self._clear_outcome()  # a failed search must not leave the last one's results under its error
        self.run_search(request)

    @work(thread=True, exclusive=True, group="search")
    def run_search(self, request: SearchRequest) -> None:
        if request.regions:
            self.guarded("search-message", "region search", lambda: self._search_regions(request))
            return

        def search() -> None:
            searcher = self.lookalike.searcher(request.model)
            found = search_service.search(searcher, search_service.query_vectors(searcher, request.query), k=request.k, where=request.where, columns=RESULT_COLUMNS)
            results, predictions, verdicts = found.results, found.predictions, found.verdicts
            distractor = None
            if verdicts is not None:
                distractor = (float(verdicts["distractor_score"][0]), float(verdicts["threshold"][0]), bool(verdicts["is_distractor"][0]))
            show_images = self.lookalike.image_class is not None
            query_path = Path(request.query).expanduser()
            if not query_path.is_file() and results.height and results["image_id"][0] == request.query:
                query_path = Path(results["path"][0])
            outcome = SearchOutcome(
                request, searcher.model.id, results, predictions, distractor,
                load_preview(query_path) if show_images and query_path.is_file() else None,
                [load_preview(p) for p in results["path"][:GRID_CELLS]] if show_images else [],
            )
            self.ui(self._show_outcome, outcome)

        self.guarded("search-message", "search", search)

    def _search_regions(self, request: SearchRequest) -> None:
        from console.service.regions import search_regions_of

        db = self.lookalike.db
        model = db.resolve_model(request.model)
        found = search_regions_of(db, model.id, request.query, request.k, request.where)
        show_images = self.lookalike.image_class is not None
        query_path = Path(found["query_path"][0]) if found.height else Path(request.query)
        outcome = SearchOutcome(
            request, model.id, found, pl.DataFrame(schema={"rank": pl.Int64, "label": pl.String, "score": pl.Float64}), None,
            load_preview(query_path) if show_images and query_path.is_file() else None,
            [load_preview(r["path"], box=box_of(r)) for r in found.head(GRID_CELLS).iter_rows(named=True)] if show_images else [],
        )
        self.ui(self._show_outcome, outcome)

    def _clear_outcome(self) -> None:
        self._outcome = None
        fill_table(self.query_one("#search-table", DataTable), pl.DataFrame(), "searching…")
        for cell in range(GRID_CELLS):
            self.query_one(f"#search-cell-{cell}", Thumbnail).display = False
        for name in ("#search-predictions", "#search-meta"):
            self.query_one(name, Static).update("")
        self.query_one("#search-query-picture", Thumbnail).show(None, "query")
        self.query_one("#search-large", Thumbnail).show(None, "selected result")

    def action_view(self) -> None:
        """The results full screen, starting at the highlighted one (left/right pages through them)."""
        if self._outcome is None or not self._outcome.results.height:
            return
        results = self._outcome.results
        images = [(f"#{r['rank']} {r['label'] or '?'} {r['distance']:.3f}", r["path"]) for r in results.iter_rows(named=True)]
        self.open_modal(ImageViewer(self.lookalike.image_class, images, start=max(self.query_one("#search-table", DataTable).cursor_row, 0)))

    @on(DataTable.RowSelected, "#search-table")
    def _result_selected(self) -> None:
        self.action_view()

    def action_open_file(self) -> None:
        row = self._selected_result()
        if row is not None:
            self.say("search-message", open_in_system_viewer(row["path"]))

    def on_resize(self, event) -> None:  # noqa: ANN001 - textual.events.Resize
        """Larger thumbnails where the terminal has the room (tmux at 160x48 shows a scene; 80x24 only a hint)."""
        tall = event.size.height >= TALL_TERMINAL_ROWS
        for cell in range(GRID_CELLS):
            self.query_one(f"#search-cell-{cell}", Thumbnail).set_class(tall, "large")

    def _show_outcome(self, outcome: SearchOutcome) -> None:
        self._outcome = outcome
        results = outcome.results
        where = f" where {outcome.request.where}" if outcome.request.where else ""
        what = "regions (the best of each image)" if outcome.request.regions else "results"
        self.say("search-message", f"{results.height} {what} from model {outcome.model_id}{where}")
        extra = BOX_COLUMNS if outcome.request.regions else RESULT_COLUMNS
        shown = results.select("rank", "label", "distance", pl.col("path").map_elements(short_path, return_dtype=pl.String),
                               *extra, pl.col("image_id").str.slice(0, SHORT_ID_CHARS)) if results.height else results
        fill_table(self.query_one("#search-table", DataTable), shown, "no catalogue image matches")
        for cell in range(GRID_CELLS):
            thumb = self.query_one(f"#search-cell-{cell}", Thumbnail)
            if cell < results.height:
                thumb.display = True
                picture = outcome.previews[cell] if cell < len(outcome.previews) else None
                box = f" at {results['x'][cell]},{results['y'][cell]}" if outcome.request.regions else ""
                thumb.show(picture, f"#{results['rank'][cell]} {results['label'][cell] or '?'} {results['distance'][cell]:.3f}{box}")
            else:
                thumb.display = False
        self.query_one("#search-query-picture", Thumbnail).show(outcome.query_preview, f"query: {outcome.request.query}")
        self.query_one("#search-predictions", Static).update(self._predictions_text(outcome))
        if results.height:
            self.query_one("#search-table", DataTable).focus()

    @staticmethod
    def _predictions_text(outcome: SearchOutcome) -> Text:
        text = Text("Predicted classes\n", style="bold")
        if outcome.request.regions:
            return text.append("  none: regions are searched, images do not vote (ctrl+g: whole images)\n", style="dim")
        for row in outcome.predictions.iter_rows(named=True):
            text.append(f"  {row['rank']}. {row['label']}  {row['score']:.3f}\n")
        if outcome.distractor is None:
            text.append("distractor: no calibration for this model (lookalike calibrate)\n", style="dim")
        else:
            score, threshold, flagged = outcome.distractor
            text.append(f"distractor score {score:.4f} (threshold {threshold:.4f}): ")
            text.append("DISTRACTOR" if flagged else "known class", style="bold red" if flagged else "bold green")
            text.append("\n")
        return text

    # ---- selected result -----------------------------------------------------------------------

    def _selected_result(self) -> dict | None:
        table = self.query_one("#search-table", DataTable)
        if self._outcome is None or not self._outcome.results.height or table.cursor_row < 0:
            return None
        return self._outcome.results.row(min(table.cursor_row, self._outcome.results.height - 1), named=True)

    @on(DataTable.RowHighlighted, "#search-table")
    def _result_highlighted(self) -> None:
        row = self._selected_result()
        if row is None:
            return
        meta = Text()
        for name, value in row.items():
            meta.append(f"{name}: ", style="bold")
            meta.append(f"{value:.4f}\n" if isinstance(value, float) else f"{value}\n")
        self.query_one("#search-meta", Static).update(meta)
        if self.lookalike.image_class is not None:
            self.load_large(row["path"], f"#{row['rank']} {row['label'] or '?'}", box_of(row) if "x" in row else None)

    @work(thread=True, exclusive=True, group="search-large")
    def load_large(self, path: str, caption: str, box: tuple[int, int, int, int] | None = None) -> None:
        picture = load_preview(path, side=512, box=box)
        self.ui(self.query_one("#search-large", Thumbnail).show, picture, caption)
