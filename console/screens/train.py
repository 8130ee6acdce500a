"""Train: a head on stored features or a fine-tuned backbone (the engine's regimes), with live loss and
validation mAP@5, stop/resume, and the model versions table (activate one)."""

from __future__ import annotations

import importlib
import json
import threading

import polars as pl
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical
from textual.validation import Integer, Number
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, ProgressBar, Select, Sparkline, Static

from console.screens.base import ConsoleScreen
from console.screens.figure import FigureScreen, png_picture
from console.widgets import fill_table
from engine.heads import HeadConfig
from engine.training import TrainConfig, TrainEvent, TrainingInterrupted, TrainResult, list_methods, list_regimes, train

HEAD_KINDS = ("mlp", "linear")
# epochs and batch size a regime starts with (fine-tuning decodes images: fewer, smaller batches)
REGIME_DEFAULTS = {"head": (TrainConfig.epochs, TrainConfig.batch_size), "finetune": (10, 32)}


def method_options(regime: str) -> list[tuple[str, str]]:
    return [(f"{name}: {description}", name) for name, description in list_methods(regime).items()]


def models_table(db) -> pl.DataFrame:
    """Model versions, newest first, with their method, validation mAP@5 and which one is active."""
    frame = db.models_frame()
    if not frame.height:
        return frame
    notes = [json.loads(n) if n else {} for n in frame["notes"]]
    active = db.active_model_id() or frame["id"][0]
    return frame.with_columns(
        (pl.col("id") == active).alias("active"),
        pl.Series("method", [n.get("method") for n in notes], pl.String),
        pl.Series("val_map5", [n.get("val_map5") for n in notes], pl.Float64),
    ).select("id", "active", "parent", "method", "dim", "val_map5", "created_at")


