"""Use cases of tuning: choose a version's query pipeline on a hold-out of the catalogue and store it with the
version (``lookalike tune``), and show what was stored (``lookalike tune --show``)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from console.service.data import encode_catalogue
from console.service.training import label_trained_versions
from engine.core.errors import InvalidRequestError
from engine.core.progress import ProgressCallback
from engine.core.splits import sql_quote
from engine.encoders.ensembles import EnsembleConfig
from engine.evaluation.config import TuneConfig
from engine.evaluation.tune import TuneResult, holdout_ids, labelled_catalogue, tune
from engine.search.fusion import CLASSIFIERS_FOLDER, fit_classifier, save_classifier
from engine.search.pipeline import QueryPipeline, store_pipeline, stored_pipeline
from engine.storage.database import Database, ModelRecord
from engine.training import TrainConfig, train
from engine.versions.derived import publish_derived

logger = logging.getLogger(__name__)

CANDIDATE_LEAD = ("rung", "probes", "P@1", "P@5", "mAP@5", "mAP", "pipeline", "versions")
# A condition that is always true, in the training filter of every trial head: it marks them, so heads left by a
# tune that was killed are recognised and dropped by the next one.
TRIAL_MARKER = "'tune trial' = 'tune trial'"
LEAK_NOTE = "trained on the catalogue's labels: its hold-out score over-promises"


@dataclass(frozen=True)
class TrialHead:
    """A head trained for tuning on the gallery only (never on the probes), so its hold-out score is fair."""

    model: ModelRecord
    parent: ModelRecord
    method: str
    seed: int


def _refit(db: Database, trials: Sequence[TrialHead], model: ModelRecord, config: TuneConfig, progress: ProgressCallback | None) -> ModelRecord:
    """``model`` itself, or for a trial head the same head trained again on the whole catalogue (the probes were
    only needed to choose)."""
    trial = next((t for t in trials if t.model.id == model.id), None)
    if trial is None:
        return model
    return train(db, trial.parent, TrainConfig(method=trial.method, seed=trial.seed, catalogue_where=config.catalogue_where), progress=progress).model


def tune_pipeline(db: Database, models: Sequence[str] | None = None, config: TuneConfig = TuneConfig(), *, allow_leak: bool = False,
                  activate: bool = True, encode: Sequence[str] = (), progress: ProgressCallback | None = None) -> TuneResult:
    """Tune every version (or ``models``), store the winner's pipeline with it and (``activate``) make it the
    default version.

    Versions trained on the catalogue's labels are scored but not chosen unless ``allow_leak``: the probes were in
    their training set. ``config.head_methods`` trains a head of each method and seed (``head_seeds``) on every
    version trained without labels, on the gallery only, as more candidates; a winning head (or ensemble member) is trained again on the whole
    catalogue, a winning ensemble is published as a version, and the trial heads are dropped (a tune that is
    interrupted or killed leaves them, and the next one reuses those trained on the same gallery). ``encode`` names
    registered encoders whose base versions are made first (the catalogue encoded from its files), as more
    candidates and more parents for the heads."""
    encoded = encode_catalogue(db, encode, progress=progress) if encode else []
    records = [db.resolve_model(name) for name in models] if models else db.find_models()
    records += [r for r in encoded if r.id not in {m.id for m in records}]
    leftovers = {r.id: r for r in trial_heads(db)}  # left by a tune that was killed: reused below when they fit, else dropped
    records = [r for r in records if r.id not in leftovers]
    notes = {} if allow_leak else {r.id: LEAK_NOTE for r in records if label_trained_versions(db, r)}
    trials: list[TrialHead] = []
    probe_ids = None
    bases = [r for r in records if r.id not in notes and not label_trained_versions(db, r)]
    if config.head_methods and not bases:
        raise InvalidRequestError("heads are trained on versions trained without labels; none is among the versions to tune")
    try:
        if config.head_methods:
            probe_ids, _ = holdout_ids(db, bases[0], config)
            where = gallery_where(db, probe_ids, config)
            for base in bases:
                for method in config.head_methods:
                    for seed in config.head_seeds:
                        left = next((r for r in leftovers.values() if _trial_key(r) == (base.id, method, seed, where)), None)
                        if left is not None:  # the same head on the same gallery: a killed tune resumes where it was
                            logger.info("reusing trial head %s (%s, seed %d) left by an earlier tune", left.id, method, seed)
                            trained = leftovers.pop(left.id)
                        else:
                            trained = train(db, base, TrainConfig(method=method, seed=seed, catalogue_where=where), progress=progress).model
                        trials.append(TrialHead(trained, base, method, seed))
        for stale in leftovers.values():  # trained for another gallery or plan
            db.drop_model(stale)
        result = tune(db, [*records, *(t.model for t in trials)], config, notes=notes, progress=progress, probe_ids=probe_ids)
        members = [_refit(db, trials, m, config, progress) for m in (result.best.members or (result.best.model,))]
        if result.best.members:
            winner = publish_derived(db, "ensemble", members, EnsembleConfig(), progress=progress)
        else:
            winner = members[0]
        result = dataclasses.replace(result, best=dataclasses.replace(result.best, model=winner, members=tuple(members)))
    except BaseException:  # interrupted or failed: the trial heads stay for the next tune to reuse (or drop)
        logger.warning("tune stopped; %d trial heads kept for the next lookalike tune to reuse", len(trials))
        raise
    for trial in trials:
        db.drop_model(trial.model)
    if result.best.pipeline.class_fusion() is None and (result.best.pipeline.fusion or {}).get("weight"):
        result = dataclasses.replace(result, best=dataclasses.replace(result.best, pipeline=_with_classifier(db, winner, result.best.pipeline, config)))
    store_pipeline(db, winner, result.best.pipeline)
    if activate:
        db.activate_model(winner.id)
    return result


def _with_classifier(db: Database, winner: ModelRecord, pipeline: QueryPipeline, config: TuneConfig) -> QueryPipeline:
    """``pipeline`` with its class fusion's classifier, fitted on the winner's whole labelled catalogue (the
    hold-out only chose the weight) and written beside the heads before the pipeline that names it is stored."""
    _, vectors, labels = labelled_catalogue(db, winner, config.catalogue_where)
    path = db.local_folder(CLASSIFIERS_FOLDER) / f"{winner.id}.npz"
    sha256 = save_classifier(fit_classifier(vectors, labels, config.seed), path)
    return dataclasses.replace(pipeline, fusion={**pipeline.fusion, "classifier": str(path), "sha256": sha256})


def gallery_where(db: Database, probe_ids: Sequence[str], config: TuneConfig) -> str:
    """The training filter of trial heads: the catalogue without the probes, marked (:data:`TRIAL_MARKER`)."""
    return (f"({db.catalogue_where(config.catalogue_where)}) AND image_id NOT IN ({', '.join(sql_quote(i) for i in probe_ids)})"
            f" AND {TRIAL_MARKER}")


def _training_config(record: ModelRecord) -> dict:
    return (json.loads(record.notes).get("config") or {}) if record.notes else {}


def _trial_key(record: ModelRecord) -> tuple:
    """What makes a trial head: its parent, method, seed and training filter."""
    config = _training_config(record)
    return record.parent, config.get("method"), config.get("seed"), config.get("catalogue_where")


def trial_heads(db: Database) -> list[ModelRecord]:
    """Trial heads a killed ``tune`` left behind (their training filter carries :data:`TRIAL_MARKER`)."""
    return [r for r in db.find_models() if TRIAL_MARKER in str(_training_config(r).get("catalogue_where", ""))]


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
    if not pipeline or not pipeline.candidates:
        return pl.DataFrame()
    # the figures first, then the pipeline and its versions (an ensemble names several), which wrap to fit 80 columns
    frame = pl.DataFrame(pipeline.candidates).rename({"model": "versions"})
    return frame.select(*CANDIDATE_LEAD, *[c for c in frame.columns if c not in CANDIDATE_LEAD])
