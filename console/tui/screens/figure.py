"""A modal that shows report figures (PNG images) over the current screen."""

from __future__ import annotations

import io

from PIL import Image as PILImage
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Label, Static

from console.tui.widgets import Thumbnail
from engine.core.errors import InvalidRequestError


def png_picture(png: bytes) -> PILImage.Image:
    """PNG bytes (a report figure) as an RGB image for a Thumbnail."""
    return PILImage.open(io.BytesIO(png)).convert("RGB")


class FigureScreen(ModalScreen):
    """Figures one at a time (left/right to page), with notes under them; escape closes."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("right", "page(1)", "Next figure"),
        Binding("left", "page(-1)", "Previous figure"),
    ]

    def __init__(self, image_class: type[Widget] | None, figures: list[tuple[str, PILImage.Image]], title: str, notes: str = "") -> None:
        super().__init__()
        if not figures:
            raise InvalidRequestError("no figures to show")
        self._image_class, self._figures, self._title, self._notes = image_class, figures, title, notes
        self._shown = 0

    def compose(self) -> ComposeResult:
        with Vertical(id="figure-box", classes="panel"):
            yield Label(self._title, classes="title")
            yield Thumbnail(self._image_class, "", id="figure-picture")
            yield Static(self._notes, id="figure-notes")
        yield Footer()

    def on_mount(self) -> None:
        self._show()

    @property
    def figure_names(self) -> list[str]:
        return [name for name, _ in self._figures]

    def action_page(self, step: int) -> None:
        self._shown = (self._shown + step) % len(self._figures)
        self._show()

    def _show(self) -> None:
        name, picture = self._figures[self._shown]
        caption = f"{name} ({self._shown + 1} of {len(self._figures)}) · left/right: other figures · escape: close"
        self.query_one("#figure-picture", Thumbnail).show(picture, caption)
