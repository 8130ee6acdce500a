"""Boxes: the one shape of a region, and the pure functions that make them (grid windows, mask components)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Box:
    """A region in image pixels (left, top, width, height), with the source's score and label when it has them."""

    x: int
    y: int
    w: int
    h: int
    score: float | None = None
    label: str | None = None

    def clipped(self, width: int, height: int) -> Box | None:
        """This box inside a ``width`` x ``height`` image, or None when nothing of it is inside."""
        left, top = max(0, self.x), max(0, self.y)
        right, bottom = min(width, self.x + self.w), min(height, self.y + self.h)
        if right <= left or bottom <= top:
            return None
        return Box(left, top, right - left, bottom - top, self.score, self.label)

    def area_share(self, width: int, height: int) -> float:
        return self.w * self.h / max(width * height, 1)

    def as_pil(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.x + self.w, self.y + self.h


def parse_box(text: str) -> Box:
    """``x,y,w,h`` in pixels."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(f"a box is x,y,w,h in whole pixels, e.g. 10,20,64,48; got {text!r}")
    x, y, w, h = (int(p) for p in parts)
    if w <= 0 or h <= 0:
        raise ValueError(f"a box needs a positive width and height; got {text!r}")
    return Box(x, y, w, h)


def region_id(image_id: str, source: str, box: Box) -> str:
    """The key of a region: the same box of the same image from the same source is the same region."""
    return hashlib.blake2b(f"{image_id}|{source}|{box.x},{box.y},{box.w},{box.h}".encode(), digest_size=16).hexdigest()


def grid_boxes(width: int, height: int, window_shares: tuple[float, ...], overlap: float) -> list[Box]:
    """Square-ish windows of each share of the image's sides, stepped so neighbours overlap by ``overlap``."""
    boxes = []
    for share in window_shares:
        w, h = max(1, round(width * share)), max(1, round(height * share))
        step_x, step_y = max(1, round(w * (1 - overlap))), max(1, round(h * (1 - overlap)))
        xs = list(range(0, max(width - w, 0) + 1, step_x))
        ys = list(range(0, max(height - h, 0) + 1, step_y))
        if xs[-1] != max(width - w, 0):
            xs.append(max(width - w, 0))  # the last window reaches the edge
        if ys[-1] != max(height - h, 0):
            ys.append(max(height - h, 0))
        boxes.extend(Box(x, y, w, h) for y in ys for x in xs)
    return boxes


def component_boxes(mask: np.ndarray, min_area_share: float, padding: float = 0.0, label: str | None = None) -> list[Box]:
    """The bounding box of every 8-connected component of a bool mask whose pixels are at least ``min_area_share``
    of the image, grown by ``padding`` of its size on each side; its score is the share of the box that is foreground."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    height, width = mask.shape
    boxes = []
    for index, found in enumerate(ndimage.find_objects(labelled), start=1):
        if found is None:
            continue
        pixels = int((labelled[found] == index).sum())
        if pixels < min_area_share * height * width:
            continue
        top, bottom, left, right = found[0].start, found[0].stop, found[1].start, found[1].stop
        grow_x, grow_y = round((right - left) * padding), round((bottom - top) * padding)
        box = Box(left - grow_x, top - grow_y, right - left + 2 * grow_x, bottom - top + 2 * grow_y).clipped(width, height)
        if box is not None:
            boxes.append(Box(box.x, box.y, box.w, box.h, pixels / (box.w * box.h), label))
    return boxes