class TrainScreen(ConsoleScreen):
    """Start, watch, stop and resume training; choose the active model."""

    AUTO_FOCUS = "#train-models"

    BINDINGS = [
        ("ctrl+r", "reload", "Reload models"),
        ("a", "activate", "Activate selected model"),
        ("ctrl+t", "toggle", "Start/stop training"),
        ("r", "curves", "Training curves"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._models = pl.DataFrame()
        self._losses: list[float] = []
        self._map5: list[float] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Grid(id="train-form"):
            yield Label("parent")
            yield Select([], prompt="active model", id="train-parent", compact=True)
            yield Label("regime")
            yield Select([(r, r) for r in list_regimes()], value="head", allow_blank=False, id="train-regime", compact=True)
            yield Label("method")
            yield Select(method_options("head"), value="arcface", allow_blank=False, id="train-method", compact=True)
            yield Label("head")
            yield Select([(k, k) for k in HEAD_KINDS], value="mlp", allow_blank=False, id="train-head", compact=True)
            yield Label("dim")
            yield Input("128", id="train-dim", compact=True, validators=[Integer(minimum=2, maximum=4096)])
            yield Label("epochs")
            yield Input(str(TrainConfig.epochs), id="train-epochs", compact=True, validators=[Integer(minimum=1, maximum=10_000)])
            yield Label("batch")
            yield Input(str(TrainConfig.batch_size), id="train-batch", compact=True, validators=[Integer(minimum=2, maximum=65_536)])
            yield Label("lr")
            yield Input(str(TrainConfig.lr), id="train-lr", compact=True, validators=[Number(minimum=1e-7, maximum=1.0)])
            yield Label("patience")
            yield Input(str(TrainConfig.patience), id="train-patience", compact=True, validators=[Integer(minimum=1)])
            yield Label("catalogue")
            yield Input(TrainConfig.catalogue_where, id="train-where", compact=True)
        with Horizontal(classes="row"):
            yield Button("Start / resume", id="train-start", variant="primary")
            yield Button("Stop", id="train-stop", variant="error", disabled=True)
            yield ProgressBar(total=1, id="train-progress", show_eta=False)
        yield Static("Choose a method and press Start. A stopped run resumes when started again with the same settings.", id="train-status")
        with Horizontal(id="train-plots"):
            with Vertical(classes="panel"):
                yield Label("loss", id="train-loss-label", classes="title")
                yield Sparkline([], id="train-loss")
            with Vertical(classes="panel"):
                yield Label("validation mAP@5", id="train-map-label", classes="title")
                yield Sparkline([], id="train-map")
        yield Label("Model versions (a: make the highlighted one active, r: its training curves)", classes="title")
        yield DataTable(id="train-models", cursor_type="row")
        yield Footer()

    # ---- models --------------------------------------------------------------------------------

    def action_reload(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.load_models()

    @work(thread=True, exclusive=True, group="train-models")
    def load_models(self) -> None:
        self.guarded("train-status", "reading the models", lambda: self.ui(self._show_models, models_table(self.lookalike.db)))

    def _show_models(self, models: pl.DataFrame) -> None:
        self._models = models
        fill_table(self.query_one("#train-models", DataTable), models, "no models yet: ingest a folder first")
        parent = self.query_one("#train-parent", Select)
        current = parent.value
        ids = models["id"].to_list() if models.height else []
        parent.set_options([(f"{m} (active)" if a else m, m) for m, a in zip(ids, models["active"] if models.height else [])])
        if current in ids:
            parent.value = current

    def _highlighted_model(self) -> str | None:
        table = self.query_one("#train-models", DataTable)
        if not self._models.height or table.cursor_row < 0:
            return None
        return self._models["id"][min(table.cursor_row, self._models.height - 1)]

    def action_activate(self) -> None:
        model_id = self._highlighted_model()
        if model_id is None:
            self.say("train-status", "no model to activate", error=True)
            return
        self.activate(model_id)

    def action_curves(self) -> None:
        model_id = self._highlighted_model()
        if model_id is None:
            self.say("train-status", "no model to show", error=True)
            return
        self.say("train-status", f"drawing the training curves of {model_id}…")
        self.show_curves(model_id)

    @work(thread=True, exclusive=True, group="train-curves")
    def show_curves(self, model_id: str) -> None:
        """The reports module's training-curve figures (engine.reports, used when installed)."""
        def draw() -> None:
            try:
                reports = importlib.import_module("engine.reports")
            except ImportError as exc:
                raise LookupError(f"training curves need the reports module (engine.reports): {exc}") from None
            section, pngs = reports.plot_pngs(self.lookalike.db, "curves", model_id)
            figures = [(name, png_picture(png)) for name, png in pngs.items()]
            notes = "\n".join(section.notes)
            self.ui(self.say, "train-status", f"training curves of {model_id}")
            self.ui(self.open_modal, FigureScreen(self.lookalike.image_class, figures, f"{section.title}: {model_id}", notes))

        self.guarded("train-status", "the training curves", draw)

    @work(thread=True, exclusive=True, group="train-models")
    def activate(self, model_id: str) -> None:
        def run() -> None:
            self.lookalike.db.activate_model(model_id)
            self.lookalike.data_changed()
            self.ui(self.say, "train-status", f"{model_id} is now the active model")
            self.ui(self._show_models, models_table(self.lookalike.db))

        self.guarded("train-status", f"activating {model_id}", run)

    # ---- training ------------------------------------------------------------------------------

    def _read_config(self) -> TrainConfig | None:
        for field_id in ("train-dim", "train-epochs", "train-batch", "train-lr", "train-patience"):
            field_input = self.query_one(f"#{field_id}", Input)
            checked = field_input.validate(field_input.value)
            if checked is not None and not checked.is_valid:
                self.say("train-status", f"{field_id.removeprefix('train-')}: {'; '.join(checked.failure_descriptions)}", error=True)
                return None
        value = lambda field_id: self.query_one(f"#{field_id}", Input).value.strip()  # noqa: E731
        dim = int(value("train-dim"))
        head = HeadConfig(kind=str(self.query_one("#train-head", Select).value), out_dim=dim, hidden_dim=max(dim * 2, 64))
        method = self.query_one("#train-method", Select).value
        if method is Select.NULL:
            self.say("train-status", "choose a method", error=True)
            return None
        return TrainConfig(method=str(method), regime=str(self.query_one("#train-regime", Select).value), head=head,
                           epochs=int(value("train-epochs")), batch_size=int(value("train-batch")), lr=float(value("train-lr")),
                           patience=int(value("train-patience")), catalogue_where=value("train-where") or TrainConfig.catalogue_where)

    @on(Select.Changed, "#train-regime")
    def _regime_changed(self, event: Select.Changed) -> None:
        regime = str(event.value)
        methods = self.query_one("#train-method", Select)
        current = methods.value
        options = method_options(regime)
        methods.set_options(options)
        if current in [name for _, name in options]:
            methods.value = current
        epochs, batch_size = REGIME_DEFAULTS.get(regime, REGIME_DEFAULTS["head"])
        self.query_one("#train-epochs", Input).value = str(epochs)
        self.query_one("#train-batch", Input).value = str(batch_size)

    @on(Button.Pressed, "#train-start")
    def start_training(self) -> None:
        config = self._read_config()
        if config is None:
            return
        parent = self.query_one("#train-parent", Select).value
        self._stop.clear()
        self._losses, self._map5 = [], []
        self._plot()
        self.query_one("#train-progress", ProgressBar).update(total=config.epochs, progress=0)
        self.query_one("#train-start", Button).disabled = True
        self.query_one("#train-stop", Button).disabled = False
        self.say("train-status", f"training {config.method} on {parent if parent is not Select.NULL else 'the active model'}…")
        self.run_training(None if parent is Select.NULL else str(parent), config)

    def action_toggle(self) -> None:
        if self.query_one("#train-start", Button).disabled:
            self.stop_training()
        else:
            self.start_training()

    @on(Button.Pressed, "#train-stop")
    def stop_training(self) -> None:
        self._stop.set()
        self.say("train-status", "stopping after this epoch…")

    def on_unmount(self) -> None:
        self._stop.set()  # a run still going stops at its next epoch; its checkpoint lets it resume

    @work(thread=True, exclusive=True, group="train")
    def run_training(self, parent_id: str | None, config: TrainConfig) -> None:
        def run() -> None:
            db = self.lookalike.db
            parent = db.resolve_model(parent_id)
            try:
                result = train(db, parent, config, progress=lambda event: self.ui(self._on_epoch, event), should_stop=self._stop.is_set)
            except TrainingInterrupted as stopped:
                self.ui(self.say, "train-status", f"stopped after epoch {stopped.epoch} (run {stopped.run_id}); press Start to resume")
                return
            self.lookalike.data_changed()
            self.ui(self._trained, result)

        try:
            self.guarded("train-status", "training", run)
        finally:
            self.ui(self._training_finished)

    def _on_epoch(self, event: TrainEvent) -> None:
        if not self._losses and event.epoch > 1:
            self.say("train-status", f"resumed at epoch {event.epoch}")
        self._losses.append(event.loss)
        self._map5.append(event.val_map5)
        self._plot()
        self.query_one("#train-progress", ProgressBar).update(total=event.epochs, progress=event.epoch)
        self.say("train-status", f"epoch {event.epoch}/{event.epochs} · loss {event.loss:.4f} · val mAP@5 {event.val_map5:.4f} · "
                                 f"P@1 {event.val_p1:.4f} · best {event.best_map5:.4f} · {event.seconds:.1f}s")

    def _plot(self) -> None:
        self.query_one("#train-loss", Sparkline).data = list(self._losses)
        self.query_one("#train-map", Sparkline).data = list(self._map5)
        last = lambda values: f"{values[-1]:.4f} (min {min(values):.4f}, max {max(values):.4f})" if values else "–"  # noqa: E731
        self.query_one("#train-loss-label", Label).update(f"loss: {last(self._losses)}")
        self.query_one("#train-map-label", Label).update(f"validation mAP@5: {last(self._map5)}")

    def _trained(self, result: TrainResult) -> None:
        self.say("train-status", f"trained {result.model.id}: {result.epochs_run} epochs, best val mAP@5 {result.val_map5:.4f} "
                                 f"at epoch {result.best_epoch}, {result.seconds:.1f}s (press a on it to make it active)")
        self.reload()

    def _training_finished(self) -> None:
        self.query_one("#train-start", Button).disabled = False
        self.query_one("#train-stop", Button).disabled = True
