"""The Lookalike operator console: a Textual app over the public engine and ingest API.

Six screens, one per task (Library, Search, Train, Review, Data, Audit), switched with F1..F6. Every call
into the engine runs in a thread worker; the app holds the services the screens share: the open
database, the ingest encoder and one cached :class:`engine.Searcher` per model version.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import threading
from dataclasses import dataclass, field

from textual.app import App
from textual.binding import Binding
from textual.widget import Widget

from console.service.catalogue import ingest_encoder
from console.service.data import catalogue_encoder_config
from console.service.search import open_searcher
from console.tui.screens.audit import AuditScreen
from console.tui.screens.data import DataScreen
from console.tui.screens.library import LibraryScreen
from console.tui.screens.review import ReviewScreen
from console.tui.screens.search import SearchScreen
from console.tui.screens.train import TrainScreen
from console.tui.widgets import image_widget_class
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import Encoder
from engine.search.config import SearchConfig
from engine.search.pipeline import search_config_for
from engine.search.searcher import Searcher
from engine.storage.database import Database

logger = logging.getLogger(__name__)


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


@dataclass(frozen=True)
class ConsoleConfig:
    """How the console runs: which database, which encoder ingests, whether to draw images."""

    db: str | None = None  # None: $LOOKALIKE_DB or the default path
    encoder: EncoderConfig | None = None  # the encoder new folders join with; None: the active version's base encoder, else the default
    device: str | None = None  # where that encoder runs (None: cuda when present)
    thumbnails: bool = True  # draw images with textual-image where the terminal supports it
    user: str = field(default_factory=_current_user)  # recorded as decided_by in the review queue
    search: SearchConfig = field(default_factory=SearchConfig)


class LookalikeApp(App):
    """The operator console."""

    TITLE = "Lookalike"
    CSS_PATH = "console.tcss"
    MODES = {
        "library": LibraryScreen,
        "search": SearchScreen,
        "train": TrainScreen,
        "review": ReviewScreen,
        "data": DataScreen,
        "audit": AuditScreen,
    }
    DEFAULT_MODE = "library"
    BINDINGS = [
        Binding("f1", "switch_mode('library')", "Library", priority=True),
        Binding("f2", "switch_mode('search')", "Search", priority=True),
        Binding("f3", "switch_mode('train')", "Train", priority=True),
        Binding("f4", "switch_mode('review')", "Review", priority=True),
        Binding("f5", "switch_mode('data')", "Data", priority=True),
        Binding("f6", "switch_mode('audit')", "Audit", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, config: ConsoleConfig = ConsoleConfig(), *, encoder: Encoder | None = None) -> None:
        """``encoder``: an already built ingest encoder (tests pass a tiny one); else built from ``config``."""
        super().__init__()
        self.config = config
        self.db = Database(config.db)
        self.sub_title = self.db.uri
        # textual-image probes the terminal on import, which must happen before the app reads stdin
        self.image_class: type[Widget] | None = image_widget_class() if config.thumbnails else None
        self._encoder = encoder
        self._searchers: dict[str, Searcher] = {}
        self._lock = threading.Lock()

    # ---- services for the screens (called from worker threads) -----------------------------------

    def ingest_encoder_config(self) -> EncoderConfig:
        """The encoder config new images are ingested with (the CLI's ``ingest`` picks it the same way)."""
        config = catalogue_encoder_config(self.db, self.config.encoder)
        return dataclasses.replace(config, device=self.config.device) if self.config.device else config

    def ingest_encoder(self) -> Encoder:
        """The encoder new images are ingested with, built on first use."""
        with self._lock:
            if self._encoder is None:
                self._encoder = ingest_encoder(self.db, self.ingest_encoder_config())
            return self._encoder

    def searcher(self, model_id: str | None = None) -> Searcher:
        """A searcher over a model version (default: the active one), cached until the data changes."""
        model = self.db.resolve_model(model_id)
        with self._lock:
            if model.id not in self._searchers:
                known = self._encoder if self._encoder is not None and self._encoder.fingerprint == model.fingerprint else None
                config = search_config_for(self.db, model, self.config.search, reranker_named=False)
                self._searchers[model.id] = Searcher(self.db, model, config, encoder=known) if known else open_searcher(self.db, model.id, self.config.search)
            return self._searchers[model.id]

    def data_changed(self) -> None:
        """Forget cached table handles after a write (LanceDB handles keep the version they opened)."""
        with self._lock:
            self._searchers.clear()

    # ---- cross-screen actions ----------------------------------------------------------------------

    def search_for_image(self, image_id: str) -> None:
        """Open the Search screen with a catalogue image as the query."""
        self.switch_mode("search")
        self.call_after_refresh(lambda: self.screen.query_with(image_id))  # type: ignore[attr-defined]
