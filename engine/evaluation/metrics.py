"""Retrieval metrics as small pure functions over arrays, and an evaluation of a model on its splits.

Conventions: ``retrieved`` is an (n_queries, k) array of catalogue labels in rank order;
``truth`` the (n_queries,) labels of the queries. A retrieved item is relevant when its label
equals the query's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import polars as pl

from engine.core.errors import EvaluationError
from engine.search.fusion import ClassScores, ranked_classes
from engine.storage.filters import combine_where, read_filtered


def precision_at_k(retrieved: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of the first ``k`` retrieved items that are relevant."""
    retrieved = np.asarray(retrieved)[:, :k]
    return float((retrieved == np.asarray(truth)[:, None]).mean()) if len(retrieved) else 0.0


def average_precision_at_k(predicted: Sequence, actual, k: int = 5) -> float:
    """Kaggle AP@k for one query with one true class: 1/rank of the true class in the first k, else 0."""
    for rank, label in enumerate(list(predicted)[:k], start=1):
        if label == actual:
            return 1.0 / rank
    return 0.0


def map_at_k(predicted: Sequence[Sequence], truth: Sequence, k: int = 5) -> float:
    """Kaggle MAP@k: the mean of :func:`average_precision_at_k` over queries."""
    scores = [average_precision_at_k(p, t, k) for p, t in zip(predicted, truth)]
    return float(np.mean(scores)) if scores else 0.0


def average_precision(relevant: np.ndarray) -> float:
    """AP of one full ranking given as a boolean array in rank order (0 when nothing is relevant)."""
    relevant = np.asarray(relevant, dtype=bool)
    hits = np.flatnonzero(relevant)
    if len(hits) == 0:
        return 0.0
    return float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))


def mean_average_precision(ranked_labels: np.ndarray, truth: np.ndarray) -> float:
    """Full-ranking mAP: ``ranked_labels`` holds, per query, the labels of the whole catalogue in rank order."""
    relevant = np.asarray(ranked_labels) == np.asarray(truth)[:, None]
    return float(np.mean([average_precision(row) for row in relevant])) if len(relevant) else 0.0


def exact_ranking(queries: np.ndarray, catalogue: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine ranking of the catalogue for each query (FAISS flat): (distances, indices)."""
    k = min(k or len(catalogue), len(catalogue))
    similarities, indices = faiss.knn(
        np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(catalogue, np.float32), k, metric=faiss.METRIC_INNER_PRODUCT
    )
    return 1.0 - similarities, indices


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of one model on one catalogue/query split, and the per-class table."""

    queries: int
    catalogue: int
    p_at_1: float
    p_at_5: float
    map_at_5: float
    mean_ap: float
    per_class: pl.DataFrame

    def as_frame(self) -> pl.DataFrame:
        """One row: the four metrics, then how many queries and catalogue images they were measured on."""
        return pl.DataFrame({"P@1": [self.p_at_1], "P@5": [self.p_at_5], "mAP@5": [self.map_at_5], "mAP": [self.mean_ap],
                             "queries": [self.queries], "catalogue": [self.catalogue]})


def evaluate(
    query_vectors: np.ndarray,
    query_labels: Sequence[str],
    catalogue_vectors: np.ndarray,
    catalogue_labels: Sequence[str],
    vote_neighbours: int = 10,
) -> EvaluationResult:
    """P@1, P@5, mAP@5 (of k-NN voted classes) and full-ranking mAP, overall and per class."""
    if len(query_vectors) == 0 or len(catalogue_vectors) == 0:
        raise EvaluationError(f"nothing to evaluate: {len(query_vectors)} queries, {len(catalogue_vectors)} catalogue images")
    distances, indices = exact_ranking(query_vectors, catalogue_vectors)
    return evaluate_ranking(distances, indices, query_labels, catalogue_labels, vote_neighbours)


def evaluate_leave_one_out(vectors: np.ndarray, labels: Sequence[str], vote_neighbours: int = 10) -> EvaluationResult:
    """The metrics of :func:`evaluate` with every catalogue image as a query against all the others (the standard
    protocol for a catalogue too small to hold out queries); ``catalogue`` counts the images each query ranks."""
    if len(vectors) < 2:
        raise EvaluationError(f"leave-one-out needs at least 2 labelled images, found {len(vectors)}")
    distances, indices = exact_ranking(vectors, vectors)
    others = indices != np.arange(len(vectors))[:, None]  # each row holds its own image exactly once
    width = len(vectors) - 1
    return evaluate_ranking(distances[others].reshape(-1, width), indices[others].reshape(-1, width), labels, labels, vote_neighbours, left_out=True)


def evaluate_ranking(
    distances: np.ndarray,
    indices: np.ndarray,
    query_labels: Sequence[str],
    catalogue_labels: Sequence[str],
    vote_neighbours: int = 10,
    left_out: bool = False,
    class_scores: ClassScores | None = None,
) -> EvaluationResult:
    """The metrics of :func:`evaluate` for a given ranking: per query, catalogue positions ``indices``
    (the whole catalogue, nearest first; without the query itself when ``left_out``) and their ``distances``
    (used by the vote; with ``class_scores``, the vote blended with a classifier, as ``predict`` ranks classes)."""
    truth = np.asarray(query_labels, dtype=object)
    labels = np.asarray(catalogue_labels, dtype=object)
    if len(truth) == 0 or indices.shape != (len(truth), len(labels) - left_out):
        raise EvaluationError(f"a full ranking of {len(labels)} catalogue images per query is needed, got {indices.shape} for {len(truth)} queries")
    ranked = labels[indices]
    relevant = ranked == truth[:, None]
    ap = np.array([average_precision(row) for row in relevant])
    voted = [
        [label for label, _ in ranked_classes(class_scores, q, ranked[q, :vote_neighbours], distances[q, :vote_neighbours])]
        for q in range(len(truth))
    ]
    ap5 = np.array([average_precision_at_k(v, t, 5) for v, t in zip(voted, truth)])
    p1 = relevant[:, :1].mean(axis=1)
    p5 = relevant[:, :5].mean(axis=1)
    per_query = pl.DataFrame({"label": truth.astype(str), "P@1": p1, "P@5": p5, "mAP@5": ap5, "AP": ap})
    per_class = (
        per_query.group_by("label")
        .agg(pl.len().alias("queries"), pl.col("P@1").mean(), pl.col("P@5").mean(), pl.col("mAP@5").mean(), pl.col("AP").mean().alias("mAP"))
        .sort("label")
    )
    return EvaluationResult(len(truth), len(labels) - left_out, float(p1.mean()), float(p5.mean()), float(ap5.mean()), float(ap.mean()), per_class)


def load_split(table, where: str) -> tuple[np.ndarray, list[str]]:
    """Vectors and labels of the labelled rows of an embeddings table matching ``where``."""
    query = table.search().where(combine_where(table, where, "label IS NOT NULL")).select(["vector", "label"]).limit(None)
    found = read_filtered(query, where)
    column = found.column("vector").combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
    return vectors.astype(np.float32, copy=False), found.column("label").to_pylist()
