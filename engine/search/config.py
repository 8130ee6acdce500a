"""How to search: :class:`SearchConfig` and the in-memory index's :class:`MemoryIndexConfig`. Light on purpose
(no faiss or LanceDB import): the front ends read their defaults here."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RERANKER = "faiss"
AUTO = "auto"


@dataclass(frozen=True)
class MemoryIndexConfig:
    """Whether and how a searcher keeps vectors in RAM (the policy is :mod:`engine.search.policy`).

    ``kind``: ``auto`` (chosen from the table's rows, the vectors' width and ``max_bytes``: exact ``flat``
    below ``exact_rows``, ``hnsw`` over full vectors while they fit, ``hnsw_fp16`` over half-precision
    vectors when only those fit, LanceDB on disk beyond that), one of those kinds, or ``off`` (always
    LanceDB). An index that would not fit ``max_bytes`` is never built, whatever the kind.
    """

    kind: str = AUTO
    max_bytes: int | None = None  # RAM an index may take; None: a quarter of this machine's memory
    exact_rows: int = 50_000  # below this an exact scan is fast enough (~3 ms at 50k x 1280) and loses nothing
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    persist: bool = True  # save built HNSW graphs under <db>/_faiss/<table>/ for the next process
    # A graph follows appends and deletes in place (new rows inserted, removed ones masked) until this
    # share of its nodes is masked; then, or when its self-check falls below MIN_RECALL, it is rebuilt.
    max_dead_share: float = 0.2


@dataclass(frozen=True)
class ClassFusion:
    """Class prediction blending a classifier's probabilities with the k-NN vote (:mod:`engine.search.fusion`)."""

    weight: float  # 0: the plain vote, 1: the classifier alone
    classifier: str  # the classifier file, as recorded (Database.artifact finds it again after a move)
    sha256: str


@dataclass(frozen=True)
class SearchConfig:
    """How to search: result count, candidate pool for re-ranking, ANN parameters, re-ranker."""

    k: int = 10
    candidate_factor: int = 4  # candidates per query = k * factor (at least min_candidates)
    min_candidates: int = 50
    # IVF partitions probed and LanceDB's refine factor on disk; None: the values the index's recall
    # check chose when it was built (engine.search.disk_index), else the defaults there
    nprobes: int | None = None
    refine_factor: int | None = None
    reranker: str = DEFAULT_RERANKER  # a name of engine.search.rerank.list_rerankers(), or quality stages chained with "+"
    reranker_configs: dict | None = None  # typed configs of the re-ranker (stage name -> config)
    vote_neighbours: int = 10  # neighbours that vote on the class of a query
    class_fusion: ClassFusion | None = None  # the vote blended with a classifier (lookalike tune chooses it)
    # A filter matching at most this many rows is answered by an exact scan of those rows; broader ones
    # walk the HNSW graph with the filter (in RAM) or use LanceDB's index (on disk).
    exact_filter_rows: int = 100_000
    # Unfiltered queries are answered from vectors held in RAM when they fit (engine.search.memory_index).
    memory_index: MemoryIndexConfig = MemoryIndexConfig()
    # A search sees every write committed more than this long ago (LanceDB's read consistency interval):
    # checking the table's latest version costs two round trips (~0.4 ms), too much for every query.
    consistency_interval_s: float = 0.1
