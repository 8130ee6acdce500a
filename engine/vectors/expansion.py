"""Neighbourhood operations on L2-normalised vectors: alpha query expansion, database-side augmentation
(alpha-DBA) and k-reciprocal distances. Pure functions over numpy arrays; the re-rankers in
``engine.search.rerank`` and the DBA version kind in ``engine.versions`` both use them."""

from __future__ import annotations

import faiss
import numpy as np

NORM_EPSILON = 1e-12  # floor of a norm, so that a zero vector stays zero instead of dividing by zero



def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, NORM_EPSILON)).astype(np.float32)


def alpha_query_expansion(query: np.ndarray, vectors: np.ndarray, distances: np.ndarray, neighbours: int, alpha: float) -> np.ndarray:
    """alpha-QE (Radenovic et al.): the query plus its ``neighbours`` nearest vectors weighted by
    ``similarity ** alpha`` (negative similarities weigh 0), L2-normalised.

    ``distances`` are the cosine distances of ``vectors`` to ``query``. Cost: O(neighbours x dim).
    """
    nearest = np.argsort(distances, kind="stable")[:neighbours]
    weights = np.clip(1.0 - distances[nearest].astype(np.float64), 0.0, None) ** alpha
    expanded = query.astype(np.float64) + weights @ vectors[nearest].astype(np.float64)
    return normalise(expanded)


def database_augmentation(vectors: np.ndarray, neighbours: int, alpha: float, reference: np.ndarray | None = None) -> np.ndarray:
    """alpha-DBA: each vector replaced by the weighted mean of its ``neighbours`` nearest ``reference``
    vectors (itself included when it is one of them), weights ``similarity ** alpha``, L2-normalised.

    ``reference`` defaults to ``vectors``. Cost: one exact k-NN of ``vectors`` against ``reference``
    (O(n x m x dim)), then O(n x neighbours x dim).
    """
    reference = vectors if reference is None else reference
    if len(vectors) == 0 or len(reference) == 0:
        return np.asarray(vectors, np.float32).copy()
    neighbours = min(neighbours, len(reference))
    similarities, indices = faiss.knn(
        np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(reference, np.float32), neighbours, metric=faiss.METRIC_INNER_PRODUCT
    )
    weights = np.clip(similarities.astype(np.float64), 0.0, None) ** alpha
    augmented = np.einsum("nk,nkd->nd", weights, reference[indices].astype(np.float64))
    return normalise(augmented)


def k_reciprocal_distances(distance_matrix: np.ndarray, k1: int, k2: int, lambda_value: float, probe: int = 0) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of item ``probe`` against all items.

    ``distance_matrix`` is the (n, n) matrix of original distances of a set of items (here the query
    and its candidates). The k-reciprocal set of an item (its ``k1`` nearest that also hold it among
    theirs) is expanded by the ``k1/2``-reciprocal sets of its members that share more than 2/3 of
    their members with it; Gaussian weights ``exp(-d)`` over that set, averaged over the ``k2`` nearest
    (local query expansion), give a Jaccard distance. Returns ``(1 - lambda) * jaccard + lambda *
    original`` from ``probe`` to every item. Cost: O(n^2 log n) ranks plus O(n^3) boolean products
    for n items, so it runs on the ``depth`` nearest candidates only.
    """
    distance = np.asarray(distance_matrix, np.float64)
    n = len(distance)
    ranks = np.argsort(distance, axis=1, kind="stable")

    def reciprocal(k: int) -> np.ndarray:
        nearest = np.zeros((n, n), bool)
        np.put_along_axis(nearest, ranks[:, : k + 1], True, axis=1)
        return nearest & nearest.T  # j among i's nearest and i among j's

    sets = reciprocal(k1)
    half_sets = reciprocal(int(round(k1 / 2)))
    overlap = half_sets.astype(np.int32) @ sets.T.astype(np.int32)  # [c, i] = |R_half(c) & R(i)|
    qualifies = sets & (overlap.T > (2.0 / 3.0) * half_sets.sum(axis=1)[None, :])
    expanded = sets | ((qualifies.astype(np.int32) @ half_sets.astype(np.int32)) > 0)
    weights = np.where(expanded, np.exp(-distance), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    if k2 > 1:
        weights = weights[ranks[:, :k2]].mean(axis=1)
    shared = np.minimum(weights[probe][None, :], weights).sum(axis=1)
    jaccard = 1.0 - shared / (2.0 - shared)
    return (1.0 - lambda_value) * jaccard + lambda_value * distance[probe]
