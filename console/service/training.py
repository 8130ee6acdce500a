"""Use cases of model versions: train one (with the regime's defaults), list them with what made each."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import polars as pl

from console.service.data import coverage_frame
from engine.core.progress import ProgressCallback
from engine.search.pipeline import stored_pipeline
from engine.storage.database import Database, ModelRecord
from engine.training import TrainConfig, TrainResult, train
from engine.training.config import regime_defaults
from engine.versions.resolve import base_version


def train_version(db: Database, parent: str | None, config: TrainConfig, *, activate: bool = False,
                  progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train ``config`` on ``parent`` (default: :func:`default_parent`) and publish the new version."""
    record = db.resolve_model(parent) if parent else default_parent(db)
    result = train(db, record, config, progress=progress, should_stop=should_stop)
    if activate:
        db.activate_model(result.model.id)
    return result


def default_parent(db: Database) -> ModelRecord:
    """What a new head trains on unless told: the image encoder the active version is built on (a head goes on
    features, not on another head), else the active version itself (an ensemble, an external one)."""
    active = db.resolve_model()
    return base_version(db, active) or active


def config_for_regime(regime: str, **given: object) -> TrainConfig:
    """A :class:`TrainConfig` for ``regime`` with its epochs and batch size unless given; None values are not given."""
    values = {name: value for name, value in given.items() if value is not None}
    return replace(TrainConfig(regime=regime, **regime_defaults(regime)), **values)


def model_versions(db: Database) -> pl.DataFrame:
    """Model versions, newest first: kind, method, validation mAP@5 and which one is active."""
    frame = db.models_frame()
    if not frame.height:
        return frame
    notes = [json.loads(n) if n else {} for n in frame["notes"]]
    kinds = [record.kind for record in (db.resolve_model(i) for i in frame["id"])]
    active = db.active_model_id() or frame["id"][0]
    coverage = coverage_frame(db).select("model_id", "status", "rows", "missing").rename({"model_id": "id"})
    pipelines = [stored_pipeline(db, db.resolve_model(i)) for i in frame["id"]]
    return frame.with_columns(
        (pl.col("id") == active).alias("active"),
        pl.Series("kind", kinds, pl.String),
        pl.Series("pipeline", [p.reranker if p else None for p in pipelines], pl.String),  # what its searches re-rank with (lookalike tune)
        pl.Series("method", [n.get("method") for n in notes], pl.String),
        pl.Series("val_map5", [n.get("val_map5") for n in notes], pl.Float64),
    ).join(coverage, on="id", how="left").select("id", "active", "kind", "parent", "method", "pipeline", "dim", "val_map5", "status", "rows", "missing", "created_at")


def label_trained_versions(db: Database, record: ModelRecord) -> list[str]:
    """The versions in ``record``'s chain whose training used the catalogue's labels (heads and fine-tunes with a
    supervised method): features that have seen every class, so held-out classes are not unseen to them."""
    from engine.training.methods import create_loss
    from engine.versions.resolve import lineage

    trained = []
    for version in lineage(db, record):
        method = json.loads(version.notes).get("method") if version.notes else None
        if method and create_loss(method, TrainConfig(), 2, 8).needs_labels:
            trained.append(version.id)
    return trained
