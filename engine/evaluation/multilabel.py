"""Multi-label sets (each image carries several labels, as attribute tags in fashion catalogues):
k-NN voting that returns a label *set*, and the label-IoU@k metric. Small pure functions.

Label sets are sequences of strings; internally they become multi-hot matrices over a vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.core.errors import EvaluationError


def label_vocabulary(*collections: Sequence[Sequence[str]]) -> list[str]:
    """Every label of the given collections of label sets, sorted."""
    return sorted({label for sets in collections for labels in sets for label in (labels or ())})


def multi_hot(label_sets: Sequence[Sequence[str] | None], vocabulary: Sequence[str]) -> np.ndarray:
    """(n, len(vocabulary)) boolean matrix; labels outside the vocabulary raise KeyError."""
    index = {label: i for i, label in enumerate(vocabulary)}
    matrix = np.zeros((len(label_sets), len(vocabulary)), bool)
    for row, labels in enumerate(label_sets):
        for label in labels or ():
            matrix[row, index[label]] = True
    return matrix


def label_iou_at_k(query_sets: Sequence[Sequence[str]], retrieved_sets: Sequence[Sequence[Sequence[str]]], k: int) -> float:
    """Mean over queries of the mean over the first ``k`` retrieved items of
    ``|labels(q) & labels(r)| / |labels(q) | labels(r)|`` (0 when both sets are empty).

    ``retrieved_sets[q]`` holds the label sets of query ``q``'s results in rank order; a query with
    fewer than ``k`` results averages over the ones it has.
    """
    if len(query_sets) != len(retrieved_sets):
        raise EvaluationError(f"{len(query_sets)} queries but {len(retrieved_sets)} result lists")
    if not query_sets:
        return 0.0
    vocabulary = label_vocabulary(query_sets, [r for results in retrieved_sets for r in results[:k]])
    scores = []
    for labels, results in zip(query_sets, retrieved_sets):
        results = list(results[:k])
        if not results:
            scores.append(0.0)
            continue
        query = multi_hot([labels], vocabulary)  # (1, V)
        found = multi_hot(results, vocabulary)  # (k, V)
        intersection = (query & found).sum(axis=1)
        union = (query | found).sum(axis=1)
        scores.append(float(np.mean(np.where(union > 0, intersection / np.maximum(union, 1), 0.0))))
    return float(np.mean(scores))


def vote_label_sets(neighbour_sets: Sequence[Sequence[str] | None], distances: np.ndarray, threshold: float = 0.5) -> list[tuple[str, float]]:
    """The labels carried by at least ``threshold`` of the neighbours' similarity mass.

    Each neighbour weighs its similarity (1 - cosine distance, negative clipped to 0); a label's score
    is the weight of the neighbours that carry it over the total weight. Returns (label, score) for
    labels scoring at least ``threshold``, best first (ties by label). Unlabelled neighbours still
    weigh (they vote for no label); with no weight at all the set is empty.
    """
    weights = np.clip(1.0 - np.asarray(distances, np.float64), 0.0, None)
    total = weights.sum()
    if total <= 0:
        return []
    vocabulary = label_vocabulary(neighbour_sets)
    scores = weights @ multi_hot(neighbour_sets, vocabulary) / total
    chosen = [(label, float(score)) for label, score in zip(vocabulary, scores) if score >= threshold - 1e-12]
    return sorted(chosen, key=lambda item: (-item[1], item[0]))


def set_iou(predicted: Sequence[set[str]], truth: Sequence[set[str]]) -> float:
    """Mean Jaccard index of predicted and true label sets (1 when both are empty)."""
    scores = [len(p & t) / len(p | t) if (p | t) else 1.0 for p, t in zip(predicted, truth)]
    return float(np.mean(scores)) if scores else 0.0


def predict_label_sets(searcher, vectors: np.ndarray, threshold: float = 0.5, where: str | None = None):  # noqa: ANN001, ANN201
    """Label sets of each query by similarity-weighted voting of its ``vote_neighbours`` nearest
    catalogue images over their ``labels`` lists: a polars frame query, label, score (best first)."""
    import polars as pl

    vectors = np.atleast_2d(vectors)
    neighbours = searcher.search_vectors(vectors, searcher.config.vote_neighbours, where, columns=["labels"])
    rows = []
    for q in range(len(vectors)):
        mine = neighbours.filter(pl.col("query") == q)
        for label, score in vote_label_sets(mine["labels"].to_list(), mine["distance"].to_numpy(), threshold):
            rows.append({"query": q, "label": label, "score": score})
    return pl.DataFrame(rows, schema={"query": pl.Int32, "label": pl.String, "score": pl.Float64})
