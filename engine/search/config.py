"""How to search: :class:`SearchConfig` and the in-memory index's :class:`MemoryIndexConfig`. Light on purpose
(no faiss or LanceDB import): the front ends read their defaults here."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RERANKER = "faiss"


@dataclass(frozen=True)
class MemoryIndexConfig:
    """Whether and how a searcher keeps vectors in RAM.

    ``kind``: ``auto`` (exact ``flat`` while the table is small enough to have no LanceDB ANN index,
    ``hnsw`` once it has one), ``flat``, ``hnsw`` or ``off`` (always LanceDB). Tables over ``max_bytes``
    are searched on disk by LanceDB whatever the kind.
    """

    kind: str = "auto"
    max_bytes: int = 2 * 2**30  # vectors larger than this stay on disk (LanceDB's IVF-PQ path)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    persist: bool = True  # save built HNSW graphs under <db>/_faiss/<table>/ for the next process



@dataclass(frozen=True)
class SearchConfig:
    """How to search: result count, candidate pool for re-ranking, ANN parameters, re-ranker."""

    k: int = 10
    candidate_factor: int = 4  # candidates per query = k * factor (at least min_candidates)
    min_candidates: int = 50
    nprobes: int = 20  # IVF partitions probed once an index exists
    # LanceDB re-reads k x refine_factor rows exactly: PQ codes of 1280-d vectors rank too coarsely for
    # less (100k rows, nprobes 20: recall@10 0.70 at 10, 1.0 at 50 for +5 ms; benchmarks/search.py)
    refine_factor: int = 50
    reranker: str = DEFAULT_RERANKER  # a name of engine.search.rerank.list_rerankers(), or quality stages chained with "+"
    reranker_configs: dict | None = None  # typed configs of the re-ranker (stage name -> config)
    vote_neighbours: int = 10  # neighbours that vote on the class of a query
    # A filter matching at most this many rows is answered by an exact scan of those rows: with an IVF
    # index, a selective prefilter leaves few matches in the probed partitions and recall drops.
    exact_filter_rows: int = 100_000
    # Unfiltered queries are answered from vectors held in RAM when they fit (engine.search.memory_index).
    memory_index: MemoryIndexConfig = MemoryIndexConfig()
    # A search sees every write committed more than this long ago (LanceDB's read consistency interval):
    # checking the table's latest version costs two round trips (~0.4 ms), too much for every query.
    consistency_interval_s: float = 0.1


