"""Catalogue edits: relabel, re-split (or a fresh stratified holdout), delete, user metadata columns, what a
re-scan of a folder observed, and dropping model versions.

Each public function takes the writer lock, checks everything it was given before writing anything, commits
the change to ``images`` (the catalogue: one commit), then brings every model version in step. A kill after
the commit leaves the versions behind the catalogue; the next write or ``lookalike refresh`` catches them up
(:mod:`engine.versions.coverage`). The ``*_locked`` variants are for callers that hold the lock (ingest).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from sklearn.model_selection import train_test_split

from engine.core.errors import InvalidRequestError, NotFoundError, VersionError
from engine.core.faults import fault_point
from engine.core.progress import ProgressCallback
from engine.core.splits import sql_quote
from engine.storage.database import ACTIVE_MODEL_KEY, Database, ModelRecord
from engine.storage.filters import check_where
from engine.storage.lock import writer_lock
from engine.versions.coverage import Coverage, bring_in_step, live_versions
from engine.versions.kinds import KINDS

logger = logging.getLogger(__name__)

MAX_LABEL_CHARS = 200
MIN_PER_CLASS_TO_SPLIT = 2  # a class with one image cannot give some to a holdout and keep some


@dataclass(frozen=True)
class Selection:
    """Which catalogue images an edit applies to: ids (or unique prefixes) or a ``where`` filter, not both."""

    ids: tuple[str, ...] = ()
    where: str | None = None


@dataclass(frozen=True)
class EditReport:
    """What an edit changed, and the coverage of every version after it."""

    action: str
    images: int  # images the edit changed (or, for a dry run, would change)
    catalogue: int  # images in the catalogue after it
    versions: list[Coverage] = field(default_factory=list)
    dry_run: bool = False


def check_label(text: str, what: str = "label") -> str:
    """A class or split name as given, if it can be one: not empty, no control characters (newlines), no spaces
    (classes are written space-separated in label CSVs), at most ``MAX_LABEL_CHARS``."""
    if text is None or not text.strip():
        raise InvalidRequestError(f"an empty {what} cannot be given; name the class")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InvalidRequestError(f"{what} {text[:40]!r} holds a newline or other control character; give it on one line without them")
    if any(ch.isspace() for ch in text):
        raise InvalidRequestError(f"{what} {text!r} holds a space; classes are space-separated in label CSVs, so use _ ({text.strip().replace(' ', '_')!r})")
    if len(text) > MAX_LABEL_CHARS:
        raise InvalidRequestError(f"{what} is {len(text)} characters long; at most {MAX_LABEL_CHARS}")
    return text


def select_images(db: Database, selection: Selection) -> list[str]:
    """The ids a selection names, checked: unknown ids and bad or empty filters are errors, nothing is guessed."""
    if bool(selection.ids) == (selection.where is not None):
        raise InvalidRequestError("give image ids or --where, one of the two")
    if selection.ids:
        return sorted(set(db.resolve_image_ids(list(selection.ids))))
    where = check_where(selection.where, db.images.schema.names)
    if where is None:
        raise InvalidRequestError("the --where filter is empty; to select every image say so: --where 'true'")
    return sorted(db.images_frame(where, ["id"])["id"].to_list())


def _catalogue_size(db: Database) -> int:
    return db.images.count_rows()


def _finish(db: Database, action: str, changed: int, progress: ProgressCallback | None, device: str | None) -> EditReport:
    versions = bring_in_step(db, progress=progress, device=device)
    report = EditReport(action, changed, _catalogue_size(db), versions)
    logger.info("%s: %d images; versions: %s", action, changed, {c.model_id: c.status for c in versions})
    return report


def _set_columns(db: Database, image_ids: Sequence[str], values: dict[str, Any]) -> None:
    """One commit to ``images``: the given columns set to ``values`` for ``image_ids``."""
    columns = {"id": pa.array(list(image_ids), pa.string())}
    schema = db.images.schema
    for name, value in values.items():
        columns[name] = pa.array([value] * len(image_ids), schema.field(name).type)
    db.update_images(pa.table(columns))


def relabel(db: Database, selection: Selection, label: str, *, progress: ProgressCallback | None = None, device: str | None = None) -> EditReport:
    """Give the selected images the class ``label`` (``label`` and ``labels``), everywhere."""
    label = check_label(label)
    with writer_lock(db.uri, f"relabel to {label}"):
        ids = select_images(db, selection)
        _set_columns(db, ids, {"label": label, "labels": [label]})
        fault_point("edit.committed")
        return _finish(db, "relabel", len(ids), progress, device)


def relabel_from_csv(db: Database, csv_path: Path, *, progress: ProgressCallback | None = None, device: str | None = None) -> EditReport:
    """Relabel from a CSV of ``image,label`` rows (an image id or prefix, a stored path, or a file name); every row is
    checked before anything is written."""
    from engine.media.scan import read_label_csv

    mapping = read_label_csv(Path(csv_path))
    with writer_lock(db.uri, f"relabel from {csv_path}"):
        stored = db.images_frame(columns=["id", "path"])
        by_path = dict(zip(stored["path"], stored["id"]))
        by_name: dict[str, list[str]] = {}
        for path, image_id in by_path.items():
            by_name.setdefault(Path(path).name, []).append(image_id)
        new_labels: dict[str, str] = {}
        for key, labels in mapping.items():
            if len(labels) != 1:
                raise InvalidRequestError(f"{csv_path}: {key!r} is given {len(labels)} labels; relabel gives each image one")
            label = check_label(labels[0])
            if key in by_path:
                image_id = by_path[key]
            elif len(by_name.get(key, [])) == 1:
                image_id = by_name[key][0]
            elif len(by_name.get(key, [])) > 1:
                raise InvalidRequestError(f"{csv_path}: file name {key!r} is shared by {len(by_name[key])} images; give its path or id")
            else:
                try:
                    (image_id,) = db.resolve_image_ids([key])
                except NotFoundError as error:
                    raise NotFoundError(f"{csv_path}: {key!r} is no stored image (by path, file name or id): {error}") from error
            new_labels[image_id] = label
        ids = sorted(new_labels)
        labels = [new_labels[i] for i in ids]
        db.update_images(pa.table({"id": pa.array(ids, pa.string()), "label": pa.array(labels, pa.string()),
                                   "labels": pa.array([[label] for label in labels], pa.list_(pa.string()))}))
        fault_point("edit.committed")
        return _finish(db, "relabel", len(ids), progress, device)


def move_to_split(db: Database, selection: Selection, split: str, *, progress: ProgressCallback | None = None, device: str | None = None) -> EditReport:
    """Move the selected images to ``split``."""
    split = check_label(split, "split")
    with writer_lock(db.uri, f"split to {split}"):
        ids = select_images(db, selection)
        _set_columns(db, ids, {"split": split})
        fault_point("edit.committed")
        return _finish(db, "split", len(ids), progress, device)


RESTORABLE_COLUMNS = ("label", "labels", "split")


def restore(db: Database, values: dict[str, dict[str, Any]], *, progress: ProgressCallback | None = None, device: str | None = None) -> EditReport:
    """Give images back earlier values of ``label``/``labels``/``split``, each its own (an undo): ``{image id: {column:
    value}}``, one commit. Images no longer in the catalogue are refused by name."""
    columns = sorted({name for row in values.values() for name in row})
    if not values or any(name not in RESTORABLE_COLUMNS for name in columns) or any(set(row) != set(columns) for row in values.values()):
        raise InvalidRequestError(f"restore takes the same columns of {list(RESTORABLE_COLUMNS)} for every image, got {columns}")
    with writer_lock(db.uri, "restore labels and splits"):
        ids = sorted(values)
        present = set(db.images_frame(f"id IN ({', '.join(sql_quote(i) for i in ids)})", ["id"])["id"].to_list())
        gone = [i for i in ids if i not in present]
        if gone:
            raise NotFoundError(f"{len(gone)} of these images are no longer in the catalogue ({', '.join(gone[:3])}); nothing was restored")
        schema = db.images.schema
        table = {"id": pa.array(ids, pa.string())}
        for name in columns:
            table[name] = pa.array([values[i][name] for i in ids], schema.field(name).type)
        db.update_images(pa.table(table))
        fault_point("edit.committed")
        return _finish(db, "restore", len(ids), progress, device)


def holdout(db: Database, fraction: float, split: str, *, where: str | None = None, seed: int = 0,
            progress: ProgressCallback | None = None, device: str | None = None) -> EditReport:
    """Move a seeded, stratified ``fraction`` of each class among the images ``where`` selects (default: all) to
    ``split`` (scikit-learn's ``train_test_split``); a class of one image stays where it is."""
    if not 0.0 < fraction < 1.0:
        raise InvalidRequestError(f"a holdout fraction is between 0 and 1, not {fraction}")
    split = check_label(split, "split")
    with writer_lock(db.uri, f"holdout {fraction} to {split}"):
        chosen = check_where(where, db.images.schema.names)
        frame = db.images_frame(chosen, ["id", "label"]).sort("id")
        counts = frame.group_by("label").len()
        splittable = frame.join(counts.filter(pl.col("len") >= MIN_PER_CLASS_TO_SPLIT).select("label"), on="label", how="semi")
        if splittable.height < MIN_PER_CLASS_TO_SPLIT:
            raise InvalidRequestError(f"{frame.height} images selected, too few to hold some out (each class needs {MIN_PER_CLASS_TO_SPLIT})")
        labels = splittable["label"].fill_null("").to_list()
        _, held = train_test_split(splittable["id"].to_list(), test_size=fraction, stratify=labels, random_state=seed)
        _set_columns(db, sorted(held), {"split": split})
        fault_point("edit.committed")
        return _finish(db, "holdout", len(held), progress, device)


def delete(db: Database, selection: Selection, *, dry_run: bool = False, allow_empty: bool = False,
           progress: ProgressCallback | None = None, device: str | None = None) -> EditReport:
    """Remove the selected images from the catalogue and every version; ``dry_run`` only counts them. Emptying
    the catalogue is refused unless ``allow_empty``."""
    with writer_lock(db.uri, "delete"):
        ids = select_images(db, selection)
        total = _catalogue_size(db)
        if dry_run:
            return EditReport("delete", len(ids), total, dry_run=True)
        if ids and len(ids) == total and not allow_empty:
            raise InvalidRequestError(f"this would delete all {total} images and leave an empty catalogue; add --all to mean it")
        delete_locked(db, ids)
        return _finish(db, "delete", len(ids), progress, device)


def delete_locked(db: Database, image_ids: Sequence[str]) -> None:
    """Remove images from ``images`` (the commit point); the caller holds the lock and brings the versions in step after."""
    db.delete_images(list(image_ids))
    fault_point("edit.committed")


def add_metadata_columns(db: Database, fields: Sequence[pa.Field]) -> list[pa.Field]:
    """User metadata columns added to the catalogue and every version (the caller holds the lock)."""
    return db.add_user_columns(fields)


# ---- what a re-scan observed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """A file a scan found whose content is (now) in the catalogue: where it is and what the scan says of it."""

    image_id: str
    path: str
    source: str
    labels: tuple[str, ...]
    split: str | None
    user: dict[str, Any] | None = None  # its row of the metadata CSV, when one was given


@dataclass(frozen=True)
class ObservedChanges:
    relabelled: int = 0
    resplit: int = 0
    moved: int = 0
    metadata: int = 0
    images: int = 0  # distinct images changed (one may be relabelled and moved)


def apply_observed(db: Database, observed: Sequence[Observed]) -> ObservedChanges:
    """Bring catalogue rows in line with a scan (the caller holds the lock): a class or split the scan gives that
    differs is taken (a scan that gives none keeps the stored one), a file whose stored path is gone gets the path
    it was found at, and metadata CSV values are taken. One commit to ``images``; the first file of a content wins."""
    first: dict[str, Observed] = {}
    for item in observed:
        first.setdefault(item.image_id, item)
    if not first:
        return ObservedChanges()
    user_columns = [f.name for f in db.user_fields()]
    stored = db.images_frame(columns=["id", "path", "source", "label", "labels", "split", *user_columns])
    stored = stored.filter(pl.col("id").is_in(list(first)))
    updates, counts = [], {"relabelled": 0, "resplit": 0, "moved": 0, "metadata": 0}
    for row in stored.iter_rows(named=True):
        seen = first[row["id"]]
        new = dict(row)
        if seen.labels and list(seen.labels) != (row["labels"] or []):
            new["label"], new["labels"] = seen.labels[0], list(seen.labels)
            counts["relabelled"] += 1
        if seen.split is not None and seen.split != row["split"]:
            new["split"] = seen.split
            counts["resplit"] += 1
        if seen.path != row["path"] and not Path(row["path"]).exists():
            new["path"], new["source"] = seen.path, seen.source
            counts["moved"] += 1
        if seen.user:
            given = {k: v for k, v in seen.user.items() if k in user_columns and v != row[k]}
            if given:
                new.update(given)
                counts["metadata"] += 1
        if new != row:
            updates.append(new)
    if updates:
        schema = db.images_schema()
        db.update_images(pa.Table.from_pylist(updates, schema=pa.schema([schema.field(name) for name in updates[0]])))
        logger.info("re-scan: %s", counts)
    return ObservedChanges(**counts, images=len(updates))


# ---- dropping versions ---------------------------------------------------------------------------------


def drop_versions(db: Database, model_ids: Sequence[str]) -> list[ModelRecord]:
    """Drop model versions (row, embeddings table, coverage and calibrations). Refused for the last version, and
    for a version others are made from unless those are dropped too; the active version passes to its parent,
    else to the newest one left."""
    with writer_lock(db.uri, "drop model versions"):
        chosen = [db.resolve_model(m) for m in model_ids]
        if not chosen:
            raise InvalidRequestError("name the model versions to drop (lookalike models lists them)")
        dropping = {m.id for m in chosen}
        everything = live_versions(db)
        left = [m for m in everything if m.id not in dropping]
        if not left:
            raise VersionError(f"dropping {', '.join(sorted(dropping))} would leave no model version; a database keeps at least one "
                               "(ingest with another encoder first, or delete the database folder)")
        for model in left:
            used = dropping & set(KINDS.get(model.kind).parents(model))
            if used:
                raise VersionError(f"model {model.id} is made from {', '.join(sorted(used))}; drop it too (name both) or keep its parent")
        active = db.active_model_id()
        if active in dropping:
            gone = next(m for m in chosen if m.id == active)
            successor = gone.parent if gone.parent and gone.parent not in dropping else max(left, key=lambda m: m.created_at).id
            db.set_setting(ACTIVE_MODEL_KEY, successor)
            logger.info("active model %s dropped: %s is active now", active, successor)
        for model in reversed([m for m in everything if m.id in dropping]):  # children before parents
            db.drop_model(model)
        return chosen
