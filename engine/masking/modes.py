"""Apply modes (``zero``, ``blur``, ``crop``): how a mask keeps the background out of an image, from one registry."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from engine.core.errors import MaskingError
from engine.core.registry import Registry

logger = logging.getLogger(__name__)

# ---- apply modes: one registry -------------------------------------------------------------------

MaskMode = Callable[[Image.Image, np.ndarray], Image.Image]
MASK_MODES: Registry[MaskMode] = Registry("mask mode")


def register_mask_mode(name: str, description: str) -> Callable[[MaskMode], MaskMode]:
    return MASK_MODES.register(name, description)


def list_mask_modes() -> dict[str, str]:
    return MASK_MODES.describe()


def check_mask_mode(mode: str) -> str:
    """``mode`` if it is a registered mode; the error names the valid ones."""
    MASK_MODES.entry(mode)
    return mode


def apply_mask(image: Image.Image, mask: np.ndarray, mode: str) -> Image.Image:
    """``image`` (RGB) with its background (``mask`` False) treated by ``mode``."""
    check_mask_mode(mode)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image.height, image.width):
        raise MaskingError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {image.width}x{image.height}")
    return MASK_MODES.get(mode)(image.convert("RGB"), mask)


def mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


@register_mask_mode("zero", "background pixels set to black")
def _zero(image: Image.Image, mask: np.ndarray) -> Image.Image:
    return Image.composite(image, Image.new("RGB", image.size), mask_image(mask))


@register_mask_mode("blur", "background blurred away (strong Gaussian blur), foreground kept sharp")
def _blur(image: Image.Image, mask: np.ndarray) -> Image.Image:
    radius = max(2.0, 0.06 * min(image.size))
    return Image.composite(image, image.filter(ImageFilter.GaussianBlur(radius)), mask_image(mask))


@register_mask_mode("crop", "cropped to the foreground's bounding box (plus a 10% margin); no foreground = whole image")
def _crop(image: Image.Image, mask: np.ndarray) -> Image.Image:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return image
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    margin_y, margin_x = int(0.1 * (bottom - top)), int(0.1 * (right - left))
    return image.crop((max(0, left - margin_x), max(0, top - margin_y), min(image.width, right + margin_x), min(image.height, bottom + margin_y)))


def mask_preview(image: Image.Image, mask: np.ndarray, mode: str | None = None, colour: tuple[int, int, int] = (255, 40, 40)) -> Image.Image:
    """The image with the mask overlaid (foreground tinted, outlined); with ``mode``, the masked image beside it."""
    image = image.convert("RGB")
    mask = np.asarray(mask, dtype=bool)
    tinted = Image.blend(image, Image.new("RGB", image.size, colour), 0.45)
    overlay = Image.composite(tinted, Image.blend(image, Image.new("RGB", image.size), 0.35), mask_image(mask))
    outline = mask_image(mask).filter(ImageFilter.FIND_EDGES)
    overlay.paste(colour, mask=outline)
    if mode is None:
        return overlay
    applied = apply_mask(image, mask, mode)
    sheet = Image.new("RGB", (image.width + applied.width + 4, max(image.height, applied.height)), (255, 255, 255))
    sheet.paste(overlay, (0, 0))
    sheet.paste(applied, (image.width + 4, 0))
    ImageDraw.Draw(sheet).text((image.width + 8, 2), mode, fill=colour)
    return sheet

