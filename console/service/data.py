"""Use cases that change the catalogue's data or report how each version covers it: relabel, split, hold out,
delete, sync a folder, refresh versions, drop versions, coverage, export. Thin over ``engine.catalogue``,
``engine.versions.coverage`` and ``ingest.sync``; the CLI and the console call these."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from engine.catalogue import edits
from engine.catalogue.edits import EditReport, Selection
from engine.core.errors import InvalidRequestError
from engine.core.progress import ProgressCallback
from engine.encoders.config import DEFAULT_ENCODER, EncoderConfig
from engine.storage.database import Database, ModelNotFoundError, ModelRecord
from engine.storage.lock import writer_lock
from engine.versions.coverage import Coverage, bring_in_step, catalogue_frame, coverage_of, live_versions
from engine.versions.resolve import base_version
from ingest.pipeline import IngestConfig
from ingest.sync import SyncReport, sync_folder

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("parquet", "csv", "json")
EXPORT_WHAT = ("images", "embeddings", "results")

relabel = edits.relabel
relabel_from_csv = edits.relabel_from_csv
move_to_split = edits.move_to_split
holdout = edits.holdout
delete = edits.delete
drop_versions = edits.drop_versions
__all__ = ["EditReport", "Selection", "relabel", "relabel_from_csv", "move_to_split", "holdout", "delete", "drop_versions",
           "catalogue_encoder_config", "sync", "refresh", "coverage_frame", "export"]


def catalogue_encoder_config(db: Database, given: EncoderConfig | None = None) -> EncoderConfig:
    """The encoder a folder joins the catalogue with: ``given`` when the user named one, else the base encoder the
    active version is built on (a head on Lite2: Lite2), else the default encoder. Every other version then
    follows through :func:`bring_in_step`."""
    if given is not None:
        return given
    try:
        base = base_version(db, db.resolve_model())
    except ModelNotFoundError:  # an empty database
        base = None
    if base is None:
        return EncoderConfig(name=DEFAULT_ENCODER)
    settings = base.settings
    weights = settings.get("weights")
    return EncoderConfig(name=settings.get("name", base.encoder), weights=weights if weights and db.artifact(weights).is_file() else None)


def sync(db: Database, folder: Path, config: IngestConfig = IngestConfig(), encoder: EncoderConfig | None = None,
         keep_missing: bool = False, progress: ProgressCallback | None = None) -> SyncReport:
    """Re-scan ``folder`` and make the catalogue (and every version) match it."""
    from engine.encoders.factory import create_encoder

    return sync_folder(db, folder, config, create_encoder(catalogue_encoder_config(db, encoder)), keep_missing, progress)


def refresh(db: Database, models: list[str] | None = None, device: str | None = None, progress: ProgressCallback | None = None) -> list[Coverage]:
    """Bring every version (or the named ones and their parents) in step with the catalogue."""
    with writer_lock(db.uri, "refresh"):
        chosen = [db.resolve_model(m) for m in models] if models else None
        return bring_in_step(db, chosen, progress=progress, device=device)


def encode_catalogue(db: Database, encoders: Sequence[str], device: str | None = None, progress: ProgressCallback | None = None) -> list[ModelRecord]:
    """Base versions of the registered ``encoders``, each holding every catalogue image (encoded from the stored
    files); a version that exists already is only brought in step. A killed run is finished by the next."""
    from engine.encoders.factory import create_encoder

    records = []
    with writer_lock(db.uri, "encode"):
        for name in encoders:
            record = db.register_model(create_encoder(EncoderConfig(name=name, device=device)))
            bring_in_step(db, [record], progress=progress, device=device)
            records.append(record)
    return records


def coverage_frame(db: Database) -> pl.DataFrame:
    """Every version's coverage now (never writes): status, rows, and what it lacks."""
    versions = live_versions(db)
    catalogue = catalogue_frame(db) if versions else None
    rows = [coverage_of(db, model, catalogue).__dict__ for model in versions]
    schema = {"model_id": pl.String, "status": pl.String, "catalogue_rows": pl.Int64, "rows": pl.Int64, "missing": pl.Int64,
              "extra": pl.Int64, "changed": pl.Int64, "reason": pl.String, "written": pl.Int64}
    return pl.DataFrame(rows, schema=schema).drop("written")


def index_checks_frame(db: Database) -> pl.DataFrame:
    """The recall checks of each version's indexes, as saved beside them (never builds one): its newest in-memory
    graph's and its LanceDB index's, with the setting each searched with."""
    from engine.search.memory_index import saved_checks
    from engine.search.searcher import index_folder

    rows = []
    for model in live_versions(db):
        for check in saved_checks(index_folder(db, model)):
            rows.append({"model_id": model.id, "index": check.kind, "table_version": check.version, "rows": check.rows,
                         "recall": check.recall, "k": check.k, "sample": check.queries, "setting": check.setting, "ok": check.ok})
    return pl.DataFrame(rows)


def index_recall_frame(db: Database) -> pl.DataFrame:
    """model_id -> index_recall: each version's last checked recall@10, its in-memory graph's before LanceDB's."""
    checks = index_checks_frame(db)
    if checks.height == 0:
        return pl.DataFrame(schema={"model_id": pl.String, "index_recall": pl.Float64})
    preferred = checks.sort(pl.col("index").str.starts_with("lancedb"), maintain_order=True).unique("model_id", keep="first", maintain_order=True)
    return preferred.select("model_id", pl.col("recall").alias("index_recall"))


def _tabular(frame: pl.DataFrame, format_name: str) -> pl.DataFrame:
    """CSV holds no lists: list columns become JSON text."""
    if format_name != "csv":
        return frame
    lists = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.List | pl.Array)]
    return frame.with_columns(pl.Series(name, [None if v is None else json.dumps(v) for v in frame[name].to_list()], pl.String) for name in lists)


def write_frame(frame: pl.DataFrame, out: Path, format_name: str | None = None) -> tuple[Path, str]:
    """Write ``frame`` as parquet, CSV or JSON (rows as objects); the format from ``format_name`` or the suffix."""
    out = Path(out)
    format_name = format_name or out.suffix.lstrip(".").lower()
    if format_name not in EXPORT_FORMATS:
        raise InvalidRequestError(f"cannot tell the format of {out}: give --format {'|'.join(EXPORT_FORMATS)} or a file ending in one")
    if out.is_dir():
        raise InvalidRequestError(f"--out {out} is a folder; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = _tabular(frame, format_name)
    tmp = out.with_name(out.name + ".tmp")
    {"parquet": frame.write_parquet, "csv": frame.write_csv, "json": frame.write_json}[format_name](tmp)
    tmp.replace(out)  # a reader never sees half a file
    return out, format_name


def export(db: Database, what: str, out: Path, *, format_name: str | None = None, model: str | None = None, where: str | None = None,
           results: pl.DataFrame | None = None) -> tuple[Path, int]:
    """Export the catalogue (``images``), one version's vectors with its model id (``embeddings``) or search
    ``results`` (a frame the caller searched for); returns the file and its rows."""
    if what == "images":
        frame = db.images_frame(where)
    elif what == "embeddings":
        from engine.versions.derived import read_rows

        record = db.resolve_model(model)
        table = read_rows(db, record, where)
        frame = pl.from_arrow(table).with_columns(pl.lit(record.id).alias("model_id"))
    elif what == "results":
        if results is None:
            raise InvalidRequestError("--what results needs query files or --id to search with")
        frame = results
    else:
        raise InvalidRequestError(f"--what {what!r}: one of {', '.join(EXPORT_WHAT)}")
    path, _ = write_frame(frame, out, format_name)
    return path, frame.height
