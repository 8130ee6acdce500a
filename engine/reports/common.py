"""Shared pieces of the reports: Agg figures (never pyplot), PNG bytes, class colours, thumbnails."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.core.errors import LookalikeError
from engine.media.decode import to_rgb

logger = logging.getLogger(__name__)


class ReportDataMissing(LookalikeError, LookupError):
    """A figure cannot be drawn because the database lacks what it shows (the message says what to run)."""


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A stand-alone figure on its own Agg canvas: no pyplot, so no state is shared between figures."""
    figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi or figure.dpi)
    return buffer.getvalue()


def class_colours(classes: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A distinguishable colour per class: tab10 up to 10 classes, tab20 up to 20, then a sampled turbo map."""
    ordered = sorted(set(classes), key=str)
    if len(ordered) <= 10:
        palette = colormaps["tab10"].colors
    elif len(ordered) <= 20:
        palette = colormaps["tab20"].colors
    else:
        palette = colormaps["turbo"](np.linspace(0.05, 0.95, len(ordered)))
    return {cls: tuple(palette[i]) if len(palette[i]) == 4 else (*palette[i], 1.0) for i, cls in enumerate(ordered)}


def load_thumbnail(path: str | Path, size: int = 160) -> np.ndarray | None:
    """An RGB thumbnail of an image file as an array, or None when the file is gone or unreadable."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster for big photos
            thumb = to_rgb(ImageOps.exif_transpose(image))
            thumb.thumbnail((size, size))
            return np.asarray(thumb)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        logger.warning("no thumbnail of %s: %s", path, exc)
        return None


def show_thumbnail(axis, thumbnail: np.ndarray | None, title: str, edge: str | None = None, title_colour: str = "black") -> None:
    """Draw a thumbnail (or a grey 'missing' tile) in an axis with a title and an optional coloured frame."""
    if thumbnail is None:
        axis.set_facecolor("0.85")
        axis.text(0.5, 0.5, "file missing", ha="center", va="center", transform=axis.transAxes, fontsize=8)
    else:
        axis.imshow(thumbnail)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=8, color=title_colour)
    for spine in axis.spines.values():
        spine.set_visible(edge is not None)
        if edge is not None:
            spine.set_edgecolor(edge)
            spine.set_linewidth(4)
