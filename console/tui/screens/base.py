"""What every console screen shares: access to the app's services and a guarded way to run blocking work."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from textual.screen import Screen
from textual.widgets import Static

from engine.core.errors import LookalikeError

if TYPE_CHECKING:
    from textual.widget import Widget

    from engine.encoders.factory import Encoder
    from engine.search.searcher import Searcher
    from engine.storage.database import Database


class ConsoleServices(Protocol):
    """What screens use of the app (``console.tui.app.LookalikeApp``): screens never import the app."""

    db: Database
    config: Any
    image_class: type[Widget] | None

    def searcher(self, model_id: str | None = None) -> Searcher: ...

    def ingest_encoder(self) -> Encoder: ...

    def data_changed(self) -> None: ...

    def search_for_image(self, image_id: str) -> None: ...

logger = logging.getLogger(__name__)

# Errors the engine raises for bad input or missing things: shown to the operator as a message.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (LookalikeError,)


def short_error(exc: BaseException, limit: int = 400) -> str:
    """One readable line for an exception (LanceDB errors can run to pages)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConsoleScreen(Screen):
    """A console screen: reloads its data whenever it is shown, runs blocking work in thread workers."""

    @property
    def lookalike(self) -> ConsoleServices:
        return self.app  # type: ignore[return-value]

    _over_modal = False  # a modal of this screen is open: closing it is no reason to re-read

    def on_screen_resume(self) -> None:
        if self._over_modal:
            self._over_modal = False
            return
        self.reload()

    def open_modal(self, modal: Screen) -> None:
        """Show ``modal`` over this screen (the screen keeps its state when the modal closes)."""
        self._over_modal = True
        self.app.push_screen(modal)

    def reload(self) -> None:
        """Re-read what this screen shows from the database (in a worker)."""

    def ui(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``callback`` on the UI thread from a worker thread and wait for it."""
        return self.app.call_from_thread(callback, *args, **kwargs)

    def say(self, widget_id: str, message: str, *, error: bool = False) -> None:
        """Show a status message (red when it is an error) in the Static ``#widget_id``."""
        target = self.query_one(f"#{widget_id}", Static)
        target.update(message)
        target.set_class(error, "error")

    def guarded(self, widget_id: str, what: str, work: Callable[[], None]) -> None:
        """Run ``work`` (in a worker thread) and show any failure in ``#widget_id`` instead of crashing."""
        try:
            work()
        except EXPECTED_ERRORS as exc:
            logger.info("%s failed: %s", what, exc)
            self.ui(self.say, widget_id, f"{what} failed: {short_error(exc)}", error=True)
        except Exception as exc:  # noqa: BLE001 - the console must outlive a bug in one action; it is logged
            logger.exception("%s failed", what)
            self.ui(self.say, widget_id, f"{what} failed ({type(exc).__name__}): {short_error(exc)}", error=True)
