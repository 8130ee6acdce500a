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

from engine.core.errors import SearchError
from engine.core.registry import Registry
from engine.vectors.expansion import alpha_query_expansion, database_augmentation, k_reciprocal_distances

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


RERANKERS: Registry[Callable[..., Reranker]] = Registry("reranker")


def register_reranker(name: str, config_type: type | None = None, description: str = "") -> Callable[[Callable[..., Reranker]], Callable[..., Reranker]]:
    """Register a reranker factory; one with ``config_type`` is called with an instance of it."""
    if CHAIN_SEPARATOR in name:
        raise SearchError(f"reranker name {name!r} contains the chain separator {CHAIN_SEPARATOR!r}")
    return RERANKERS.register(name, description, config_type=config_type)


def list_rerankers() -> dict[str, str]:
    return RERANKERS.describe()


def reranker_config_type(name: str) -> type | None:
    """The typed config of a reranker (None for rerankers without parameters)."""
    return RERANKERS.entry(name).info["config_type"]


def _stage_names() -> list[str]:
    return [entry.name for entry in RERANKERS.entries() if entry.info["config_type"] is not None]


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
            raise SearchError(f"give per-stage configs of chain {name!r} with configs={{stage: config}}")
        configs[name] = config
    for part in names:
        if part not in RERANKERS:
            raise SearchError(f"unknown reranker {part!r}; choose one of {RERANKERS.names()} (stages chain with {CHAIN_SEPARATOR!r})")
    built = [_build(part, configs.get(part)) for part in names]
    if len(built) == 1:
        return built[0]
    stages = [b for b in built if isinstance(b, StageReranker)]
    if len(stages) != len(built):
        raise SearchError(f"only quality stages {_stage_names()} chain with {CHAIN_SEPARATOR!r}, not {name!r}")
    limits = [b.limit for b in stages if b.limit is not None]
    return StageReranker(name, [stage for b in stages for stage in b.stages], limit=max(limits) if limits else None)


def _build(name: str, config: object | None) -> Reranker:
    config_type = reranker_config_type(name)
    if config_type is None:
        if config is not None:
            raise SearchError(f"reranker {name!r} takes no config")
        return RERANKERS.get(name)()
    if config is not None and not isinstance(config, config_type):
        raise TypeError(f"reranker {name!r} takes a {config_type.__name__}, not {type(config).__name__}")
    return RERANKERS.get(name)(config or config_type())


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
            raise SearchError(f"re-ranking depth must be at least 1 (or None for all candidates), got {limit}")
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
