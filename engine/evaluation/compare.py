"""Side-by-side evaluation of retrieval pipelines: a model version and a re-ranker (or chain of stages).

A pipeline is written ``RERANKER[@MODEL]``: ``base`` (exact k-NN), ``qe``, ``dba``, ``k-reciprocal``,
chains such as ``qe+k-reciprocal``, each optionally on another model version (``qe@efficientnet_lite0+whiten``,
any id or encoder name ``resolve_model`` accepts). Quality is measured on the whole catalogue ranking
(the re-ranker orders its ``depth`` nearest, the rest follow in exact order), time through
:class:`~engine.search.searcher.Searcher` (LanceDB candidates, then the re-ranker) at ``k`` results per query.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.core.errors import EvaluationError
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.core.splits import CATALOGUE_WHERE, QUERY_WHERE
from engine.evaluation.metrics import EvaluationResult, evaluate_ranking, load_split
from engine.search.config import SearchConfig
from engine.search.fusion import LinearClassifier
from engine.search.rerank import Candidates, Reranker, create_reranker
from engine.search.searcher import Searcher
from engine.storage.database import Database, ModelRecord

BASE = "base"
MODEL_SEPARATOR = "@"


@dataclass(frozen=True)
class PipelineSpec:
    """A re-ranker (``base`` = exact FAISS k-NN) on a model version (None = the default one)."""

    text: str
    reranker: str
    model: str | None = None

    @classmethod
    def parse(cls, text: str) -> PipelineSpec:
        text = text.strip()
        reranker, _, model = text.partition(MODEL_SEPARATOR)
        if not reranker:
            raise EvaluationError(f"pipeline {text!r} names no re-ranker: write RERANKER[@MODEL], e.g. base, qe, qe+k-reciprocal@MODEL")
        return cls(text, "faiss" if reranker == BASE else reranker, model or None)


def parse_pipelines(text: str) -> list[PipelineSpec]:
    """Comma-separated pipelines, e.g. ``base,qe,dba,k-reciprocal,qe@MODEL``."""
    specs = [PipelineSpec.parse(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise EvaluationError("no pipelines to compare: give e.g. --compare base,qe,dba,k-reciprocal")
    return specs


def rank_catalogue(reranker: Reranker, queries: np.ndarray, catalogue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole catalogue ranked for each query by ``reranker``: (distances, indices), nearest first."""
    everything = np.arange(len(catalogue))
    zeros = np.zeros(len(catalogue), np.float32)
    distances = np.empty((len(queries), len(catalogue)), np.float32)
    indices = np.empty((len(queries), len(catalogue)), np.int64)
    for q, query in enumerate(queries):
        rows, found = reranker.rerank(query, Candidates(everything, catalogue, zeros), len(catalogue))
        indices[q], distances[q] = rows, found
    return distances, indices


def evaluate_reranked(queries: np.ndarray, query_labels: Sequence[str], catalogue: np.ndarray, catalogue_labels: Sequence[str],
                      config: SearchConfig, classifier: LinearClassifier | None = None) -> EvaluationResult:
    """The metrics of :func:`engine.evaluation.metrics.evaluate` with ``config``'s re-ranker over the whole catalogue
    ranking (what a search with that config answers), and its class fusion with ``classifier`` when it has one."""
    reranker = create_reranker(config.reranker, configs=config.reranker_configs)
    distances, indices = rank_catalogue(reranker, queries, catalogue)
    fusion = config.class_fusion
    scores = classifier.blend(queries, fusion.weight) if fusion and classifier else None
    return evaluate_ranking(distances, indices, query_labels, catalogue_labels, config.vote_neighbours, class_scores=scores)


@dataclass(frozen=True)
class PipelineResult:
    spec: PipelineSpec
    model: ModelRecord
    result: EvaluationResult
    search_ms: float  # per query, through the Searcher at k results
    rank_ms: float  # per query, whole-catalogue ranking for the metrics


def evaluate_pipeline(
    db: Database,
    spec: PipelineSpec,
    default_model: str | None = None,
    catalogue_where: str = CATALOGUE_WHERE,
    query_where: str = QUERY_WHERE,
    vote_neighbours: int = 10,
    k: int = 10,
    reranker_configs: dict | None = None,
) -> PipelineResult:
    """Metrics and per-query times of one pipeline on the stored query and catalogue splits."""
    model = db.resolve_model(spec.model or default_model)
    config = SearchConfig(k=k, reranker=spec.reranker, reranker_configs=reranker_configs, vote_neighbours=vote_neighbours)
    searcher = Searcher(db, model, config)
    catalogue_where = db.catalogue_where(catalogue_where)
    catalogue, catalogue_labels = load_split(searcher.table, catalogue_where)
    queries, query_labels = load_split(searcher.table, query_where)
    if len(queries) == 0 or len(catalogue) == 0:
        raise EvaluationError(f"model {model.id}: {len(queries)} queries match {query_where!r}, {len(catalogue)} catalogue images {catalogue_where!r}")
    started = time.perf_counter()
    distances, indices = rank_catalogue(create_reranker(spec.reranker, configs=reranker_configs), queries, catalogue)
    rank_ms = 1000 * (time.perf_counter() - started) / len(queries)
    result = evaluate_ranking(distances, indices, query_labels, catalogue_labels, vote_neighbours)
    started = time.perf_counter()
    searcher.search_vectors(queries, k=k, where=catalogue_where)
    search_ms = 1000 * (time.perf_counter() - started) / len(queries)
    return PipelineResult(spec, model, result, search_ms, rank_ms)


def compare_pipelines(
    db: Database,
    specs: Sequence[PipelineSpec],
    default_model: str | None = None,
    progress: ProgressCallback | None = None,
    **options,
) -> pl.DataFrame:
    """One row per pipeline: metrics and per-query times (see :func:`evaluate_pipeline` for options)."""
    rows = []
    for position, spec in enumerate(specs, start=1):
        done = evaluate_pipeline(db, spec, default_model, **options)
        figures = {"p_at_1": done.result.p_at_1, "map": done.result.mean_ap, "search_ms": done.search_ms}
        report_progress(progress, Progress("compare", position, len(specs), "pipelines",
                                           f"{spec.text}: P@1 {done.result.p_at_1:.4f}  mAP {done.result.mean_ap:.4f}", figures))
        rows.append(
            {
                "pipeline": spec.text, "model": done.model.id, "P@1": done.result.p_at_1, "P@5": done.result.p_at_5,
                "mAP@5": done.result.map_at_5, "mAP": done.result.mean_ap, "search_ms_per_query": done.search_ms,
                "queries": done.result.queries, "catalogue": done.result.catalogue,
            }
        )
    return pl.DataFrame(rows)
