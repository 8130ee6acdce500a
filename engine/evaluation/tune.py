"""Choose a query pipeline (model version x re-ranker chain x parameters) on a hold-out of the catalogue.

The catalogue is split once, stratified and seeded (scikit-learn), into *probes* and a *gallery*; the queries
are never looked at. Every candidate ranks the whole gallery for the probes (:func:`rank_catalogue`, the
re-ranker on top of exact k-NN, as ``eval --compare`` measures) and is scored with the same metrics as
``eval``. Successive halving keeps the cost down: every candidate is scored on a quarter of the probes, the
better half on half of them, the better half of those on all, within a time budget. The winner is returned
with the table of every candidate's scores; :mod:`console.service.tuning` stores it with its version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.model_selection import train_test_split

from engine.core.errors import EvaluationError
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.encoders.ensembles import concatenate_embeddings
from engine.evaluation.compare import rank_catalogue
from engine.evaluation.config import OBJECTIVE_COLUMNS, OBJECTIVES, TuneConfig
from engine.evaluation.metrics import EvaluationResult, evaluate_ranking, map_at_k
from engine.search.config import DEFAULT_RERANKER
from engine.search.fusion import ClassScores, best_weight, fit_classifier
from engine.search.pipeline import QueryPipeline
from engine.search.rerank import AugmentationConfig, KReciprocalConfig, QueryExpansionConfig, create_reranker
from engine.storage.database import Database, ModelRecord

logger = logging.getLogger(__name__)

# share of the probes each rung of successive halving scores on; the better half of a rung goes on
RUNG_SHARES = (0.25, 0.5, 1.0)
MIN_RUNG_PROBES = 20  # a rung smaller than this is skipped (too few probes to rank candidates)
FUSION_METRIC_K = 5  # class fusion is chosen by mAP@5 of the ranked classes, the class-prediction figure eval reports
ENSEMBLE_SEPARATOR = " & "  # joins an ensemble's member ids in the candidates table

# The re-ranker chains tried on every version, cheapest first (a tie goes to the earlier, simpler one).
# Parameters around the defaults and the values the MIT protocol chose (docs/quality.md).
RERANKER_GRID: tuple[tuple[str, dict[str, object]], ...] = (
    (DEFAULT_RERANKER, {}),
    *(("qe", {"qe": QueryExpansionConfig(neighbours=n, alpha=a)}) for n in (3, 5, 10) for a in (1.0, 3.0)),
    *(("dba", {"dba": AugmentationConfig(neighbours=n)}) for n in (3, 5, 10)),
    ("k-reciprocal", {"k-reciprocal": KReciprocalConfig()}),
    ("k-reciprocal", {"k-reciprocal": KReciprocalConfig(k1=10, k2=3)}),
    ("qe+k-reciprocal", {"qe": QueryExpansionConfig(neighbours=5), "k-reciprocal": KReciprocalConfig()}),
)


@dataclass(frozen=True)
class Candidate:
    model: ModelRecord  # the version searched (an ensemble's first member until it is published)
    pipeline: QueryPipeline
    note: str | None = None  # e.g. why its score over-promises
    members: tuple[ModelRecord, ...] = ()  # an ensemble of these versions (equal weights), not stored yet

    @property
    def source(self) -> str:
        """The vectors it ranks: a version's id, or the ensemble's member ids joined."""
        return ENSEMBLE_SEPARATOR.join(m.id for m in self.members) if self.members else self.model.id


@dataclass(frozen=True)
class TuneResult:
    best: Candidate
    scores: pl.DataFrame  # one row per candidate: model, pipeline, rung, probes, the four metrics, ms per probe
    probes: int
    gallery: int
    seconds: float


def candidates_for(models: Sequence[ModelRecord], notes: dict[str, str] | None = None) -> list[Candidate]:
    """Every version with every re-ranker chain of :data:`RERANKER_GRID`."""
    notes = notes or {}
    return [Candidate(m, QueryPipeline.of(name, configs), notes.get(m.id)) for m in models for name, configs in RERANKER_GRID]


def holdout_split(labels: Sequence[str], share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(probe rows, gallery rows) of a labelled catalogue, stratified by label and seeded; a class with one image
    stays in the gallery (it could not be found)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    splittable = np.flatnonzero(np.isin(labels, classes[counts >= 2]))
    if len(splittable) < 2 or len(np.unique(labels[splittable])) < 2:
        raise EvaluationError(f"tuning needs at least two labelled classes with two images each; the catalogue has {len(labels)} labelled images")
    probe_count = max(len(np.unique(labels[splittable])), int(round(share * len(splittable))))
    gallery_part, probe_part = train_test_split(splittable, test_size=probe_count, stratify=labels[splittable], random_state=seed)
    gallery = np.sort(np.concatenate([gallery_part, np.setdiff1d(np.arange(len(labels)), splittable)]))
    rng = np.random.default_rng(seed)
    return rng.permutation(probe_part), gallery  # probes in a seeded order: each rung scores a prefix


def score(candidate: Candidate, vectors: np.ndarray, labels: list[str], probes: np.ndarray, gallery: np.ndarray, vote_neighbours: int) -> tuple[EvaluationResult, float]:
    """The candidate's metrics ranking the gallery for ``probes``, and its milliseconds per probe."""
    reranker = create_reranker(candidate.pipeline.reranker, configs=candidate.pipeline.configs())
    started = time.perf_counter()
    distances, indices = rank_catalogue(reranker, vectors[probes], vectors[gallery])
    elapsed_ms = 1000 * (time.perf_counter() - started) / max(len(probes), 1)
    gallery_labels = [labels[i] for i in gallery]
    return evaluate_ranking(distances, indices, [labels[i] for i in probes], gallery_labels, vote_neighbours), elapsed_ms


