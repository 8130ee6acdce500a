"""In-memory FAISS indexes of one model version's vectors, for unfiltered queries.

LanceDB answers every query from disk. Without an ANN index (tables under ``IndexConfig.min_rows``) each
query re-reads every vector: about 180 ms per query at 20k x 1280 on this 2-core machine. With an IVF-PQ
index each query still pays the planner and the refine re-read (about 6 ms). A searcher that holds the
vectors in RAM answers the same unfiltered query in a millisecond or less, so the :class:`engine.search.searcher.Searcher`
keeps one when the vectors fit its memory budget. Filtered queries still go to LanceDB: its SQL is the one
filter language and its prefilter is what guarantees ``k`` results whenever ``k`` rows match.

Kinds (``create_memory_index``; ``list_memory_indexes``):

* ``flat``: exact inner product over L2-normalised copies (cosine), the same answer as an exact scan.
* ``hnsw``: FAISS HNSW (M=32) over the same vectors; approximate, built once per table version and saved
  beside the database (``<db>/_faiss/<table>/``) so that a new process loads it instead of rebuilding it.

An index is tied to the table version it was read from; the searcher rebuilds it when the table changes.

Every index is checked when it is built (``self_check``): recall@10 against an exact scan, for a seeded sample
of the table's own vectors as queries. The figure is kept with the index (``MemoryIndex.check``) and saved
beside a persisted graph (``<version>.check.json``), so ``lookalike info`` can show it without searching; an
exact index (always 1.0) is not persisted and writes nothing, so searching a small table never writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import pyarrow as pa

from engine.core.errors import SearchError
from engine.core.registry import Registry
from engine.search.config import MemoryIndexConfig

logger = logging.getLogger(__name__)


SELF_CHECK_QUERIES = 300  # sampled rows used as queries: a few hundred give recall to about +-0.01
SELF_CHECK_K = 10
SELF_CHECK_SEED = 0
MIN_RECALL = 0.95  # below this a check warns, naming the setting that raises recall
CHECK_SUFFIX = ".check.json"
# A result counts as found when its similarity reaches the k-th exact one: duplicate vectors tie, and
# an index may return either of two tied rows.
TIE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class RecallCheck:
    """Recall@k of a memory index against an exact scan, measured on a sample of its own rows."""

    kind: str
    version: int
    rows: int
    queries: int
    k: int
    recall: float

    @property
    def ok(self) -> bool:
        return self.recall >= MIN_RECALL

    def advice(self) -> str | None:
        """One line for a low recall: the figure and the setting that would raise it; None when fine."""
        if self.ok:
            return None
        return (f"the {self.kind} index of table version {self.version} finds {self.recall:.0%} of the exact {self.k} nearest "
                f"neighbours (self-check on {self.queries} rows, wanted {MIN_RECALL:.0%}): raise MemoryIndexConfig.hnsw_ef_search "
                f"(or hnsw_m), or use kind='flat' for exact search")

    def as_json(self) -> str:
        return json.dumps({"kind": self.kind, "version": self.version, "rows": self.rows, "queries": self.queries, "k": self.k, "recall": self.recall})

    @classmethod
    def from_json(cls, text: str) -> RecallCheck:
        data = json.loads(text)
        return cls(kind=str(data["kind"]), version=int(data["version"]), rows=int(data["rows"]), queries=int(data["queries"]),
                   k=int(data["k"]), recall=float(data["recall"]))


@dataclass
class LoadedTable:
    """One version of an embeddings table in memory: normalised vectors and the other columns."""

    version: int
    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    metadata: pl.DataFrame  # every column but ``vector``, row i <-> vectors[i]


class MemoryIndex:
    """A FAISS index over a loaded table; ``search`` gives row positions and cosine distances."""

    def __init__(self, kind: str, loaded: LoadedTable, index: faiss.Index) -> None:
        self.kind = kind
        self.loaded = loaded
        self.index = index
        self._positions: pl.DataFrame | None = None  # image_id -> row position, built on first use
        # rows matched by recent filters: an operator keeps a filter while changing the query, and the
        # scalar scan costs more than the vector scan for broad filters (50 ms vs 19 ms at 50k rows)
        self.filter_rows: dict[str, np.ndarray] = {}
        self.check: RecallCheck | None = None  # set by create_memory_index

    @property
    def version(self) -> int:
        return self.loaded.version

    @property
    def rows(self) -> int:
        return len(self.loaded.vectors)

    @property
    def exact_distances(self) -> bool:
        """Whether the distances ``search`` returns are exact (the index keeps full vectors; its
        candidates may still be approximate, as HNSW's are)."""
        return isinstance(self.index, (faiss.IndexFlat, faiss.IndexHNSWFlat))

    @property
    def exact_scan_index(self) -> faiss.IndexFlat | None:
        """The flat index holding every full vector (the index itself, or an HNSW graph's storage), for
        exact scans of a subset of rows; None for an index that keeps no full vectors."""
        if isinstance(self.index, faiss.IndexFlat):
            return self.index
        storage = getattr(self.index, "storage", None)
        return faiss.downcast_index(storage) if storage is not None and self.exact_distances else None

    def positions_of(self, image_ids: Sequence[str]) -> np.ndarray:
        """Sorted row positions of ``image_ids`` in this version (ids it does not hold are left out)."""
        if self._positions is None:
            self._positions = self.loaded.metadata.select("image_id").with_row_index("position")
        wanted = pl.DataFrame({"image_id": pl.Series(image_ids, dtype=pl.String)})
        return np.sort(wanted.join(self._positions, on="image_id", how="inner")["position"].to_numpy().astype(np.int64))

    def search(self, queries: np.ndarray, limit: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(positions, cosine distances) of the ``limit`` nearest rows per query; -1 pads short results.

        With ``rows`` (positions, e.g. the rows a filter matched), an exact scan of those rows only.
        """
        queries = _normalised(np.ascontiguousarray(queries, dtype=np.float32))
        if rows is not None:
            return self._search_rows(queries, limit, rows)
        limit = min(limit, max(self.rows, 1))
        similarities, positions = self.index.search(queries, limit)
        short = np.flatnonzero((positions < 0).any(axis=1)) if self.rows else np.zeros(0, np.int64)
        if len(short):
            # a graph walk can end before it has seen `limit` rows (k near the table's size): those
            # queries are answered exactly, so every query gets min(limit, rows) results
            similarities[short], positions[short] = faiss.knn(queries[short], self.loaded.vectors, limit, metric=faiss.METRIC_INNER_PRODUCT)
        return positions, (1.0 - similarities).astype(np.float32)

    def _search_rows(self, queries: np.ndarray, limit: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        exact = self.exact_scan_index
        if exact is None:
            raise SearchError(f"memory index {self.kind!r} keeps no full vectors to scan a subset of rows")
        limit = min(limit, len(rows))
        if limit == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        member = np.zeros(self.rows, bool)
        member[rows] = True
        bitmap = np.packbits(member, bitorder="little")  # referenced by the selector: keep it alive here
        selector = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(bitmap))
        similarities, positions = exact.search(queries, limit, params=faiss.SearchParameters(sel=selector))
        return positions, (1.0 - similarities).astype(np.float32)


Builder = Callable[[LoadedTable, MemoryIndexConfig, Path | None], faiss.Index]
MEMORY_INDEXES: Registry[Builder] = Registry("memory index")


def register_memory_index(kind: str, description: str) -> Callable[[Builder], Builder]:
    return MEMORY_INDEXES.register(kind, description)


def list_memory_indexes() -> dict[str, str]:
    return MEMORY_INDEXES.describe()


def create_memory_index(kind: str, loaded: LoadedTable, config: MemoryIndexConfig = MemoryIndexConfig(), cache_file: Path | None = None) -> MemoryIndex:
    """Build (or load from ``cache_file``) an index of ``kind`` over ``loaded`` and check its recall; the
    error names the kinds. A low recall is logged as a warning with the setting that would raise it."""
    index = MemoryIndex(kind, loaded, MEMORY_INDEXES.get(kind)(loaded, config, cache_file))
    if isinstance(index.index, faiss.IndexFlat):
        # exact by construction: measuring it would scan the table twice on the first search after every write
        index.check = RecallCheck(kind=kind, version=loaded.version, rows=index.rows, queries=0, k=SELF_CHECK_K, recall=1.0)
        return index
    check_file = cache_file.with_suffix(CHECK_SUFFIX) if cache_file is not None else None
    index.check = _read_check(check_file) if check_file is not None and check_file.exists() else None
    if index.check is None or (index.check.kind, index.check.version, index.check.rows) != (kind, index.version, index.rows):
        index.check = self_check(index)
        logger.info("memory index %s of version %d: self-check recall@%d %.4f", kind, loaded.version, index.check.k, index.check.recall)
        if check_file is not None and cache_file.exists():  # saved beside a persisted index (its builder removes older checks)
            _write_atomically(check_file, index.check.as_json())
    if not index.check.ok:
        logger.warning("%s", index.check.advice())
    return index


def self_check(index: MemoryIndex, queries: int = SELF_CHECK_QUERIES, k: int = SELF_CHECK_K, seed: int = SELF_CHECK_SEED) -> RecallCheck:
    """Recall@k of ``index`` against an exact scan, for a seeded sample of the table's own rows as queries."""
    vectors = index.loaded.vectors
    rows = len(vectors)
    k = min(k, rows)
    if k == 0:
        return RecallCheck(kind=index.kind, version=index.version, rows=rows, queries=0, k=SELF_CHECK_K, recall=1.0)
    sample = np.random.default_rng(seed).choice(rows, size=min(queries, rows), replace=False)
    wanted = np.ascontiguousarray(vectors[sample])
    exact, _ = faiss.knn(wanted, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    positions, _ = index.search(wanted, k)
    valid = positions >= 0
    found = np.where(valid, np.einsum("qd,qkd->qk", wanted, vectors[np.where(valid, positions, 0)]), -np.inf)
    hits = (found >= exact[:, -1:] - TIE_TOLERANCE).sum(axis=1)
    return RecallCheck(kind=index.kind, version=index.version, rows=rows, queries=len(sample), k=k, recall=round(float(np.mean(hits / k)), 4))


def saved_checks(folder: Path) -> list[RecallCheck]:
    """Recall checks saved in a table's index folder, newest table version first (unreadable files are skipped)."""
    checks = [check for path in folder.glob(f"*{CHECK_SUFFIX}") if (check := _read_check(path)) is not None]
    return sorted(checks, key=lambda c: c.version, reverse=True)


def _read_check(path: Path) -> RecallCheck | None:
    """A saved check, or None (logged) when the file is unreadable."""
    try:
        return RecallCheck.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring recall check %s: %s", path, exc)
        return None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


@register_memory_index("flat", "exact inner-product scan of every vector (FAISS IndexFlatIP)")
def _flat(loaded: LoadedTable, config: MemoryIndexConfig, cache_file: Path | None) -> faiss.Index:
    index = faiss.IndexFlatIP(loaded.vectors.shape[1])
    index.add(loaded.vectors)
    return index


@register_memory_index("hnsw", "FAISS HNSW graph, cached beside the database; short results completed exactly")
def _hnsw(loaded: LoadedTable, config: MemoryIndexConfig, cache_file: Path | None) -> faiss.Index:
    if cache_file is not None and cache_file.exists():
        index = faiss.read_index(str(cache_file))
        if index.ntotal == len(loaded.vectors):
            index.hnsw.efSearch = config.hnsw_ef_search
            logger.info("loaded HNSW graph %s (%d rows)", cache_file, index.ntotal)
            return index
        logger.warning("ignoring %s: %d rows, the table has %d", cache_file, index.ntotal, len(loaded.vectors))
    index = faiss.IndexHNSWFlat(loaded.vectors.shape[1], config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.hnsw_ef_construction
    logger.info("building HNSW graph over %d rows", len(loaded.vectors))
    index.add(loaded.vectors)
    index.hnsw.efSearch = config.hnsw_ef_search
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        for stale in [*cache_file.parent.glob("*.faiss"), *cache_file.parent.glob(f"*{CHECK_SUFFIX}")]:
            stale.unlink(missing_ok=True)  # one folder per table: graphs of older versions are never read again
        partial = cache_file.with_suffix(".partial")
        faiss.write_index(index, str(partial))
        partial.replace(cache_file)  # atomic: a killed write never leaves a truncated graph under the real name
    return index


def load_table(table, version: int) -> LoadedTable:
    """Every row of an embeddings table: vectors (normalised) and the other columns.

    Read batch by batch into one preallocated array, normalised in place: the peak is about one copy of
    the vectors (reading the whole Arrow table, flattening and normalising held four at once).
    """
    dim = table.schema.field("vector").type.list_size
    expected = table.count_rows()
    vectors = np.empty((expected, dim), np.float32)
    extra: list[np.ndarray] = []  # rows committed between the count and the read
    metadata_batches = []
    filled = 0
    for batch in table.search().limit(None).to_batches():
        block = batch.column(batch.schema.get_field_index("vector")).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        block = _normalised(block.astype(np.float32, copy=False))
        room = max(0, min(len(block), expected - filled))
        vectors[filled : filled + room] = block[:room]
        if room < len(block):
            extra.append(block[room:])
        filled += len(block)
        metadata_batches.append(pl.from_arrow(batch.drop_columns(["vector"])))
    vectors = np.concatenate([vectors[: min(filled, expected)], *extra]) if extra or filled < expected else vectors
    metadata = pl.concat(metadata_batches).rechunk() if metadata_batches else pl.from_arrow(table.schema.empty_table().drop_columns(["vector"]))
    pa.default_memory_pool().release_unused()  # hand the read buffers back to the OS
    return LoadedTable(version=version, vectors=vectors, metadata=metadata)


def table_bytes(rows: int, dim: int) -> int:
    return rows * dim * 4


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)
