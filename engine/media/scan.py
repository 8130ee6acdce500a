"""Reader stage: find the image files under a folder, with their labels and split, in a fixed order."""

from __future__ import annotations

import csv
import logging
import os
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import DataError, NotAFolderError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif", ".heic", ".avif"}
)


@dataclass(frozen=True)
class SourceFile:
    """One file to ingest: where it is, the classes it belongs to, and its split."""

    path: Path
    labels: tuple[str, ...]
    split: str | None
    error: str | None = None  # a folder the scan could not read: it becomes an error row, not a silent gap


def iter_image_files(root: Path, problems: list[OSError] | None = None) -> Iterator[Path]:
    """Image files under ``root``, recursively, sorted by relative path; links to folders are not followed.

    Folders that cannot be listed (no read permission, a path longer than the system allows) are appended to
    ``problems`` when given, and logged either way: never skipped in silence.
    """

    def unreadable(error: OSError) -> None:
        logger.warning("cannot read folder %s: %s", error.filename, error.strerror or error)
        if problems is not None:
            problems.append(error)

    for directory, subdirs, files in os.walk(root, followlinks=False, onerror=unreadable):
        subdirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(directory) / name


def class_name(text: str) -> str:
    """A class name as stored: runs of whitespace become one ``_``.

    Classes are written space-separated (Kaggle's ``Id`` column, CSV labels), so a name with a space in it
    would read back as several classes; ``sub dir`` is stored as ``sub_dir``.
    """
    return "_".join(text.split())


def labels_from_folders(path: Path, root: Path) -> tuple[str, ...]:
    """The sub-folder an image sits in is its class (whitespace normalised); images directly in ``root`` have none."""
    relative = path.relative_to(root)
    return (class_name(relative.parts[0]),) if len(relative.parts) > 1 else ()


def read_label_csv(csv_path: Path) -> dict[str, tuple[str, ...]]:
    """Read ``file name -> classes`` from a CSV as Kaggle sets ship them.

    The first column is the image file name (with or without extension, or a relative path); the
    second holds one or more class ids separated by spaces. A header row is detected and skipped.
    """
    mapping: dict[str, tuple[str, ...]] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DataError(f"label CSV {csv_path} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    if header and header[0] in {"image", "id", "file", "filename", "image_id", "imageid", "path", "name"}:
        rows = rows[1:]
    for line_no, row in enumerate(rows, start=2):
        if len(row) < 2:
            raise DataError(f"{csv_path}:{line_no}: expected 'image,classes', got {row!r}")
        mapping[row[0].strip()] = tuple(row[1].split())
    return mapping


def _csv_labels(path: Path, root: Path, mapping: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    relative = path.relative_to(root)
    for key in (relative.as_posix(), path.name, path.stem):
        if key in mapping:
            return mapping[key]
    return ()


def stratified_holdout(files: list[SourceFile], fraction: float, seed: int, holdout_split: str) -> list[SourceFile]:
    """Move ``fraction`` of every class (seeded, stratified) to ``holdout_split``; order is kept."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"holdout fraction must be between 0 and 1, got {fraction}")
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(files):
        by_class[item.labels[0] if item.labels else ""].append(index)
    rng = random.Random(seed)
    held: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        held.update(members[: round(len(members) * fraction)])
    return [
        SourceFile(f.path, f.labels, holdout_split) if i in held else f for i, f in enumerate(files)
    ]


def scan_folder(
    root: Path,
    labels_csv: Path | None = None,
    split: str | None = None,
    holdout: float | None = None,
    holdout_split: str = "val",
    seed: int = 0,
) -> list[SourceFile]:
    """The files to ingest under ``root`` in deterministic order, labelled from folders or a CSV."""
    root = Path(root)
    if not root.is_dir():
        raise NotAFolderError(f"not a folder: {root}; give the folder that holds the images")
    mapping = read_label_csv(labels_csv) if labels_csv else None
    problems: list[OSError] = []
    files = [
        SourceFile(path, _csv_labels(path, root, mapping) if mapping is not None else labels_from_folders(path, root), split)
        for path in iter_image_files(root, problems)
    ]
    if holdout:
        files = stratified_holdout(files, holdout, seed, holdout_split)
    unread = [SourceFile(Path(str(p.filename)), (), split, f"cannot read folder: {p.strerror or p}") for p in problems]
    logger.info("found %d image files under %s%s", len(files), root, f", {len(unread)} folders unreadable" if unread else "")
    return files + unread
