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


def iter_image_files(root: Path, problems: list[OSError] | None = None, others: list[Path] | None = None) -> Iterator[Path]:
    """Image files under ``root``, recursively, sorted by relative path; links to folders are not followed.

    Folders that cannot be listed (no read permission, a path longer than the system allows) are appended to
    ``problems`` when given, and logged either way: never skipped in silence. Files that are not images by their
    suffix are appended to ``others`` when given.
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
            elif others is not None:
                others.append(Path(directory) / name)


def class_name(text: str) -> str:
    """A class name as stored: runs of whitespace become one ``_``.

    Classes are written space-separated (Kaggle's ``Id`` column, CSV labels), so a name with a space in it
    would read back as several classes; ``sub dir`` is stored as ``sub_dir``.
    """
    return "_".join(text.split())


LABEL_FROM = {"top": 1, "parent": -1}  # --label-from: the folder right below the root, or the one a file sits in
CSV_FILE_COLUMNS = ("image", "file", "filename", "file_name", "path", "image_id", "imageid", "name", "id")  # in order of preference
CSV_LABEL_COLUMNS = ("labels", "label", "classes", "class", "category", "categories", "target", "tags", "id")


def labels_from_folders(path: Path, root: Path, depth: int = LABEL_FROM["top"]) -> tuple[str, ...]:
    """The class of an image from its folders (whitespace normalised): with ``depth`` N > 0 the N-th folder below
    ``root`` (1: the top one), with -1 the folder the file sits in. Images with too few folders have none."""
    folders = path.relative_to(root).parts[:-1]
    if depth < 0:
        return (class_name(folders[depth]),) if len(folders) >= -depth else ()
    return (class_name(folders[depth - 1]),) if len(folders) >= depth else ()


def read_label_csv(csv_path: Path) -> dict[str, tuple[str, ...]]:
    """Read ``file name -> classes`` from a CSV as Kaggle sets ship them.

    Without a header the first column is the image file name (with or without extension, or a relative path)
    and the second holds one or more class ids separated by spaces. With a header the columns are found by name
    (``image``/``file``/``path``... and ``labels``/``class``/``Id``...); a header naming neither is refused.
    """
    mapping: dict[str, tuple[str, ...]] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise DataError(f"label CSV {csv_path} is not UTF-8 text; save it as UTF-8 CSV") from None
    except OSError as exc:
        raise DataError(f"cannot read label CSV {csv_path}: {exc.strerror or exc}") from None
    if not rows:
        raise DataError(f"label CSV {csv_path} is empty")
    file_column, label_column, rows = _csv_columns(csv_path, rows)
    for line_no, row in enumerate(rows, start=2):
        if len(row) <= max(file_column, label_column):
            raise DataError(f"{csv_path}:{line_no}: expected a file name and its classes, got {row!r}")
        mapping[row[file_column].strip()] = tuple(row[label_column].split())
    return mapping


def _csv_columns(csv_path: Path, rows: list[list[str]]) -> tuple[int, int, list[list[str]]]:
    """Which column holds the file name and which the classes, and the data rows (without the header)."""
    header = [cell.strip().lower() for cell in rows[0]]
    file_column = next((header.index(name) for name in CSV_FILE_COLUMNS if name in header), None)
    if file_column is None:
        if _looks_like_header(rows):
            raise DataError(f"label CSV {csv_path}: cannot tell its columns {rows[0]!r}; expected a file column "
                            f"({', '.join(CSV_FILE_COLUMNS[:5])}) and a class column ({', '.join(CSV_LABEL_COLUMNS[:5])}, Id), "
                            "or no header with the file name first and its space-separated classes second")
        return 0, 1, rows
    label_column = next((header.index(name) for name in CSV_LABEL_COLUMNS if name in header and header.index(name) != file_column), None)
    if label_column is None:
        others = [i for i in range(len(header)) if i != file_column]
        if len(others) != 1:
            raise DataError(f"label CSV {csv_path}: which of {[rows[0][i] for i in others]} holds the classes? name it 'labels' (or {', '.join(CSV_LABEL_COLUMNS[1:5])})")
        label_column = others[0]
    return file_column, label_column, rows[1:]


def _looks_like_header(rows: list[list[str]]) -> bool:
    """A first row whose first cell names no image file while the next rows' do: column names nobody can read."""
    first = rows[0][0].strip()
    later = [row[0].strip() for row in rows[1:] if row]
    names_file = lambda cell: Path(cell).suffix.lower() in IMAGE_SUFFIXES  # noqa: E731
    return not names_file(first) and bool(later) and any(names_file(cell) for cell in later)


def _csv_key(path: Path, root: Path, mapping: dict[str, tuple[str, ...]]) -> str | None:
    relative = path.relative_to(root)
    return next((key for key in (relative.as_posix(), path.name, path.stem) if key in mapping), None)


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


@dataclass(frozen=True)
class ScanSummary:
    """How a scan labelled what it found, so that nothing is left out in silence."""

    images: int
    labelled: int
    unlabelled: int  # images the rule gave no class: top-level files, too shallow for the depth, or not in the CSV
    other_files: int  # files skipped because their suffix is not an image's
    label_source: str  # "folders (depth N)" or "CSV name"
    csv_rows: int = 0
    csv_rows_without_file: int = 0  # CSV rows naming a file the folder does not hold

    def lines(self) -> list[str]:
        """The summary as sentences a person reads after an ingest."""
        said = [f"labels from {self.label_source}: {self.labelled} images labelled, {self.unlabelled} without a label"]
        if self.csv_rows:
            said[0] += f"; {self.csv_rows} CSV rows, {self.csv_rows_without_file} of them naming no file found"
        if self.other_files:
            said.append(f"{self.other_files} files skipped: not images by their suffix ({', '.join(sorted(IMAGE_SUFFIXES)[:6])}, ...)")
        return said


@dataclass(frozen=True)
class Scan:
    files: list[SourceFile]
    summary: ScanSummary


def scan(
    root: Path,
    labels_csv: Path | None = None,
    split: str | None = None,
    holdout: float | None = None,
    holdout_split: str = "val",
    seed: int = 0,
    label_depth: int = LABEL_FROM["top"],
) -> Scan:
    """The files to ingest under ``root`` in deterministic order, labelled from folders (``label_depth``) or a CSV,
    with a summary of how each was labelled. A CSV that names none of the files is refused."""
    root = Path(root)
    if not root.is_dir():
        raise NotAFolderError(f"not a folder: {root}; give the folder that holds the images")
    if label_depth == 0:
        raise DataError("the label depth counts folders below the root: 1 or more, or -1 for the folder a file sits in")
    mapping = read_label_csv(labels_csv) if labels_csv else None
    problems: list[OSError] = []
    others: list[Path] = []
    files, used_keys = [], set()
    for path in iter_image_files(root, problems, others):
        if mapping is None:
            labels = labels_from_folders(path, root, label_depth)
        else:
            key = _csv_key(path, root, mapping)
            used_keys.add(key)
            labels = mapping[key] if key is not None else ()
        files.append(SourceFile(path, labels, split))
    labelled = sum(1 for f in files if f.labels)
    if mapping is not None and files and mapping and not used_keys - {None}:
        example = next(iter(mapping))
        raise DataError(f"label CSV {labels_csv} names none of the {len(files)} images under {root} (its first file column holds e.g. "
                        f"{example!r}): give file names relative to that folder, with or without the extension")
    if holdout:
        files = stratified_holdout(files, holdout, seed, holdout_split)
    source = f"CSV {Path(labels_csv).name}" if mapping is not None else (
        "the folder each file sits in" if label_depth < 0 else f"folder names ({'the top folder' if label_depth == 1 else f'{label_depth} levels down'})")
    summary = ScanSummary(len(files), labelled, len(files) - labelled, len(others), source,
                          csv_rows=len(mapping or {}), csv_rows_without_file=len(set(mapping or {}) - used_keys))
    unread = [SourceFile(Path(str(p.filename)), (), split, f"cannot read folder: {p.strerror or p}") for p in problems]
    logger.info("found %d image files under %s%s", len(files), root, f", {len(unread)} folders unreadable" if unread else "")
    return Scan(files + unread, summary)


def scan_folder(
    root: Path,
    labels_csv: Path | None = None,
    split: str | None = None,
    holdout: float | None = None,
    holdout_split: str = "val",
    seed: int = 0,
    label_depth: int = LABEL_FROM["top"],
) -> list[SourceFile]:
    """The files of :func:`scan`, without the summary."""
    return scan(root, labels_csv, split, holdout, holdout_split, seed, label_depth).files
