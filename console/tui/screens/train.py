"""Train: a head on stored features or a fine-tuned backbone (the engine's regimes), with live loss and
validation mAP@5, stop/resume, and the model versions table (activate one)."""

from __future__ import annotations

import importlib
import threading

import polars as pl
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical
from textual.validation import Integer, Number
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, ProgressBar, Select, Sparkline, Static

from console.service.training import config_for_regime, model_versions, train_version
from console.tui.screens.base import ConsoleScreen
from console.tui.screens.figure import FigureScreen, png_picture
from console.tui.widgets import fill_table
from engine.core.errors import NotFoundError
from engine.core.progress import Progress
from engine.encoders.config import HEAD_KINDS, HeadConfig
from engine.training import TrainingInterrupted, TrainResult, list_methods, list_regimes
from engine.training.config import TrainConfig, regime_defaults


def method_options(regime: str) -> list[tuple[str, str]]:
    return [(f"{name}: {description}", name) for name, description in list_methods(regime).items()]


def models_table(db) -> pl.DataFrame:  # noqa: ANN001 - engine.storage.database.Database
    """Model versions, newest first, with their kind, method, validation mAP@5 and which one is active."""
    return model_versions(db)


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
            yield Select([], prompt="the active model's encoder", id="train-parent", compact=True)
            yield Label("regime")
            yield Select([(r, r) for r in list_regimes()], value=TrainConfig.regime, allow_blank=False, id="train-regime", compact=True)
            yield Label("method")
            yield Select(method_options(TrainConfig.regime), value=TrainConfig.method, allow_blank=False, id="train-method", compact=True)
            yield Label("head")
            yield Select([(k, k) for k in HEAD_KINDS], value=HeadConfig.kind, allow_blank=False, id="train-head", compact=True)
            yield Label("dim")
            yield Input(str(HeadConfig.out_dim), id="train-dim", compact=True, validators=[Integer(minimum=2, maximum=4096)])
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
                raise NotFoundError(f"training curves need the reports module (engine.reports): {exc}") from None
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
        head = HeadConfig(kind=str(self.query_one("#train-head", Select).value), out_dim=dim)
        method = self.query_one("#train-method", Select).value
        if method is Select.NULL:
            self.say("train-status", "choose a method", error=True)
            return None
        return config_for_regime(str(self.query_one("#train-regime", Select).value), method=str(method), head=head,
                                 epochs=int(value("train-epochs")), batch_size=int(value("train-batch")), lr=float(value("train-lr")),
                                 patience=int(value("train-patience")), catalogue_where=value("train-where") or None)

    @on(Select.Changed, "#train-regime")
    def _regime_changed(self, event: Select.Changed) -> None:
        regime = str(event.value)
        methods = self.query_one("#train-method", Select)
        current = methods.value
        options = method_options(regime)
        methods.set_options(options)
        if current in [name for _, name in options]:
            methods.value = current
        defaults = regime_defaults(regime)
        self.query_one("#train-epochs", Input).value = str(defaults["epochs"])
        self.query_one("#train-batch", Input).value = str(defaults["batch_size"])

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
        self.say("train-status", f"training {config.method} on {parent if parent is not Select.NULL else 'the active model encoder'}…")
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
            try:
                result = train_version(self.lookalike.db, parent_id, config, progress=lambda event: self.ui(self._on_epoch, event),
                                       should_stop=self._stop.is_set)
            except TrainingInterrupted as stopped:
                self.ui(self.say, "train-status", f"stopped after epoch {stopped.epoch} (run {stopped.run_id}); press Start to resume")
                return
            self.lookalike.data_changed()
            self.ui(self._trained, result)

        try:
            self.guarded("train-status", "training", run)
        finally:
            self.ui(self._training_finished)

    def _on_epoch(self, event: Progress) -> None:
        if event.task != "train":  # the re-embedding after fine-tuning
            self.say("train-status", f"{event.detail}: {event.done}/{event.total} {event.unit}")
            return
        if not self._losses and event.done > 1:
            self.say("train-status", f"resumed at epoch {event.done}")
        self._losses.append(event.metrics["loss"])
        self._map5.append(event.metrics["val_map5"])
        self._plot()
        self.query_one("#train-progress", ProgressBar).update(total=event.total, progress=event.done)
        self.say("train-status", f"epoch {event.done}/{event.total} · {event.detail}")

    def _plot(self) -> None:
        self.query_one("#train-loss", Sparkline).data = list(self._losses)
        self.query_one("#train-map", Sparkline).data = list(self._map5)
        last = lambda values: f"{values[-1]:.4f} (min {min(values):.4f}, max {max(values):.4f})" if values else "–"  # noqa: E731
        self.query_one("#train-loss-label", Label).update(f"loss: {last(self._losses)}")
        self.query_one("#train-map-label", Label).update(f"validation mAP@5: {last(self._map5)}")

    def _trained(self, result: TrainResult) -> None:
        # early stopping ends before the planned epochs: the bar says the training is done, not 76% of it
        self.query_one("#train-progress", ProgressBar).update(total=result.epochs_run, progress=result.epochs_run)
        self.say("train-status", f"trained {result.model.id}: {result.epochs_run} epochs, best val mAP@5 {result.val_map5:.4f} "
                                 f"at epoch {result.best_epoch}, {result.seconds:.1f}s (press a on it to make it active)")
        self.reload()

    def _training_finished(self) -> None:
        self.query_one("#train-start", Button).disabled = False
        self.query_one("#train-stop", Button).disabled = True
