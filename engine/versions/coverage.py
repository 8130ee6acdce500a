"""Coverage: every model version kept in step with the catalogue.

The ``images`` table is the catalogue and the one source of truth. Every write to it (ingest, relabel,
re-split, delete, sync, a review decision that joins the catalogue) commits there first; then
:func:`bring_in_step` makes each live version's embeddings table hold exactly the catalogue's images with
their current metadata, parents before children:

* rows of images no longer in the catalogue are deleted;
* rows whose metadata differs from the catalogue's are overwritten (one merge per version);
* missing rows get vectors from the version's kind (``embed_rows``): base, masked and fine-tuned versions
  encode the image files (checked against their content hash); a head applies itself to its parent's stored
  vectors; whitening, TTA and ensembles compute from their parents; an external version cannot embed and is
  marked ``cannot embed`` with what it lacks;
* a version whose every row depends on the whole catalogue (DBA: each vector is averaged with its neighbours,
  and the split says which rows are augmented) is recomputed whole on any change, in one upsert commit.
  Whitening keeps the fit it was published with (the fit is part of its fingerprint and queries are whitened
  by the same fit, so old and new rows stay comparable); new rows are whitened by it, and publishing it again
  refits it.

Each step is idempotent and ends by writing the version's ``coverage`` row, so a kill at any point leaves
tables that open, and the next write (or ``lookalike refresh``) finishes the work. Readers never write:
:func:`coverage_of` answers from the stored row while neither table changed since it was written, and
measures the gap otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

import schemas
from engine.core.clock import utc_now
from engine.core.errors import CannotEmbedError, LookalikeError
from engine.core.faults import fault_point
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.core.splits import sql_quote
from engine.storage.database import Database, ModelRecord
from engine.versions.kinds import KINDS, BuildContext
from engine.versions.resolve import build_context, lineage

logger = logging.getLogger(__name__)

IN_STEP = "in step"
STALE = "stale"
CANNOT_EMBED = "cannot embed"
SHOWN_IDS = 3  # ids named in a reason


@dataclass(frozen=True)
class Gap:
    """What a version's table lacks against the catalogue, measured now."""

    model_id: str
    catalogue_rows: int
    rows: int
    missing: tuple[str, ...]  # catalogue images without a vector
    extra: tuple[str, ...]  # vectors of images no longer in the catalogue
    changed: tuple[str, ...]  # rows whose metadata differs from the catalogue's

    @property
    def in_step(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    def describe(self) -> str:
        parts = [f"{len(ids)} {what}" for ids, what in ((self.missing, "missing"), (self.extra, "deleted"), (self.changed, "with old metadata")) if ids]
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Coverage:
    """A version's coverage record (the ``coverage`` row), plus how many rows the last step wrote."""

    model_id: str
    status: str  # IN_STEP | STALE | CANNOT_EMBED
    catalogue_rows: int
    rows: int
    missing: int
    extra: int
    changed: int
    reason: str | None = None
    written: int = 0

    @property
    def in_step(self) -> bool:
        return self.status == IN_STEP


def _frame(table, key: str, columns: Sequence[str]) -> pl.DataFrame:  # noqa: ANN001 - a LanceDB table
    present = [c for c in columns if c in table.schema.names]
    frame = pl.from_arrow(table.search().select([key, *present]).limit(None).to_arrow())
    return frame.rename({key: "image_id"}) if key != "image_id" else frame


def catalogue_frame(db: Database) -> pl.DataFrame:
    """The catalogue's image ids and metadata columns."""
    return _frame(db.images, "id", db.metadata_columns())


def measure_gap(db: Database, model: ModelRecord, catalogue: pl.DataFrame | None = None) -> Gap:
    """Compare ``model``'s table with the catalogue, row by row and column by column (reads only)."""
    catalogue = catalogue_frame(db) if catalogue is None else catalogue
    columns = [c for c in catalogue.columns if c != "image_id"]
    stored = _frame(db.embeddings(model), "image_id", columns)
    missing = catalogue.join(stored, on="image_id", how="anti")["image_id"].to_list()
    extra = stored.join(catalogue, on="image_id", how="anti")["image_id"].to_list()
    both = catalogue.join(stored, on="image_id", how="inner", suffix="__stored")
    differs = [pl.col(c).ne_missing(pl.col(f"{c}__stored")) if f"{c}__stored" in both.columns else pl.col(c).is_not_null() for c in columns]
    changed = both.filter(pl.any_horizontal(differs))["image_id"].to_list() if differs and both.height else []
    return Gap(model.id, catalogue.height, stored.height, tuple(sorted(missing)), tuple(sorted(extra)), tuple(sorted(changed)))


def live_versions(db: Database) -> list[ModelRecord]:
    """Every version in an order where parents come before the versions made from them."""
    models = {m.id: m for m in db.find_models()}
    ordered: list[ModelRecord] = []
    placed: set[str] = set()

    def place(model: ModelRecord) -> None:
        if model.id in placed:
            return
        placed.add(model.id)
        for parent in KINDS.get(model.kind).parents(model):
            if parent in models:
                place(models[parent])
        ordered.append(model)

    for model in sorted(models.values(), key=lambda m: m.created_at):
        place(model)
    return ordered


def _stored_coverage(db: Database, model: ModelRecord) -> dict | None:
    rows = db.coverage.search().where(f"model_id = {sql_quote(model.id)}").limit(1).to_arrow().to_pylist()
    return rows[0] if rows else None


def _table_version(db: Database, model: ModelRecord) -> int:
    return db.embeddings(model).version


def coverage_of(db: Database, model: ModelRecord, catalogue: pl.DataFrame | None = None) -> Coverage:
    """``model``'s coverage now: its stored record while neither table changed since, else measured (never writes)."""
    stored = _stored_coverage(db, model)
    if stored and stored["images_version"] == db.images.version and stored["table_version"] == _table_version(db, model):
        return Coverage(model.id, stored["status"], stored["catalogue_rows"], stored["rows"], stored["missing"], stored["extra"], stored["changed"], stored["reason"])
    gap = measure_gap(db, model, catalogue)
    reason = None if gap.in_step else f"{gap.describe()}: run lookalike refresh"
    status = IN_STEP if gap.in_step else (stored["status"] if stored and stored["status"] == CANNOT_EMBED else STALE)
    return Coverage(model.id, status, gap.catalogue_rows, gap.rows, len(gap.missing), len(gap.extra), len(gap.changed), reason)


def _record(db: Database, model: ModelRecord, coverage: Coverage) -> None:
    row = {
        "model_id": model.id, "images_version": db.images.version, "table_version": _table_version(db, model),
        "catalogue_rows": coverage.catalogue_rows, "rows": coverage.rows, "missing": coverage.missing, "extra": coverage.extra,
        "changed": coverage.changed, "status": coverage.status, "reason": coverage.reason, "checked_at": utc_now(),
    }
    table = pa.Table.from_pylist([row], schema=schemas.COVERAGE_SCHEMA)
    db.coverage.merge_insert("model_id").when_matched_update_all().when_not_matched_insert_all().execute(table)


def _catalogue_rows(db: Database, image_ids: Sequence[str], catalogue: pl.DataFrame) -> pa.Table:
    wanted = pl.DataFrame({"image_id": list(image_ids)}, schema={"image_id": pl.String})
    return catalogue.join(wanted, on="image_id", how="semi").to_arrow()


def _step(db: Database, model: ModelRecord, context: BuildContext, catalogue: pl.DataFrame) -> Coverage:
    """Bring one version in step (its parents are already); returns its new coverage."""
    db.ensure_user_columns(model)
    gap = measure_gap(db, model, catalogue)
    kind = KINDS.get(model.kind)
    whole = getattr(kind, "depends_on_whole_catalogue", lambda record: False)(model)
    made: list[str] = []
    failure: LookalikeError | None = None
    if gap.extra:
        db.delete_vectors(model, list(gap.extra))
        fault_point("coverage.deleted")
    if gap.changed and not whole:
        db.update_vector_metadata(model, _catalogue_rows(db, gap.changed, catalogue))
        fault_point("coverage.metadata")
    if gap.missing or (whole and not gap.in_step):
        wanted = list(gap.missing) if not whole else catalogue["image_id"].to_list()
        try:
            rows, vectors = kind.embed_rows(context, model, _catalogue_rows(db, wanted, catalogue))
        except LookalikeError as error:
            logger.warning("model %s cannot be brought in step: %s", model.id, error)
            failure = error
        else:
            if rows.num_rows:
                # the catalogue's metadata, whatever the parent rows the vectors came from carried
                made = rows.column("image_id").to_pylist()
                metadata = _catalogue_rows(db, made, catalogue)
                order = {image_id: i for i, image_id in enumerate(metadata.column("image_id").to_pylist())}
                metadata = metadata.take(pa.array([order[i] for i in made], pa.int64()))
                db.write_vectors(model, metadata.column("image_id"), metadata, vectors, replace=whole)
                fault_point("coverage.vectors")
    # what is left follows from what was done (no second read): the extras are gone, the metadata overwritten
    # (by the rewrite, for a version recomputed whole), the rows made are there
    done = set(made)
    missing = [i for i in gap.missing if i not in done]
    changed = [i for i in gap.changed if i not in done] if whole else []
    counts = (gap.catalogue_rows, gap.catalogue_rows - len(missing), len(missing), 0, len(changed))
    if failure is not None:
        return Coverage(model.id, CANNOT_EMBED if isinstance(failure, CannotEmbedError) else STALE, *counts, str(failure))
    if not (missing or changed):
        return Coverage(model.id, IN_STEP, *counts, None, len(made))
    reason = (f"{len(missing)} catalogue images could not be embedded again (file gone or changed: {', '.join(missing[:SHOWN_IDS])}"
              f"{', ...' if len(missing) > SHOWN_IDS else ''}); run lookalike sync on their folder to remove or update them")
    return Coverage(model.id, STALE, *counts, reason, len(made))


def bring_in_step(db: Database, models: Sequence[ModelRecord] | None = None, progress: ProgressCallback | None = None,
                  device: str | None = None) -> list[Coverage]:
    """Make every live version (or the given ones, with their parents first) hold exactly the catalogue's images
    with their current metadata; returns each version's coverage. The caller holds the writer lock."""
    everything = live_versions(db)
    if models is not None:  # a version's parents come along: its rows are made from theirs
        wanted = {ancestor.id for model in models for ancestor in lineage(db, model)}
        everything = [m for m in everything if m.id in wanted]
    catalogue = catalogue_frame(db)
    context = build_context(db, device)
    results = []
    for done, model in enumerate(everything):
        report_progress(progress, Progress("refresh", done, len(everything), "versions", model.id))
        coverage = _step(db, model, context, catalogue)
        _record(db, model, coverage)
        if coverage.written or not coverage.in_step:
            logger.info("model %s: %s, %d rows written%s", model.id, coverage.status, coverage.written, f" ({coverage.reason})" if coverage.reason else "")
        results.append(coverage)
    report_progress(progress, Progress("refresh", len(everything), len(everything), "versions"))
    return results
