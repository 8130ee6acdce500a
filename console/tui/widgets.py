"""Widgets shared by the console screens: image thumbnails that degrade to text, and text bar charts."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import polars as pl
from PIL import Image as PILImage
from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Label, Static

from engine.media.decode import DecodeError, decode_image

logger = logging.getLogger(__name__)

PREVIEW_SIDE = 256  # pixels: enough for a terminal cell grid, small enough to decode in a blink


def image_widget_class() -> type[Widget] | None:
    """textual-image's best widget for this terminal, or None where images cannot be shown.

    Must run before the Textual app starts: textual-image asks the terminal about its graphics
    support when first imported, which is impossible once Textual reads stdin.
    """
    try:
        from textual_image.widget import Image
    except Exception as exc:  # noqa: BLE001 - any failure to probe the terminal means text-only previews
        logger.info("image previews disabled: %s", exc)
        return None
    finally:
        discard_late_terminal_replies()
    return Image


def discard_late_terminal_replies(wait: float = 0.3) -> None:
    """Drop terminal replies that came after textual-image stopped waiting (0.1 s: a busy machine or tmux
    is slower); Textual would otherwise read them as keys typed into the first input."""
    if not (sys.stdin and sys.stdin.isatty()):
        return
    try:
        import termios
    except ImportError:  # not a POSIX terminal
        return
    time.sleep(wait)
    termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)


SHORT_ID_CHARS = 12  # of a 32-character image id in a table: any unique prefix is taken back
PATH_PARTS_SHOWN = 2  # a path in a table: its folder and file name


def short_path(path: str, parts: int = PATH_PARTS_SHOWN) -> str:
    """The last ``parts`` components of a path ("…/coast/n203.jpg"), as tables show it."""
    pieces = Path(path).parts
    return path if len(pieces) <= parts else "…/" + "/".join(pieces[-parts:])


SYSTEM_VIEWERS = ("xdg-open", "open", "wslview")  # Linux desktops, macOS, WSL


def open_in_system_viewer(path: str | Path) -> str:
    """Open ``path`` with the desktop's image viewer, without waiting for it; what happened, as a sentence."""
    if not Path(path).is_file():
        return f"cannot open {path}: the file is not there"
    viewer = next((shutil.which(name) for name in SYSTEM_VIEWERS if shutil.which(name)), None)
    if viewer is None:
        return f"no system image viewer here ({', '.join(SYSTEM_VIEWERS)}): open {path} yourself"
    subprocess.Popen([viewer, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return f"opened {Path(path).name} with {Path(viewer).name}"


BOX_COLOUR = (255, 40, 40)
BOX_LINE_SHARE = 0.012  # a drawn box's line width as a share of the image's longer side (at least one pixel)


def load_preview(path: str | Path, side: int = PREVIEW_SIDE, box: tuple[int, int, int, int] | None = None) -> PILImage.Image | None:
    """A small RGB copy of an image file, decoded as ingest decodes it, with ``box`` (x, y, w, h in the image's
    pixels: a region) drawn on it; None if it cannot be read.

    Runs in worker threads so that the UI never waits on a disk or a decoder.
    """
    try:
        picture = decode_image(Path(path).read_bytes()).image
    except (OSError, DecodeError) as exc:
        logger.info("no preview of %s: %s", path, exc)
        return None
    if box is not None:
        from PIL import ImageDraw

        x, y, w, h = box
        line = max(1, round(BOX_LINE_SHARE * max(picture.size)))
        ImageDraw.Draw(picture).rectangle((x, y, x + w - 1, y + h - 1), outline=BOX_COLOUR, width=line)
    picture.thumbnail((side, side))
    return picture


class Thumbnail(Vertical):
    """An image with a caption; a text placeholder where the terminal (or a test) cannot show images."""

    DEFAULT_CLASSES = "thumbnail"

    def __init__(self, image_class: type[Widget] | None, caption: str = "", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._image_class = image_class
        self._caption = caption

    def compose(self) -> ComposeResult:
        if self._image_class is not None:
            yield self._image_class(classes="picture")
        else:
            yield Static("", classes="picture no-picture")
        yield Label(self._caption, classes="caption")

    def show(self, picture: PILImage.Image | None, caption: str) -> None:
        """Display ``picture`` (None: 'no preview') under ``caption``."""
        self.query_one(".caption", Label).update(caption)
        holder = self.query_one(".picture")
        if isinstance(holder, Static):
            holder.update("(no preview)" if picture is None else f"[{picture.width}x{picture.height} image]")
        else:
            holder.image = picture  # type: ignore[attr-defined]


def bar_chart(counts: Sequence[tuple[str, int]], width: int = 30, title: str | None = None) -> Text:
    """Horizontal bars, one line per (name, count), scaled to the largest count."""
    text = Text()
    if title:
        text.append(title + "\n", style="bold")
    if not counts:
        text.append("  (none)\n", style="dim")
        return text
    largest = max(count for _, count in counts) or 1
    name_width = min(24, max(len(str(name)) for name, _ in counts))
    for name, count in counts:
        bar = "█" * max(1 if count else 0, round(width * count / largest))
        text.append(f"  {str(name)[:name_width]:<{name_width}} ")
        text.append(bar, style="cyan")
        text.append(f" {count}\n")
    return text


def fill_table(table: DataTable, frame: pl.DataFrame, empty: str = "(empty)") -> None:
    """Replace a DataTable's content with a polars frame (columns as headers)."""
    table.clear(columns=True)
    if not frame.width or not frame.height:
        table.add_column(empty)
        return
    rows = [tuple(cell_text(v) for v in row) for row in frame.iter_rows()]
    # Widths given, not measured by DataTable on its next idle: a snapshot (or a quick reader) taken before that
    # idle would otherwise see columns as narrow as their headers.
    for index, name in enumerate(frame.columns):
        table.add_column(name, width=max(cell_len(name), *(cell_len(row[index]) for row in rows)))
    table.add_rows(rows)


def cell_text(value: object) -> str:
    """A table cell: floats to 4 decimals, times to the minute, lists joined."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)
