"""Re-rankers: exact distances for the candidates LanceDB returns, behind one registry.

``create_reranker(name)`` builds one; ``list_rerankers()`` names them. The default, ``faiss``,
computes exact cosine distances of each query to its own candidates with FAISS (on the GPU when
FAISS sees one), so an approximate index only decides *which* rows are candidates, never their order.

Quality stages (``qe``, ``dba``, ``k-reciprocal``) re-rank the ``depth`` nearest candidates with the
pure functions below (:func:`alpha_query_expansion`, :func:`database_augmentation`,
:func:`k_reciprocal_distances`); the rest keep their exact order behind them. Stages chain with ``+``
(``create_reranker("qe+k-reciprocal")``): each refines the query, the candidate vectors or the
distances the previous one left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Candidates:
    """One query's candidates: their row positions in the result, vectors and current distances."""

    rows: np.ndarray  # int64 positions into the candidate result table
    vectors: np.ndarray  # (n, dim) float32
    distances: np.ndarray  # (n,) float32, from the ANN stage


class Reranker(Protocol):
    name: str

    def rerank(self, query: np.ndarray, candidates: Candidates, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` candidates as (row positions, distances), nearest first."""


_REGISTRY: dict[str, Callable[..., Reranker]] = {}
_CONFIGS: dict[str, type] = {}  # rerankers that take a typed config: name -> its dataclass


def register_reranker(name: str, config_type: type | None = None) -> Callable[[Callable[..., Reranker]], Callable[..., Reranker]]:
    """Register a reranker factory; one with ``config_type`` is called with an instance of it."""

    def decorate(factory: Callable[..., Reranker]) -> Callable[..., Reranker]:
        if name in _REGISTRY or CHAIN_SEPARATOR in name:
            raise ValueError(f"reranker {name!r} is already registered or contains {CHAIN_SEPARATOR!r}")
        _REGISTRY[name] = factory
        if config_type is not None:
            _CONFIGS[name] = config_type
        return factory

    return decorate


def list_rerankers() -> list[str]:
    return sorted(_REGISTRY)


def reranker_config_type(name: str) -> type | None:
    """The typed config of a reranker (None for rerankers without parameters)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown reranker {name!r}; choose one of {list_rerankers()}")
    return _CONFIGS.get(name)


CHAIN_SEPARATOR = "+"


def create_reranker(name: str = "faiss", config: object | None = None, configs: dict[str, object] | None = None) -> Reranker:
    """A reranker by name, or a chain of quality stages such as ``qe+k-reciprocal``.

    ``config`` is the typed config of a single reranker; ``configs`` maps stage names to configs in a
    chain (missing ones take their defaults). The error names the valid choices.
    """
    names = name.split(CHAIN_SEPARATOR)
    configs = dict(configs or {})
    if config is not None:
        if len(names) > 1:
            raise ValueError(f"give per-stage configs of chain {name!r} with configs={{stage: config}}")
        configs[name] = config
    for part in names:
        if part not in _REGISTRY:
            raise ValueError(f"unknown reranker {part!r}; choose one of {list_rerankers()} (stages chain with {CHAIN_SEPARATOR!r})")
    built = [_build(part, configs.get(part)) for part in names]
    if len(built) == 1:
        return built[0]
    stages = [b for b in built if isinstance(b, StageReranker)]
    if len(stages) != len(built):
        raise ValueError(f"only quality stages {sorted(_CONFIGS)} chain with {CHAIN_SEPARATOR!r}, not {name!r}")
    limits = [b.limit for b in stages if b.limit is not None]
    return StageReranker(name, [stage for b in stages for stage in b.stages], limit=max(limits) if limits else None)


def _build(name: str, config: object | None) -> Reranker:
    config_type = _CONFIGS.get(name)
    if config_type is None:
        if config is not None:
            raise ValueError(f"reranker {name!r} takes no config")
        return _REGISTRY[name]()
    if config is not None and not isinstance(config, config_type):
        raise TypeError(f"reranker {name!r} takes a {config_type.__name__}, not {type(config).__name__}")
    return _REGISTRY[name](config or config_type())


@register_reranker("none")
class KeepAnnOrder:
    """Keep LanceDB's order and distances (fast, approximate once an index exists)."""

    name = "none"
    ranks_by_distance = True  # its answer is the k candidates nearest by the distances it is given

    def rerank(self, query: np.ndarray, candidates: Candidates, k: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(candidates.distances, kind="stable")[:k]
        return candidates.rows[order], candidates.distances[order]


@register_reranker("faiss")
class FaissExactReranker:
    """Exact cosine distance with FAISS's k-NN kernel; on the GPU when FAISS has one."""

    name = "faiss"
    # its answer is the k candidates nearest by exact cosine distance: a source whose distances are exact
    # already (the in-memory indexes hold full vectors) may skip it (Searcher does)
    ranks_by_distance = True

    def __init__(self) -> None:
        self._gpu_resources = None
        # faiss-cpu builds have no GPU functions; faiss-gpu without a visible GPU reports 0.
        if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._gpu_resources = faiss.StandardGpuResources()
            logger.info("FAISS re-ranking on GPU")

    def rerank(self, query: np.ndarray, candidates: Candidates, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(candidates.rows) == 0:
            return candidates.rows, candidates.distances
        k = min(k, len(candidates.rows))
        xq = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        xb = np.ascontiguousarray(candidates.vectors, dtype=np.float32)
        if self._gpu_resources is not None:
            similarities, positions = faiss.knn_gpu(self._gpu_resources, xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            similarities, positions = faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
        return candidates.rows[positions[0]], (1.0 - similarities[0]).astype(np.float32)


# ---- quality stages: pure functions over arrays ---------------------------------------------------


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def alpha_query_expansion(query: np.ndarray, vectors: np.ndarray, distances: np.ndarray, neighbours: int, alpha: float) -> np.ndarray:
    """alpha-QE (Radenovic et al.): the query plus its ``neighbours`` nearest vectors weighted by
    ``similarity ** alpha`` (negative similarities weigh 0), L2-normalised.

    ``distances`` are the cosine distances of ``vectors`` to ``query``. Cost: O(neighbours x dim).
    """
    nearest = np.argsort(distances, kind="stable")[:neighbours]
    weights = np.clip(1.0 - distances[nearest].astype(np.float64), 0.0, None) ** alpha
    expanded = query.astype(np.float64) + weights @ vectors[nearest].astype(np.float64)
    return _normalise(expanded)


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
    return _normalise(augmented)


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


# ---- quality stages as re-rankers ------------------------------------------------------------------


@dataclass
class RankState:
    """What a stage sees and returns: the (possibly expanded) query, candidate vectors and distances."""

    query: np.ndarray
    vectors: np.ndarray
    distances: np.ndarray


class Stage(Protocol):
    def refine(self, state: RankState) -> RankState: ...


class StageReranker:
    """Exact cosine distances to all candidates, then ``stages`` on the ``limit`` nearest (all when None).

    The candidates beyond ``limit`` follow in exact order with their exact distances.
    """

    def __init__(self, name: str, stages: list[Stage], limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"re-ranking depth must be at least 1 (or None for all candidates), got {limit}")
        self.name, self.stages, self.limit = name, stages, limit

    @property
    def depth(self) -> int:
        """Candidates the Searcher must fetch at least (0: whatever its pool holds)."""
        return self.limit or 0

    def rerank(self, query: np.ndarray, candidates: Candidates, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(candidates.rows) == 0:
            return candidates.rows, candidates.distances
        vectors = np.asarray(candidates.vectors, np.float32)
        query = np.asarray(query, np.float32).ravel()
        exact = (1.0 - vectors @ query).astype(np.float32)
        order = np.argsort(exact, kind="stable")
        head, tail = (order[: self.limit], order[self.limit :]) if self.limit else (order, order[:0])
        state = RankState(query, vectors[head], exact[head])
        for stage in self.stages:
            state = stage.refine(state)
        reordered = np.argsort(state.distances, kind="stable")
        ranked = np.concatenate([head[reordered], tail])[:k]
        distances = np.concatenate([np.asarray(state.distances, np.float32)[reordered], exact[tail]])[:k]
        return candidates.rows[ranked], distances


@dataclass(frozen=True)
class QueryExpansionConfig:
    """alpha-QE: expand the query with its ``neighbours`` nearest candidates, weights ``sim ** alpha``."""

    neighbours: int = 10
    alpha: float = 3.0
    depth: int | None = None  # candidates re-scored with the expanded query (None: all, it is linear)


@dataclass(frozen=True)
class AugmentationConfig:
    """alpha-DBA over the candidate set: each candidate averaged with its ``neighbours`` nearest."""

    neighbours: int = 5
    alpha: float = 3.0
    depth: int = 100


@dataclass(frozen=True)
class KReciprocalConfig:
    """k-reciprocal re-ranking (Zhong et al. 2017) of the ``depth`` nearest candidates."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    depth: int = 100


class _QueryExpansion:
    def __init__(self, config: QueryExpansionConfig) -> None:
        self.config = config

    def refine(self, state: RankState) -> RankState:
        expanded = alpha_query_expansion(state.query, state.vectors, state.distances, self.config.neighbours, self.config.alpha)
        return RankState(expanded, state.vectors, (1.0 - state.vectors @ expanded).astype(np.float32))


class _LocalAugmentation:
    def __init__(self, config: AugmentationConfig) -> None:
        self.config = config

    def refine(self, state: RankState) -> RankState:
        augmented = database_augmentation(state.vectors, self.config.neighbours, self.config.alpha)
        return RankState(state.query, augmented, (1.0 - augmented @ state.query).astype(np.float32))


class _KReciprocal:
    def __init__(self, config: KReciprocalConfig) -> None:
        self.config = config

    def refine(self, state: RankState) -> RankState:
        items = np.vstack([state.query[None, :], state.vectors])
        matrix = np.clip(1.0 - items @ items.T, 0.0, None)
        matrix[0, 1:] = matrix[1:, 0] = state.distances  # an earlier stage's distances to the query stand
        k1 = min(self.config.k1, len(items) - 1)
        k2 = min(self.config.k2, len(items))
        final = k_reciprocal_distances(matrix, k1, k2, self.config.lambda_value)
        return RankState(state.query, state.vectors, final[1:].astype(np.float32))


@register_reranker("qe", QueryExpansionConfig)
def _qe(config: QueryExpansionConfig) -> StageReranker:
    """alpha-QE. Cost per query: a second pass over the candidates, O(candidates x dim)."""
    return StageReranker("qe", [_QueryExpansion(config)], config.depth)


@register_reranker("dba", AugmentationConfig)
def _dba(config: AugmentationConfig) -> StageReranker:
    """DBA among the candidates only (the stored ``dba`` model version augments against the whole
    catalogue instead). Cost per query: O(depth^2 x dim)."""
    return StageReranker("dba", [_LocalAugmentation(config)], config.depth)


@register_reranker("k-reciprocal", KReciprocalConfig)
def _k_reciprocal(config: KReciprocalConfig) -> StageReranker:
    """k-reciprocal re-ranking. Cost per query: O(depth^2 x dim) distances plus O(depth^3) set algebra."""
    return StageReranker("k-reciprocal", [_KReciprocal(config)], config.depth)
