"""Modals over the current screen: report figures (PNG images), and images full screen."""

from __future__ import annotations

import io

from PIL import Image as PILImage
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Label, Static

from console.tui.widgets import Thumbnail, load_preview, open_in_system_viewer
from engine.core.errors import InvalidRequestError

VIEWER_SIDE = 1024  # pixels: the full-screen preview has room for them


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


class ImageViewer(ModalScreen):
    """Images full screen, one at a time: left/right page through them, o opens the file in the system viewer."""

    BINDINGS = [
        Binding("escape,v", "dismiss", "Close"),
        Binding("right", "page(1)", "Next"),
        Binding("left", "page(-1)", "Previous"),
        Binding("o", "open_file", "Open in viewer"),
    ]

    def __init__(self, image_class: type[Widget] | None, images: list[tuple[str, str]], start: int = 0) -> None:
        super().__init__()
        if not images:
            raise InvalidRequestError("no images to show")
        self._image_class, self._images, self._shown = image_class, images, start % len(images)

    def compose(self) -> ComposeResult:
        with Vertical(id="viewer-box", classes="panel"):
            yield Thumbnail(self._image_class, "", id="viewer-picture")
            yield Static("", id="viewer-message")
        yield Footer()

    def on_mount(self) -> None:
        self._show()

    @property
    def shown(self) -> tuple[str, str]:
        """(caption, path) of the image on screen."""
        return self._images[self._shown]

    def action_page(self, step: int) -> None:
        self._shown = (self._shown + step) % len(self._images)
        self._show()

    def action_open_file(self) -> None:
        self.query_one("#viewer-message", Static).update(open_in_system_viewer(self.shown[1]))

    def _show(self) -> None:
        caption, path = self.shown
        self.query_one("#viewer-picture", Thumbnail).show(None, f"{caption} · {path} ({self._shown + 1} of {len(self._images)}) · loading…")
        self._load(self._shown)

    @work(thread=True, exclusive=True, group="viewer")
    def _load(self, index: int) -> None:
        caption, path = self._images[index]
        picture = load_preview(path, side=VIEWER_SIDE) if self._image_class is not None else None
        text = f"{caption} · {path} ({index + 1} of {len(self._images)}) · left/right: others · o: open in viewer · escape: close"
        if index == self._shown:
            self.app.call_from_thread(self.query_one("#viewer-picture", Thumbnail).show, picture, text)
