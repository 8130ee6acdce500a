"""Re-rankers: exact distances for the candidates LanceDB returns, behind one registry.

``create_reranker(name)`` builds one; ``list_rerankers()`` names them. The default, ``faiss``,
computes exact cosine distances of each query to its own candidates with FAISS (on the GPU when
FAISS sees one), so an approximate index only decides *which* rows are candidates, never their order.
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


_REGISTRY: dict[str, Callable[[], Reranker]] = {}


def register_reranker(name: str) -> Callable[[Callable[[], Reranker]], Callable[[], Reranker]]:
    def decorate(factory: Callable[[], Reranker]) -> Callable[[], Reranker]:
        if name in _REGISTRY:
            raise ValueError(f"reranker {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_rerankers() -> list[str]:
    return sorted(_REGISTRY)


def create_reranker(name: str = "faiss") -> Reranker:
    """A reranker by name; the error names the valid choices."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown reranker {name!r}; choose one of {list_rerankers()}") from None


@register_reranker("none")
class KeepAnnOrder:
    """Keep LanceDB's order and distances (fast, approximate once an index exists)."""

    name = "none"

    def rerank(self, query: np.ndarray, candidates: Candidates, k: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(candidates.distances, kind="stable")[:k]
        return candidates.rows[order], candidates.distances[order]


@register_reranker("faiss")
class FaissExactReranker:
    """Exact cosine distance with FAISS's k-NN kernel; on the GPU when FAISS has one."""

    name = "faiss"

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
