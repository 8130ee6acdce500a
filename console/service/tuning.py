"""Use cases of tuning: choose a version's query pipeline on a hold-out of the catalogue and store it with the
version (``lookalike tune``), and show what was stored (``lookalike tune --show``)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from console.service.training import label_trained_versions
from engine.core.progress import ProgressCallback
from engine.evaluation.config import TuneConfig
from engine.evaluation.tune import TuneResult, tune
from engine.search.pipeline import store_pipeline, stored_pipeline
from engine.storage.database import Database

LEAK_NOTE = "trained on the catalogue's labels: its hold-out score over-promises"


def tune_pipeline(db: Database, models: Sequence[str] | None = None, config: TuneConfig = TuneConfig(), *, allow_leak: bool = False,
                  activate: bool = True, progress: ProgressCallback | None = None) -> TuneResult:
    """Tune every version (or ``models``), store the winner's pipeline with it and (``activate``) make it the
    default version. Versions trained on the catalogue's labels are scored but not chosen unless ``allow_leak``:
    the hold-out images were in their training set."""
    records = [db.resolve_model(name) for name in models] if models else db.find_models()
    notes = {} if allow_leak else {r.id: LEAK_NOTE for r in records if label_trained_versions(db, r)}
    result = tune(db, records, config, notes=notes, progress=progress)
    store_pipeline(db, result.best.model, result.best.pipeline)
    if activate:
        db.activate_model(result.best.model.id)
    return result


def tuned_pipelines(db: Database) -> pl.DataFrame:
    """One row per version with a stored query pipeline: the pipeline, what it was tuned for and its score."""
    rows = []
    for record in db.find_models():
        pipeline = stored_pipeline(db, record)
        if pipeline is not None:
            rows.append({"model": record.id, "pipeline": pipeline.describe(), "objective": pipeline.objective, "score": pipeline.score,
                         "candidates": len(pipeline.candidates)})
    return pl.DataFrame(rows)


def tuning_candidates(db: Database, model: str | None = None) -> pl.DataFrame:
    """Every candidate's hold-out scores recorded when ``model``'s (default: the active version's) pipeline was tuned."""
    pipeline = stored_pipeline(db, db.resolve_model(model))
    return pl.DataFrame(pipeline.candidates) if pipeline and pipeline.candidates else pl.DataFrame()