def tune(db: Database, models: Sequence[ModelRecord], config: TuneConfig = TuneConfig(), notes: dict[str, str] | None = None,
         progress: ProgressCallback | None = None, probe_ids: Sequence[str] | None = None) -> TuneResult:
    """The best candidate pipeline by ``config.objective`` on a seeded hold-out of the catalogue (see the module).

    Every version's catalogue must hold the same images (they share one split: the first version's ids). Versions
    in ``notes`` are scored and listed but never chosen (e.g. trained on the catalogue's labels, so their hold-out
    scores over-promise). ``probe_ids`` fixes the probes (from :func:`holdout_ids`, e.g. when heads were trained
    on the rest); by default they are drawn here."""
    if config.objective not in OBJECTIVES:
        raise EvaluationError(f"unknown objective {config.objective!r}; choose one of {sorted(OBJECTIVES)}")
    if not models:
        raise EvaluationError("no model versions to tune: ingest a folder first (lookalike ingest DIR)")
    started = time.perf_counter()
    common, split_by_model = _aligned({m.id: labelled_catalogue(db, m, config.catalogue_where) for m in models})
    if probe_ids is None:
        probes, gallery = holdout_split(split_by_model[models[0].id][1], config.holdout, config.seed)
    else:
        held = np.isin(np.asarray(common), list(probe_ids))
        probes, gallery = np.random.default_rng(config.seed).permutation(np.flatnonzero(held)), np.flatnonzero(~held)
    metric = OBJECTIVES[config.objective]
    pool = candidates_for(models, notes)
    rows: list[dict] = []

    def measure(candidate: Candidate, rung: int, rung_probes: np.ndarray) -> float:
        vectors, labels = split_by_model[candidate.source]
        result, ms = score(candidate, vectors, labels, rung_probes, gallery, config.vote_neighbours)
        rows.append({"model": candidate.source, "pipeline": candidate.pipeline.describe(), "rung": rung, "probes": len(rung_probes),
                     "P@1": result.p_at_1, "P@5": result.p_at_5, "mAP@5": result.map_at_5, "mAP": result.mean_ap,
                     "ms_per_probe": round(ms, 2), "note": candidate.note})
        return getattr(result, metric)

    rungs = [share for share in RUNG_SHARES if share * len(probes) >= MIN_RUNG_PROBES] or [1.0]
    total_steps = sum(max(1, len(pool) >> r) for r in range(len(rungs)))
    step, over_budget = 0, False
    for rung, share in enumerate(rungs):
        rung_probes = probes[: max(1, int(round(share * len(probes))))]
        scored: list[tuple[float, int, Candidate]] = []
        for order, candidate in enumerate(pool):
            if rows and time.perf_counter() - started > config.budget_s:  # at least one candidate is always scored
                over_budget = True
                break
            value = measure(candidate, rung + 1, rung_probes)
            scored.append((value, order, candidate))
            step += 1
            report_progress(progress, Progress("tune", step, total_steps, "candidates",
                                               f"{candidate.source} {candidate.pipeline.describe()}: {config.objective} {value:.4f}",
                                               {config.objective: value}))
        ranked = sorted(scored, key=lambda s: (s[2].note is not None, -s[0], s[1]))
        if over_budget or rung == len(rungs) - 1:
            break
        pool = [c for _, _, c in ranked[: max(1, (len(ranked) + 1) // 2)]]
    if not over_budget and config.ensemble_sizes:  # the best versions together, with the best re-ranker and without
        for ensemble in ensembles_of(ranked, config.ensemble_sizes):
            if ensemble.source not in split_by_model:
                parts = [split_by_model[m.id][0] for m in ensemble.members]
                split_by_model[ensemble.source] = (concatenate_embeddings(parts, np.ones(len(parts))), split_by_model[ensemble.members[0].id][1])
            ranked.append((measure(ensemble, len(rungs), probes), len(ranked), ensemble))
        ranked.sort(key=lambda s: (s[2].note is not None, -s[0], s[1]))
    pool = [c for _, _, c in ranked]
    eligible = [c for c in pool if c.note is None]
    if not eligible:
        raise EvaluationError("no candidate could be chosen: every version scored was trained on the catalogue's labels "
                              "(tune a version trained without them, or with a hold-out of its own)")
    best = eligible[0]
    frame = pl.DataFrame(rows).sort(["rung", OBJECTIVE_COLUMNS[config.objective]], descending=[True, True])
    best_row = frame.filter((pl.col("model") == best.source) & (pl.col("pipeline") == best.pipeline.describe())).row(0, named=True)
    fusion = choose_fusion(best.pipeline, *split_by_model[best.source], probes, gallery, config) if config.fusion_weights else None
    seconds = time.perf_counter() - started
    chosen = QueryPipeline(best.pipeline.reranker, best.pipeline.parameters, objective=config.objective, score=best_row[OBJECTIVE_COLUMNS[config.objective]],
                           candidates=frame.to_dicts(), fusion=fusion)
    logger.info("tuned on %d probes against %d gallery images in %.0f s: %s %s (%s %.4f)%s", len(probes), len(gallery), seconds,
                best.source, chosen.describe(), config.objective, chosen.score, " (budget reached)" if over_budget else "")
    return TuneResult(Candidate(best.model, chosen, members=best.members), frame, len(probes), len(gallery), seconds)


def choose_fusion(pipeline: QueryPipeline, vectors: np.ndarray, labels: list[str], probes: np.ndarray, gallery: np.ndarray,
                  config: TuneConfig) -> dict:
    """The blend of k-NN vote and classifier (:mod:`engine.search.fusion`) that ranks the probes' classes best by
    mAP@5: the classifier is fitted on the gallery, the probes vote among the gallery through ``pipeline``.
    Returns ``{"weight", "scores"}`` (hold-out mAP@5 by weight); the caller fits the classifier kept."""
    reranker = create_reranker(pipeline.reranker, configs=pipeline.configs())
    distances, indices = rank_catalogue(reranker, vectors[probes], vectors[gallery])
    gallery_labels = np.asarray([labels[i] for i in gallery], dtype=object)
    truth = [labels[i] for i in probes]
    classifier = fit_classifier(vectors[gallery], gallery_labels.tolist(), config.seed)
    probabilities = classifier.probabilities(vectors[probes])
    neighbours = config.vote_neighbours
    scores = {}
    for weight in config.fusion_weights:
        blend = ClassScores(classifier.classes, probabilities, weight)  # the probabilities once for every weight
        ranked = [[label for label, _ in blend.ranked(q, gallery_labels[indices[q, :neighbours]], distances[q, :neighbours])] for q in range(len(probes))]
        scores[weight] = map_at_k(ranked, truth, FUSION_METRIC_K)
    weight = best_weight(config.fusion_weights, scores)
    logger.info("class fusion on %d probes: mAP@5 %s; weight %g", len(probes), {w: round(v, 4) for w, v in scores.items()}, weight)
    return {"weight": weight, "scores": {f"{w:g}": round(v, 4) for w, v in scores.items()}}


def ensembles_of(ranked: Sequence[tuple[float, int, Candidate]], sizes: Sequence[int]) -> list[Candidate]:
    """Ensembles of the best distinct eligible versions (by their best score), each with the re-ranker of the best
    candidate and with exact k-NN."""
    leaders: list[ModelRecord] = []
    for _, _, candidate in ranked:
        if candidate.note is None and not candidate.members and candidate.model.id not in {m.id for m in leaders}:
            leaders.append(candidate.model)
    best = next((c for _, _, c in ranked if c.note is None), None)
    plain = QueryPipeline(DEFAULT_RERANKER)
    found = []
    for size in sizes:
        if best is None or len(leaders) < size:
            continue
        members = tuple(leaders[:size])
        pipelines = [best.pipeline] + ([plain] if best.pipeline.describe() != plain.describe() else [])
        found.extend(Candidate(members[0], pipeline, members=members) for pipeline in pipelines)
    return found


def holdout_ids(db: Database, model: ModelRecord, config: TuneConfig = TuneConfig()) -> tuple[list[str], list[str]]:
    """(probe image ids, gallery image ids) of ``model``'s catalogue: the split :func:`tune` draws by default."""
    ids, _, labels = labelled_catalogue(db, model, config.catalogue_where)
    probes, gallery = holdout_split(labels, config.holdout, config.seed)
    return [ids[i] for i in probes], [ids[i] for i in gallery]


def _aligned(catalogues: dict[str, tuple[list[str], np.ndarray, list[str]]]) -> tuple[list[str], dict[str, tuple[np.ndarray, list[str]]]]:
    """The image ids every version holds (sorted), and each version's (vectors, labels) on them in that order: one
    split fits all."""
    common = sorted(set.intersection(*(set(ids) for ids, _, _ in catalogues.values())))
    if not common:
        raise EvaluationError("the versions to tune share no labelled catalogue image: bring them in step first (lookalike refresh)")
    aligned = {}
    for model_id, (ids, vectors, labels) in catalogues.items():
        rows = np.searchsorted(np.asarray(ids), common)  # ids are sorted
        aligned[model_id] = (vectors[rows], [labels[i] for i in rows])
    return common, aligned


def labelled_catalogue(db: Database, model: ModelRecord, where: str) -> tuple[list[str], np.ndarray, list[str]]:
    """The version's labelled catalogue: image ids (sorted), vectors and labels."""
    table = db.embeddings(model)
    found = table.search().where(db.catalogue_where(where) or "label IS NOT NULL").select(["image_id", "vector", "label"]).limit(None).to_arrow()
    found = found.filter(found.column("label").is_valid()).sort_by("image_id")
    if found.num_rows == 0:
        raise EvaluationError(f"model {model.id} has no labelled catalogue images matching {where!r}")
    column = found.column("vector").combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size).astype(np.float32)
    return found.column("image_id").to_pylist(), vectors, found.column("label").to_pylist()
