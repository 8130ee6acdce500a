"""Mask sets in the forms users have: a CSV of run-length-encoded masks as the iMaterialist fashion set
ships them (``ImageId, EncodedPixels, Height, Width, ClassId``; the union of an image's rows is its
foreground; column-major, 1-indexed ``start length`` pairs as on Kaggle), or a folder of mask images
named like the images (non-zero = foreground). Readers come from one registry (:func:`read_masks`).
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.core.errors import MaskingError, MissingFileError, UnknownIdError
from engine.core.registry import Registry
from engine.media.scan import iter_image_files

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)

# ---- run-length encoding (Kaggle / iMaterialist convention) --------------------------------------


def rle_decode(encoded: str, height: int, width: int) -> np.ndarray:
    """``start length`` pairs (1-indexed, pixels numbered down each column, then across) to a bool mask."""
    if height <= 0 or width <= 0:
        raise MaskingError(f"mask size must be positive, got {height}x{width}")
    try:
        values = np.asarray(str(encoded or "").split(), dtype=np.int64)
    except (ValueError, OverflowError) as exc:  # OverflowError: a number beyond int64 (found by fuzzing)
        raise MaskingError(f"run-length encoding holds a non-integer or a number too large: {exc}") from exc
    if len(values) % 2:
        raise MaskingError(f"run-length encoding needs start/length pairs, got {len(values)} numbers")
    starts, lengths = values[0::2] - 1, values[1::2]
    pixels = height * width
    # each bound alone first: starts + lengths of two huge int64 values would wrap around
    if len(values) and (starts.min() < 0 or lengths.min() < 0 or starts.max() > pixels or lengths.max() > pixels
                        or (starts + lengths).max() > pixels):
        raise MaskingError(f"run-length encoding runs outside a {height}x{width} mask")
    # +1 at each run's start, -1 after its end: the running sum is > 0 inside any run (overlaps allowed)
    edges = np.zeros(pixels + 1, np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + lengths, -1)
    return (np.cumsum(edges[:-1]) > 0).reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """A 2-D mask to ``start length`` pairs in the convention of :func:`rle_decode`."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    changes[1::2] -= changes[0::2]
    return " ".join(str(v) for v in changes)


def foreground_fraction(mask: np.ndarray) -> float:
    """Share of the image's pixels that are foreground."""
    return float(np.asarray(mask, dtype=bool).mean()) if np.size(mask) else 0.0


# ---- mask sources: one registry of readers -------------------------------------------------------


@dataclass(frozen=True)
class MaskSource:
    """Masks by image name, decoded only when asked for (a mask set can be far larger than memory)."""

    kind: str
    location: Path
    loaders: dict[str, Callable[[], np.ndarray]] = field(repr=False)

    def names(self) -> list[str]:
        return sorted(self.loaders)

    def mask(self, name: str) -> np.ndarray:
        """The bool mask of an image, looked up by file name, else by name without extension."""
        loader = self.loaders.get(name) or self.loaders.get(Path(name).stem)
        if loader is None:
            raise UnknownIdError(f"no mask for {name!r} in {self.location}")
        return loader()

    def has(self, name: str) -> bool:
        return name in self.loaders or Path(name).stem in self.loaders


@dataclass(frozen=True)
class MaskReader:
    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], MaskSource]
    description: str


MASK_READERS: Registry[MaskReader] = Registry("mask format", sort=False)  # auto-detection tries them in this order


def register_mask_reader(reader: MaskReader) -> MaskReader:
    return MASK_READERS.add(reader.name, reader, reader.description)


def list_mask_readers() -> dict[str, str]:
    return MASK_READERS.describe()


def read_masks(location: Path | str, kind: str = "auto") -> MaskSource:
    """Open a mask set; ``auto`` picks the first reader that recognises ``location``."""
    location = Path(location)
    if not location.exists():
        raise MissingFileError(f"mask set not found: {location}; give a CSV of RLE masks or a folder of mask images")
    if kind == "auto":
        for reader in (entry.item for entry in MASK_READERS.entries()):
            if reader.detect(location):
                return reader.read(location)
        raise MaskingError(f"cannot tell what kind of mask set {location} is; give one of {MASK_READERS.names()}")
    return MASK_READERS.get(kind).read(location)


RLE_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width")


def _union_of_runs(name: str, runs: list[tuple[str, int, int]]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        sizes = {(h, w) for _, h, w in runs}
        if len(sizes) > 1:
            raise MaskingError(f"masks of {name!r} disagree on the image size: {sorted(sizes)}")
        height, width = sizes.pop()
        union = np.zeros((height, width), dtype=bool)
        for encoded, _, _ in runs:
            union |= rle_decode(encoded, height, width)
        return union

    return load


def read_rle_csv(path: Path) -> MaskSource:
    """An iMaterialist-style CSV: one row per mask; an image's foreground is the union of its rows."""
    runs: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in RLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MaskingError(f"{path} lacks the columns {missing}; an RLE mask CSV has {list(RLE_COLUMNS)} (and ClassId)")
        for line, row in enumerate(reader, start=2):
            try:
                height, width = int(row["Height"]), int(row["Width"])
            except (TypeError, ValueError) as exc:
                raise MaskingError(f"{path} line {line}: Height/Width must be integers ({exc})") from exc
            runs[row["ImageId"]].append((row["EncodedPixels"], height, width))
    if not runs:
        raise MaskingError(f"{path} holds no masks")
    return MaskSource("rle-csv", path, {name: _union_of_runs(name, r) for name, r in runs.items()})


def load_mask_image(path: Path) -> np.ndarray:
    """A mask image to a bool mask: any non-zero channel is foreground (alpha ignored)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA", "LA"):
            array = np.asarray(image.convert("RGB"))
            return array.any(axis=2)
        return np.asarray(image) > 0


def read_mask_folder(path: Path) -> MaskSource:
    """A folder of mask images named like the images they belong to (by stem)."""
    files = list(iter_image_files(path))
    if not files:
        raise MaskingError(f"{path} holds no mask images")
    stems = defaultdict(list)
    for file in files:
        stems[file.stem].append(file)
    clashes = {s: [f.name for f in fs] for s, fs in stems.items() if len(fs) > 1}
    if clashes:
        raise MaskingError(f"several masks share a name in {path}: {dict(list(clashes.items())[:5])}")
    return MaskSource("png-folder", path, {stem: (lambda f=fs[0]: load_mask_image(f)) for stem, fs in stems.items()})


register_mask_reader(MaskReader("rle-csv", lambda p: p.is_file() and p.suffix.lower() == ".csv", read_rle_csv,
                                "CSV of run-length-encoded masks: ImageId, EncodedPixels, Height, Width, ClassId"))
register_mask_reader(MaskReader("png-folder", lambda p: p.is_dir(), read_mask_folder,
                                "folder of mask images named like the images (non-zero = foreground)"))


def pair_images_with_masks(images: Path | str, masks: MaskSource) -> list[Path]:
    """Image files under ``images`` that have a mask in ``masks`` (the others are logged and skipped)."""
    images = Path(images)
    files = list(iter_image_files(images))
    paired = [f for f in files if masks.has(f.name)]
    if not paired:
        raise MaskingError(
            f"no image under {images} has a mask in {masks.location} (mask names look like {masks.names()[:3]}, "
            f"image names like {[f.name for f in files[:3]]})"
        )
    if len(paired) < len(files):
        logger.warning("%d of %d images under %s have no mask and are skipped", len(files) - len(paired), len(files), images)
    return paired

