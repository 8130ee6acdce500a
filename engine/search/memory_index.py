"""In-memory FAISS indexes of one model version's vectors.

LanceDB answers every query from disk. Without an ANN index each query re-reads every vector (about 180 ms
per query at 20k x 1280 on this 2-core machine); with an IVF-PQ index each query still pays the planner and
the refine re-read (about 6 ms at 100k). A searcher that holds the vectors in RAM answers the same query in a
millisecond or less, so the :class:`engine.search.searcher.Searcher` keeps one whenever the policy
(:mod:`engine.search.policy`) finds a kind that fits its memory budget.

Kinds (``create_memory_index``; ``list_memory_indexes``):

* ``flat``: exact inner product over L2-normalised copies (cosine), the same answer as an exact scan.
* ``hnsw``: a FAISS HNSW graph over full-precision vectors.
* ``hnsw_fp16``: the same graph over half-precision vectors: half the memory, distances within 1e-3.

Every index is read from its table in one streamed pass (batch by batch, normalised on the way: the peak is
the index itself, never a second copy of the vectors). A graph is saved beside the database
(``<db>/_faiss/<table>/``, with the image id of every node) so that a new process loads it instead of
rebuilding it, and it follows later table versions in place (:meth:`MemoryIndex.refresh`): new rows are
inserted, removed or changed ones masked, until too many are masked or its recall falls; then it is rebuilt.

Every build or refresh is checked (``RecallCheck``): recall@10 against an exact scan of the table's own
float32 vectors, for a seeded sample of its rows as queries, computed during the same streamed pass. The figure
is kept with the index, saved beside a persisted graph (``.check.json``) and shown by ``lookalike info``; an
exact index records 1.0 without a scan and writes nothing, so searching a small table never writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
import polars as pl
import pyarrow as pa

from engine.core.registry import Registry
from engine.search.config import MemoryIndexConfig
from engine.search.policy import APPROXIMATE, GRAPHS

logger = logging.getLogger(__name__)


SELF_CHECK_QUERIES = 300  # sampled rows used as queries: a few hundred give recall to about +-0.01
CHECK_SHARE = 10  # ... at most a tenth of a small table's rows
MIN_CHECK_QUERIES = 50  # a graph that followed fewer new rows than this keeps its last check (too few queries to measure)
SELF_CHECK_K = 10
SELF_CHECK_SEED = 0
MIN_RECALL = 0.95  # below this a check warns, naming the setting that raises recall
# A graph's efSearch starts at MemoryIndexConfig.hnsw_ef_search and is raised until its self-check reaches
# this or MAX_EF_SEARCH. No margin is added: the check's queries (rows moved off their node, sample_queries) are
# harder than a fresh sample of the same data (100k x 1280 clustered, efSearch 32: the check read 0.909 where
# 1,000 outside queries found 0.960), so it errs on the side of a larger efSearch.
TUNE_RECALL = MIN_RECALL
# efSearch grows by this factor a step (128, 182, 256, 363, 512, ...): doubling overshot, e.g. 512 at 1M where
# 256 checked 0.955 (recall 0.978 but 981 queries/s against 1,287 at 256)
EF_SEARCH_STEP = 2**0.5
MAX_EF_SEARCH = 1024
CHECK_SUFFIX = ".check.json"
IDS_SUFFIX = ".ids.parquet"
GRAPH_SUFFIX = ".faiss"
GRAPH_FILE = re.compile(r"^v\d+-")  # a graph's files are named v<table version>-<kind><M>.<part>
# A graph's vectors are saved beside it, not inside: loaded into a storage allocated with growth headroom, so the
# first rows a loaded graph follows are inserted without copying its storage (FAISS reads a whole index into an
# allocation of exactly its size).
CODES_SUFFIX = ".codes.npy"
CODES_READ_BYTES = 32 << 20  # vector codes read from the file at a time (a block buffer, not a second copy)
# A result counts as found when it is one of the exact k or its similarity reaches the k-th exact one:
# duplicate vectors tie, and an index may return either of two tied rows.
TIE_TOLERANCE = 1e-5
# A half-precision component (of a unit vector: at most 1) is within 2^-11 of the float32 one: how a refresh tells
# an unchanged vector from a changed one.
FP16_TOLERANCE = 2.0**-11
# Ties in a half-precision graph's check: the similarity of the decoded vectors is typically within 1e-5 of the
# float32 one (1280-d: components near 0.03, rounding 2^-17 each). A bound for the worst case (5e-4) counted
# near-misses among 1M clustered rows as found: the check read 0.959 where outside queries found 0.919.
FP16_TIE_TOLERANCE = 3e-5
IVF_TRAIN_ROWS = 100_000  # rows an IVF's lists and PQ codebooks are trained on (k-means wants ~40 a list)
# (nprobe, k_factor) of an IVF from the cheapest up: its check keeps the first that reaches TUNE_RECALL
IVF_SETTINGS = ((16, 10), (32, 20), (64, 50), (128, 100), (256, 200))
# Room for rows appended in place, allocated with the vector storage: growing a full allocation copies it, holding
# the old and the new buffer at once (1M x 1280: a process following 10k appended rows peaked at 12 GB for a 5 GB
# graph). 5% of 1M rows is 256 MB and absorbs 50k appended rows before the next copy.
GROWTH_HEADROOM = 0.05
ADD_CHUNK_ROWS = 20_000  # rows inserted into a graph per FAISS call (FAISS parallelises within a call)
STREAM_BATCH_ROWS = 50_000  # rows per batch of an in-memory source
# rows per batch of a LanceDB scan: LanceDB's default batches (~1k rows) made it read ahead of a slower consumer
# (1M x 1280: peak 6.1 GB and 18 s for the scan alone, against 1.3 GB and 7 s with 20k-row batches)
SCAN_BATCH_ROWS = 20_000
# A filtered graph walk keeps efSearch / selectivity candidates (the share of rows passing the filter), at most this
MAX_FILTERED_EF = 2048


@dataclass(frozen=True)
class RecallCheck:
    """Recall@k of an index against an exact scan, measured on a sample of its own rows."""

    kind: str
    version: int
    rows: int
    queries: int
    k: int
    recall: float
    setting: str = ""  # what the index searched with (efSearch, or LanceDB's nprobes and refine factor)
    nprobes: int | None = None  # LanceDB's index and an in-memory IVF: the setting the check chose
    refine_factor: int | None = None  # (an IVF's k_factor)
    ef_search: int | None = None  # graphs: the efSearch the check chose

    @property
    def ok(self) -> bool:
        return self.recall >= MIN_RECALL

    def advice(self) -> str | None:
        """One line for a low recall: the figure and the setting that would raise it; None when fine."""
        if self.ok:
            return None
        if self.kind.startswith("lancedb"):
            fix = "raise SearchConfig.refine_factor or nprobes, or give IndexConfig.num_sub_vectors more sub-vectors"
        else:
            fix = "raise MemoryIndexConfig.hnsw_m (more links a node), or use kind='flat' for exact search"
        return (f"the {self.kind} index of table version {self.version} finds {self.recall:.0%} of the exact {self.k} nearest "
                f"neighbours (self-check on {self.queries} rows, wanted {MIN_RECALL:.0%}): {fix}")

    def as_json(self) -> str:
        return json.dumps({"kind": self.kind, "version": self.version, "rows": self.rows, "queries": self.queries, "k": self.k,
                           "recall": self.recall, "setting": self.setting, "nprobes": self.nprobes, "refine_factor": self.refine_factor, "ef_search": self.ef_search})

    @classmethod
    def from_json(cls, text: str) -> RecallCheck:
        data = json.loads(text)
        return cls(kind=str(data["kind"]), version=int(data["version"]), rows=int(data["rows"]), queries=int(data["queries"]),
                   k=int(data["k"]), recall=float(data["recall"]), setting=str(data.get("setting", "")),
                   nprobes=_optional_int(data.get("nprobes")), refine_factor=_optional_int(data.get("refine_factor")),
                   ef_search=_optional_int(data.get("ef_search")))


def _optional_int(value: object) -> int | None:
    return None if value is None else int(value)


# ---- where the vectors come from -------------------------------------------------------------------


class VectorSource(Protocol):
    """One version of an embeddings table, read in one streamed pass."""

    version: int
    dim: int

    def count(self) -> int:
        """Rows in this version."""

    def take(self, offsets: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Image ids and normalised vectors of the rows at ``offsets`` (sorted positions in scan order)."""

    def batches(self, with_vectors: bool = True) -> Iterator[tuple[pl.DataFrame, np.ndarray | None]]:
        """Every row in scan order: (the columns but ``vector``, normalised float32 vectors or None)."""


@dataclass
class LoadedTable:
    """A table version already in memory (tests, benchmarks): the same interface as :class:`TableSource`."""

    version: int
    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    metadata: pl.DataFrame  # every column but ``vector``, row i <-> vectors[i]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def count(self) -> int:
        return len(self.vectors)

    def take(self, offsets: np.ndarray) -> tuple[list[str], np.ndarray]:
        return self.metadata["image_id"].gather(offsets).to_list(), _normalised(self.vectors[offsets])

    def batches(self, with_vectors: bool = True) -> Iterator[tuple[pl.DataFrame, np.ndarray | None]]:
        for start in range(0, max(len(self.vectors), 1), STREAM_BATCH_ROWS):
            stop = start + STREAM_BATCH_ROWS
            yield self.metadata[start:stop], _normalised(self.vectors[start:stop]) if with_vectors else None


class TableSource:
    """A LanceDB embeddings table at the version a searcher has checked out."""

    def __init__(self, table, version: int) -> None:  # noqa: ANN001 - a LanceDB table
        self.table = table
        self.version = version
        self.dim = table.schema.field("vector").type.list_size

    def count(self) -> int:
        return self.table.count_rows()

    def take(self, offsets: np.ndarray) -> tuple[list[str], np.ndarray]:
        if len(offsets) == 0:
            return [], np.zeros((0, self.dim), np.float32)
        # fewer when rows went since the count (the order of queries does not matter)
        found = self.table.take_offsets([int(o) for o in offsets]).select(["image_id", "vector"]).to_arrow()
        return found.column("image_id").to_pylist(), _normalised(_block(found.column("vector"), self.dim))

    def batches(self, with_vectors: bool = True) -> Iterator[tuple[pl.DataFrame, np.ndarray | None]]:
        columns = [name for name in self.table.schema.names if with_vectors or name != "vector"]
        empty = True
        for batch in self.table.search().select(columns).limit(None).to_batches(batch_size=SCAN_BATCH_ROWS):
            empty = False
            if not with_vectors:
                yield pl.from_arrow(batch), None
                continue
            vectors = _normalised(_block(batch.column(batch.schema.get_field_index("vector")), self.dim))
            # a copy: the columns of a batch can share buffers with its vectors, and a zero-copy frame kept for
            # every batch would keep every vector alive (1M x 1280: 6.1 GB peak for the scan, 1.4 GB with copies)
            metadata = batch.drop_columns(["vector"])
            yield pl.from_arrow(metadata.take(pa.array(np.arange(metadata.num_rows)))), vectors
        if empty:
            yield pl.from_arrow(self.table.schema.empty_table().drop_columns(["vector"])), np.zeros((0, self.dim), np.float32) if with_vectors else None
        pa.default_memory_pool().release_unused()  # hand the read buffers back to the OS


# ---- exact answers for the self-check, accumulated while streaming -----------------------------------


class ExactNeighbours:
    """The exact ``k`` nearest rows of a few queries, accumulated block by block over a streamed table."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.similarities = np.full((len(queries), k), -np.inf, np.float32)
        self.positions = np.full((len(queries), k), -1, np.int64)

    def add(self, block: np.ndarray, positions: np.ndarray) -> None:
        """Rows ``block`` (normalised) at index positions ``positions``."""
        if len(block) == 0 or len(self.queries) == 0:
            return
        take = min(self.k, len(block))
        similarities, local = faiss.knn(self.queries, np.ascontiguousarray(block), take, metric=faiss.METRIC_INNER_PRODUCT)
        merged_similarities = np.concatenate([self.similarities, similarities], axis=1)
        merged_positions = np.concatenate([self.positions, positions[local]], axis=1)
        best = np.argsort(-merged_similarities, axis=1, kind="stable")[:, : self.k]
        self.similarities = np.take_along_axis(merged_similarities, best, axis=1)
        self.positions = np.take_along_axis(merged_positions, best, axis=1)


# ---- the index -----------------------------------------------------------------------------------------


class MemoryIndex:
    """A FAISS index over one table version; ``search`` gives index positions and cosine distances.

    ``metadata`` holds one row per index position (null for masked ones); ``live`` masks the positions whose
    rows are gone from the table (None: every position is live).
    """

    def __init__(self, kind: str, index: faiss.Index, version: int, metadata: pl.DataFrame, config: MemoryIndexConfig,
                 live: np.ndarray | None = None) -> None:
        self.kind = kind
        self.index = index
        self.version = version
        self.metadata = metadata
        self.config = config
        self.live = live
        self._positions: pl.DataFrame | None = None  # image_id -> position of live rows, built on first use
        # rows matched by recent filters: an operator keeps a filter while changing the query, and the
        # scalar scan costs more than the vector scan for broad filters (50 ms vs 19 ms at 50k rows)
        self.filter_rows: dict[str, np.ndarray] = {}
        self.check: RecallCheck | None = None
        self.ef_search = config.hnsw_ef_search  # a graph's: raised by the self-check until recall reaches TUNE_RECALL
        self.ivf_step = 0  # an IVF's place in IVF_SETTINGS: likewise
        self._live_bitmap: np.ndarray | None = None
        self.capacity = index.ntotal  # rows the vector storage has room for (see reserve); a loaded index: exactly its own

    @property
    def size(self) -> int:
        """Positions in the index, masked ones included."""
        return int(self.index.ntotal)

    @property
    def rows(self) -> int:
        """Live rows."""
        return self.size if self.live is None else int(self.live.sum())

    @property
    def dead(self) -> int:
        return self.size - self.rows

    @property
    def storage(self) -> faiss.Index:
        """The index holding every vector (float32 or float16), for exact scans of a subset of rows."""
        return vector_storage(self.index)

    @property
    def tolerance(self) -> float:
        """How far a stored component may be from the float32 one (an unchanged vector is within it)."""
        return FP16_TOLERANCE if self.kind == "hnsw_fp16" else TIE_TOLERANCE

    @property
    def tie_tolerance(self) -> float:
        """How close to the k-th exact similarity a result counts as tied with it."""
        return FP16_TIE_TOLERANCE if self.kind == "hnsw_fp16" else TIE_TOLERANCE

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """The stored vectors at ``positions`` as float32."""
        if len(positions) == 0:
            return np.zeros((0, self.index.d), np.float32)
        return self.storage.reconstruct_batch(np.ascontiguousarray(positions, dtype=np.int64))

    def positions_in_order(self, image_ids: Sequence[str] | pl.Series) -> np.ndarray:
        """The live position of each of ``image_ids``, in their order; -1 for ids the index does not hold."""
        if self._positions is None:
            self._positions = live_positions(self.metadata)
        wanted = pl.DataFrame({"image_id": pl.Series(image_ids, dtype=pl.String)})
        return wanted.join(self._positions, on="image_id", how="left", maintain_order="left")["position"].fill_null(-1).to_numpy().astype(np.int64)

    def positions_of(self, image_ids: Sequence[str]) -> np.ndarray:
        """Sorted positions of live rows with ``image_ids`` (ids the index does not hold are left out)."""
        positions = self.positions_in_order(image_ids)
        return np.sort(positions[positions >= 0])

    def search(self, queries: np.ndarray, limit: int, rows: np.ndarray | None = None, exact_rows: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(positions, cosine distances) of the ``limit`` nearest live rows per query; -1 pads short results.

        With ``rows`` (positions, e.g. the rows a filter matched), only those: an exact scan while there are
        at most ``exact_rows`` of them, else a graph walk that skips the others (and an exact scan for any
        query it leaves short), so every query gets ``min(limit, len(rows))`` results.
        """
        queries = _normalised(np.ascontiguousarray(queries, dtype=np.float32))
        if rows is not None and (len(rows) <= exact_rows or self.kind not in APPROXIMATE):
            return self._scan(queries, limit, rows)
        candidates = self.rows if rows is None else len(rows)
        limit = min(limit, candidates)
        if limit == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        selector, keep = self._selector(rows)
        similarities, positions = self.index.search(queries, limit, params=self._parameters(selector, candidates))
        del keep
        short = np.flatnonzero((positions < 0).any(axis=1))
        if len(short):
            # a graph walk can end before it has seen `limit` rows (k near the table's size, a selective
            # filter): those queries are answered exactly, so every query gets min(limit, rows) results
            similarities[short], positions[short] = self._scan_similarities(queries[short], limit, rows)
        return positions, (1.0 - similarities).astype(np.float32)

    def _parameters(self, selector: faiss.IDSelector | None, candidates: int) -> faiss.SearchParameters | None:
        share = candidates / max(self.size, 1)  # a walk (or a list) meets passing rows at this rate
        if self.kind == "ivf":
            nprobe, k_factor = self.ivf_setting
            lists = faiss.extract_index_ivf(self.index).nlist
            base = faiss.SearchParametersIVF(sel=selector, nprobe=min(lists, max(nprobe, math.ceil(nprobe / max(share, 1e-9)))))
            return faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=base)
        if self.kind not in GRAPHS:
            return faiss.SearchParameters(sel=selector) if selector is not None else None
        ef = min(max(MAX_FILTERED_EF, self.ef_search), max(self.ef_search, math.ceil(self.ef_search / max(share, 1e-9))))
        return faiss.SearchParametersHNSW(sel=selector, efSearch=ef) if selector is not None else faiss.SearchParametersHNSW(efSearch=ef)

    @property
    def ivf_setting(self) -> tuple[int, int]:
        """(nprobe, k_factor) an IVF searches with."""
        return IVF_SETTINGS[self.ivf_step]

    def raise_effort(self) -> bool:
        """Search harder (a graph's efSearch times EF_SEARCH_STEP, an IVF's next setting); False when at the most already."""
        if self.kind == "ivf":
            if self.ivf_step + 1 >= len(IVF_SETTINGS):
                return False
            self.ivf_step += 1
            return True
        if self.ef_search >= MAX_EF_SEARCH:
            return False
        self.ef_search = min(MAX_EF_SEARCH, math.ceil(EF_SEARCH_STEP * self.ef_search))
        return True

    def effort_from(self, other: MemoryIndex | RecallCheck | None) -> None:
        """Search as ``other`` (an index this one replaces, or a saved check) did."""
        if isinstance(other, MemoryIndex):
            self.ef_search, self.ivf_step = other.ef_search, other.ivf_step
        elif other is not None:
            self.ef_search = other.ef_search or self.ef_search
            if other.nprobes is not None and (other.nprobes, other.refine_factor) in IVF_SETTINGS:
                self.ivf_step = IVF_SETTINGS.index((other.nprobes, other.refine_factor))

    def setting(self) -> str:
        if self.kind == "ivf":
            return "nprobe {}, k_factor {}".format(*self.ivf_setting)
        return f"M {self.config.hnsw_m}, efSearch {self.ef_search}"

    def _selector(self, rows: np.ndarray | None) -> tuple[faiss.IDSelector | None, np.ndarray | None]:
        """A selector of ``rows`` (or of the live rows; None when all are live) and the bitmap it points into."""
        if rows is None:
            if self.live is None:
                return None, None
            if self._live_bitmap is None:
                self._live_bitmap = np.packbits(self.live, bitorder="little")
            bitmap = self._live_bitmap
        else:
            member = np.zeros(self.size, bool)
            member[rows] = True
            bitmap = np.packbits(member, bitorder="little")
        return faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bitmap)), bitmap  # the caller keeps the bitmap alive

    def _scan(self, queries: np.ndarray, limit: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(positions, cosine distances) from an exact scan of ``rows`` (every live row when None)."""
        similarities, positions = self._scan_similarities(queries, limit, rows)
        return positions, (1.0 - similarities).astype(np.float32)

    def _scan_similarities(self, queries: np.ndarray, limit: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, positions) from an exact scan of the stored vectors of ``rows`` (every live row when None)."""
        limit = min(limit, self.rows if rows is None else len(rows))
        if limit == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        selector, keep = self._selector(rows)
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        similarities, positions = self.storage.search(queries, limit, params=params)
        del keep
        return similarities, positions

    # ---- following the table -----------------------------------------------------------------------

    def refresh(self, source: VectorSource) -> MemoryIndex | None:
        """This graph brought to ``source``'s version in place, or None when it should be rebuilt.

        A pass over the ids (no vectors) finds the rows the graph lacks; a seeded sample of them is held out as
        the check's queries (:class:`HeldOut`). Then one streamed pass: rows whose id and vector the graph holds
        keep their node (their metadata is taken anew: relabels, splits, new columns), new or changed rows are
        inserted, nodes of rows gone are masked. With fewer than ``MIN_CHECK_QUERIES`` new rows the graph's
        last check is carried over. Only this index's image ids are read, so a graph saved for an older table
        version can follow too. None when more than ``max_dead_share`` of the nodes would be masked, when the
        table more than doubled, or when the check falls below ``MIN_RECALL`` at the largest efSearch. The caller
        must drop this object either way.
        """
        if self.kind not in APPROXIMATE:
            return None
        new_offsets, scanned = [], 0
        for metadata, _ in source.batches(False):
            new_offsets.append(scanned + np.flatnonzero(self.positions_in_order(metadata["image_id"]) < 0))
            scanned += metadata.height
        new_offsets = np.concatenate(new_offsets) if new_offsets else np.zeros(0, np.int64)
        if len(new_offsets) > self.size:
            logger.info("%s graph: %d new rows for %d nodes: rebuilding", self.kind, len(new_offsets), self.size)
            return None
        held = HeldOut(source, sample_offsets(scanned, new_offsets) if len(new_offsets) >= MIN_CHECK_QUERIES else np.zeros(0, np.int64))
        kept_positions, kept_metadata, added_metadata, added_vectors = [], [], [], []
        next_position, scanned, changed, schema = self.size, 0, 0, None
        for metadata, vectors in source.batches(True):
            schema = schema or metadata.schema
            metadata, vectors, out = held.split(scanned, metadata, vectors)
            scanned += len(out)
            found = self.positions_in_order(metadata["image_id"])
            matched = found >= 0
            same = np.zeros(len(found), bool)
            if matched.any():
                stored = self.vectors_at(found[matched])
                same[matched] = np.abs(stored - vectors[matched]).max(axis=1) <= self.tolerance
            changed += int(matched.sum() - same.sum())
            if changed > self.config.max_dead_share * self.size:  # a version recomputed whole: stop before holding its vectors
                logger.info("%s graph: %d of %d rows changed: rebuilding", self.kind, changed, self.size)
                return None
            positions = np.empty(len(found), np.int64)
            positions[same] = found[same]
            fresh = np.flatnonzero(~same)
            positions[fresh] = np.arange(next_position, next_position + len(fresh))
            next_position += len(fresh)
            held.exact.add(vectors, positions)
            kept_positions.append(found[same])
            kept_metadata.append(metadata.filter(pl.Series(same)).with_columns(pl.Series("position", found[same], pl.Int64)))
            added_metadata.append(metadata[fresh].with_columns(pl.Series("position", positions[fresh], pl.Int64)))
            added_vectors.append(vectors[fresh])
        live = np.zeros(next_position, bool)
        kept = np.concatenate(kept_positions) if kept_positions else np.zeros(0, np.int64)
        live[kept] = True
        live[self.size :] = True
        dead_share = 1.0 - (live.sum() + len(held)) / max(len(live) + len(held), 1)
        if dead_share > self.config.max_dead_share:
            logger.info("%s graph: %.0f%% of its nodes would be masked (> %.0f%%): rebuilding", self.kind, 100 * dead_share, 100 * self.config.max_dead_share)
            return None
        new_vectors = np.concatenate(added_vectors) if added_vectors else np.zeros((0, self.index.d), np.float32)
        capacity = reserve(self.index, self.size + len(new_vectors) + len(held), headroom=True, capacity=self.capacity)
        _add(self.index, new_vectors)
        metadata = _in_position_order(pl.concat([*kept_metadata, *added_metadata]), next_position, schema)
        refreshed = MemoryIndex(self.kind, self.index, source.version, metadata, self.config, None if live.all() else live)
        refreshed.effort_from(self)
        refreshed.capacity = capacity
        refreshed = held.check_then_insert(refreshed, previous=self.check)
        logger.info("%s graph followed table version %d -> %d in place: %d kept, %d inserted, %d masked; self-check recall@%d %.4f",
                    self.kind, self.version, source.version, len(kept), len(new_vectors) + len(held), refreshed.dead, refreshed.check.k, refreshed.check.recall)
        if not refreshed.check.ok:
            logger.info("%s graph: recall fell to %.4f after following the table: rebuilding", self.kind, refreshed.check.recall)
            return None
        return refreshed


# ---- building ------------------------------------------------------------------------------------------


Factory = Callable[[int, int, MemoryIndexConfig], faiss.Index]  # (dim, rows, config) -> an empty index
MEMORY_INDEXES: Registry[Factory] = Registry("memory index")


def register_memory_index(kind: str, description: str) -> Callable[[Factory], Factory]:
    return MEMORY_INDEXES.register(kind, description)


def list_memory_indexes() -> dict[str, str]:
    return MEMORY_INDEXES.describe()


@register_memory_index("flat", "exact inner-product scan of every vector (FAISS IndexFlatIP)")
def _flat(dim: int, rows: int, config: MemoryIndexConfig) -> faiss.Index:
    return faiss.IndexFlatIP(dim)


@register_memory_index("hnsw", "FAISS HNSW graph over float32 vectors, saved beside the database; short results completed exactly")
def _hnsw(dim: int, rows: int, config: MemoryIndexConfig) -> faiss.Index:
    index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.hnsw_ef_construction
    index.hnsw.efSearch = config.hnsw_ef_search
    return index


@register_memory_index("hnsw_fp16", "FAISS HNSW graph over float16 vectors (half the memory, distances within 1e-3)")
def _hnsw_fp16(dim: int, rows: int, config: MemoryIndexConfig) -> faiss.Index:
    index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.hnsw_ef_construction
    index.hnsw.efSearch = config.hnsw_ef_search
    return index


@register_memory_index("ivf", "FAISS IVF (sqrt(rows) lists) with 4-bit fast-scan PQ codes, re-ranked exactly on float32 vectors")
def _ivf(dim: int, rows: int, config: MemoryIndexConfig) -> faiss.Index:
    lists = max(1, int(math.sqrt(max(rows, 1))))
    sub_vectors = max(d for d in range(2, max(2, dim // 4) + 1, 2) if dim % d == 0) if dim % 2 == 0 else dim
    return faiss.index_factory(dim, f"IVF{lists},PQ{sub_vectors}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)


def create_memory_index(kind: str, source: VectorSource, config: MemoryIndexConfig = MemoryIndexConfig(), cache_file: Path | None = None,
                        fallback: str | None = None) -> MemoryIndex:
    """An index of ``kind`` over ``source``: loaded from ``cache_file`` when it holds this version's index, else
    one saved for an older version brought in step, else built (and saved there); its recall is checked either
    way. With ``fallback``, a built index whose check falls below ``MIN_RECALL`` is replaced by one of that kind
    when that one checks higher (its file is ``cache_file`` named for it). The error names the kinds."""
    kinds = [kind, *([fallback] if fallback else [])]
    factories = {k: MEMORY_INDEXES.get(k) for k in kinds}
    files = {k: cache_file.with_name(cache_file.name.replace(kind, k, 1)) if cache_file is not None else None for k in kinds}
    index = None
    if cache_file is not None and kind in APPROXIMATE:
        index = next((found for k in kinds if (found := _load(k, source, config, files[k])) is not None), None)
        for k in kinds if index is None else []:
            older = _load_older(k, source.version, config, files[k])
            if older is not None:  # an index saved for an earlier table version follows the writes since (no rebuild)
                index = follow(older, source, files[k])
                break
    if index is None:
        index = _build(kind, factories[kind], source, config)
        if fallback and not index.check.ok:
            logger.info("%s index checked %.4f at its largest setting: trying %s", kind, index.check.recall, fallback)
            short = index.check
            del index  # one index in memory at a time (two 1M x 1280 indexes held 13 GB)
            index = _build(fallback, factories[fallback], source, config)
            if index.check.recall < short.recall:  # rare: the fallback checked lower still; the first is built again
                del index
                index = _build(kind, factories[kind], source, config)
        if files[index.kind] is not None and index.kind in APPROXIMATE:
            save(index, files[index.kind])
    if not index.check.ok:
        logger.warning("%s", index.check.advice())
    return index


def _build(kind: str, factory: Factory, source: VectorSource, config: MemoryIndexConfig) -> MemoryIndex:
    count = source.count()
    index = factory(source.dim, count, config)
    graph = kind in APPROXIMATE
    capacity = reserve(index, count, headroom=graph)
    if not index.is_trained:  # IVF: its lists and PQ codebooks from a seeded random sample, not the first rows read
        index.train(source.take(np.sort(np.random.default_rng(SELF_CHECK_SEED).choice(count, size=min(count, IVF_TRAIN_ROWS), replace=False)))[1])
    if graph:
        logger.info("building a %s graph over %d rows", kind, count)
    held = HeldOut(source, sample_offsets(count) if graph else np.zeros(0, np.int64))
    metadata_parts, pending, scanned, filled = [], [], 0, 0
    for metadata, vectors in source.batches(True):
        metadata, vectors, out = held.split(scanned, metadata, vectors)
        scanned += len(out)
        held.exact.add(vectors, np.arange(filled, filled + len(vectors)))
        metadata_parts.append(metadata)
        pending.append(vectors)
        filled += len(vectors)
        if sum(len(p) for p in pending) >= ADD_CHUNK_ROWS:
            _add(index, np.concatenate(pending))
            pending = []
    _add(index, np.concatenate(pending) if pending else np.zeros((0, source.dim), np.float32))
    built = MemoryIndex(kind, index, source.version, pl.concat(metadata_parts).rechunk(), config)
    built.capacity = capacity
    if not graph:
        # exact by construction: measuring it would scan the table twice on the first search after every write
        built.check = RecallCheck(kind=kind, version=source.version, rows=built.rows, queries=0, k=SELF_CHECK_K, recall=1.0, setting="exact")
        return built
    built = held.check_then_insert(built)
    logger.info("%s index of version %d: self-check recall@%d %.4f (%s)", kind, source.version, built.check.k, built.check.recall, built.check.setting)
    return built


def follow(index: MemoryIndex, source: VectorSource, cache_file: Path | None) -> MemoryIndex | None:
    """``index`` brought to ``source``'s version (saved to ``cache_file``), or None when it must be rebuilt."""
    refreshed = index.refresh(source)
    if refreshed is not None and cache_file is not None:
        save(refreshed, cache_file)
    return refreshed


def vector_storage(index: faiss.Index) -> faiss.Index:
    """The part of an index that holds every vector: a graph's storage, a refined IVF's refine index, or itself."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.refine_index)
    storage = getattr(index, "storage", None)
    return faiss.downcast_index(storage) if storage is not None else index


def reserve(index: faiss.Index, rows: int, headroom: bool = False, capacity: int = 0) -> int:
    """Allocate the vector storage for ``rows`` up front and return the rows it has room for: adding batch by batch
    would grow it by doubling, which holds the old and the new buffer at once (1M x 1280 float32: a 5 GB index
    peaked at 8 GB). With ``headroom`` (an index that follows writes in place) :data:`GROWTH_HEADROOM` more rows
    fit without another copy; ``capacity`` is the room allocated before (FAISS does not report it)."""
    if rows <= capacity:
        return capacity
    storage = vector_storage(index)
    codes = storage.codes
    room = int(rows * (1 + GROWTH_HEADROOM)) if headroom else rows
    if codes.size() < room * storage.code_size:
        used = codes.size()
        codes.resize(room * storage.code_size)
        codes.resize(used)  # std::vector keeps its capacity when it shrinks
    return room


def _add(index: faiss.Index, vectors: np.ndarray) -> None:
    for start in range(0, len(vectors), ADD_CHUNK_ROWS):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK_ROWS]))


def check_queries(rows: int) -> int:
    """How many rows a check holds out as queries: SELF_CHECK_QUERIES, at most a tenth of the table."""
    return min(SELF_CHECK_QUERIES, rows // CHECK_SHARE)


def sample_offsets(rows: int, within: np.ndarray | None = None) -> np.ndarray:
    """The seeded, sorted scan offsets a check holds out (among the offsets ``within`` when given)."""
    pool = np.arange(rows) if within is None else within
    size = check_queries(rows) if within is None else min(SELF_CHECK_QUERIES, len(pool))
    if size == 0:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng(SELF_CHECK_SEED).choice(pool, size=size, replace=False))


class HeldOut:
    """Rows kept out of a graph until its check has used them as queries.

    A graph's recall is measured with queries it does not hold: rows of the table as their own queries sit on a
    node linked to their nearest neighbours and are found too easily (1M x 1280: 0.97 where 1,000 outside
    queries found 0.936), and rows moved off their node read far too low (LanceDB IVF-PQ at 1M: 0.18 for 0.49).
    So a seeded sample of the rows being inserted is read first (their vectors are the queries), left out while
    the graph is built and the exact neighbours among the other rows accumulate, measured against, then inserted.
    """

    def __init__(self, source: VectorSource, offsets: np.ndarray) -> None:
        self.offsets = offsets
        self.ids, self.queries = source.take(offsets)
        self.exact = ExactNeighbours(self.queries, SELF_CHECK_K)
        self.metadata: list[pl.DataFrame] = []
        self.vectors: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.queries)

    def split(self, start: int, metadata: pl.DataFrame, vectors: np.ndarray) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
        """The rows of a streamed batch (its first row at scan offset ``start``) that go in now, and the mask of the
        batch's rows held out (kept here)."""
        out = np.isin(np.arange(start, start + len(vectors)), self.offsets)
        if out.any():
            self.metadata.append(metadata.filter(pl.Series(out)))
            self.vectors.append(vectors[out])
            metadata, vectors = metadata.filter(pl.Series(~out)), vectors[~out]
        return metadata, vectors, out

    def check_then_insert(self, index: MemoryIndex, previous: RecallCheck | None = None) -> MemoryIndex:
        """Measure ``index`` (raising a graph's efSearch as needed), then insert the held rows; the result is a new
        MemoryIndex over the same FAISS object. With no rows held, ``previous`` is carried over."""
        if len(self):
            check = _tuned(index, self.queries, self.exact)
        else:
            check = previous or RecallCheck(kind=index.kind, version=index.version, rows=index.rows, queries=0, k=SELF_CHECK_K, recall=1.0)
        vectors = np.concatenate(self.vectors) if self.vectors else np.zeros((0, index.index.d), np.float32)
        _add(index.index, vectors)
        metadata = pl.concat([index.metadata, *self.metadata], how="vertical_relaxed") if self.metadata else index.metadata
        live = None if index.live is None else np.concatenate([index.live, np.ones(len(vectors), bool)])
        done = MemoryIndex(index.kind, index.index, index.version, metadata.rechunk(), index.config, live)
        done.effort_from(index)
        done.capacity = max(index.capacity, done.size)
        done.check = dataclasses.replace(check, version=index.version, rows=done.rows)
        return done


def _tuned(index: MemoryIndex, queries: np.ndarray, exact: ExactNeighbours, allowed: np.ndarray | None = None) -> RecallCheck:
    """The self-check of an index, its effort raised until recall reaches ``TUNE_RECALL`` (or can go no higher)."""
    check = _measure(index, queries, exact, allowed)
    while check.recall < TUNE_RECALL and index.raise_effort():
        check = _measure(index, queries, exact, allowed)
    return check


def _measure(index: MemoryIndex, queries: np.ndarray, exact: ExactNeighbours, allowed: np.ndarray | None = None) -> RecallCheck:
    """Recall@k of ``index`` (over the ``allowed`` positions only, when given) for ``queries`` against the exact
    neighbours streamed past ``exact``."""
    setting = index.setting()
    effort = {"ef_search": index.ef_search} if index.kind in GRAPHS else {}
    if index.kind == "ivf":
        effort = {"nprobes": index.ivf_setting[0], "refine_factor": index.ivf_setting[1]}
    k = min(exact.k, index.rows)
    if k == 0 or len(queries) == 0:
        return RecallCheck(kind=index.kind, version=index.version, rows=index.rows, queries=0, k=SELF_CHECK_K, recall=1.0, setting=setting, **effort)
    positions, _ = index.search(queries, k, allowed, exact_rows=0)
    found_similarities = np.einsum("qd,qkd->qk", queries, index.vectors_at(np.where(positions >= 0, positions, 0).ravel()).reshape(*positions.shape, -1))
    kth = exact.similarities[:, k - 1 : k]
    exact_sets = exact.positions[:, :k]
    hits = ((positions[:, :, None] == exact_sets[:, None, :]).any(axis=2) | (found_similarities >= kth - index.tie_tolerance)) & (positions >= 0)
    return RecallCheck(kind=index.kind, version=index.version, rows=index.rows, queries=len(queries), k=k,
                       recall=round(float(hits.sum(axis=1).mean() / k), 4), setting=setting, **effort)


def self_check(index: MemoryIndex, source: VectorSource, tune: bool = False) -> RecallCheck:
    """Recall@k of ``index`` (holding every row of ``source``, the version it was built from) against an exact
    scan, for a seeded sample of its own rows as queries, each left out of both answers: for a graph loaded
    without its saved check (it reads higher than held-out rows do, see :class:`HeldOut`). With ``tune``, a
    graph's efSearch is raised first until recall reaches ``TUNE_RECALL``."""
    offsets = sample_offsets(source.count())
    ids, queries = source.take(offsets)
    exact = ExactNeighbours(queries, SELF_CHECK_K)
    scanned = 0
    for metadata, vectors in source.batches(True):
        keep = ~np.isin(np.arange(scanned, scanned + len(vectors)), offsets)
        scanned += len(vectors)
        exact.add(vectors[keep], index.positions_in_order(metadata["image_id"].filter(pl.Series(keep))))
    live = index.live if index.live is not None else np.ones(index.size, bool)
    allowed = np.setdiff1d(np.flatnonzero(live), index.positions_of(ids))
    return _tuned(index, queries, exact, allowed) if tune else _measure(index, queries, exact, allowed)


def live_positions(metadata: pl.DataFrame) -> pl.DataFrame:
    """image_id -> position (Int64) of the live rows of an index's metadata."""
    return metadata.select("image_id").with_row_index("position").filter(pl.col("image_id").is_not_null()).with_columns(pl.col("position").cast(pl.Int64))


def _in_position_order(rows: pl.DataFrame, size: int, schema: pl.Schema) -> pl.DataFrame:
    """Metadata rows carrying a ``position`` column laid out at those positions; missing positions are null."""
    frame = pl.DataFrame({"position": np.arange(size, dtype=np.int64)}).join(rows, on="position", how="left", maintain_order="left")
    return frame.select(list(schema)).rechunk()


# ---- persistence ------------------------------------------------------------------------------------


def save(index: MemoryIndex, cache_file: Path) -> None:
    """Save a graph, the image id of each node (null when masked) and its check beside each other (an HNSW graph
    without its vectors, which go to their own file); files of other table versions in the folder go (they are
    never read again). Each file is written atomically, the graph last but one and the check last, so a killed
    save leaves nothing that loads as a whole."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    for stale in cache_file.parent.iterdir():
        if stale.is_file() and GRAPH_FILE.match(stale.name) and not stale.name.startswith(cache_file.stem + "."):
            stale.unlink(missing_ok=True)
    ids_file, check_file = _companions(cache_file)
    _write_atomically(ids_file, lambda partial: index.metadata.select("image_id").write_parquet(partial))
    if index.kind in EMPTY_STORAGE and isinstance(index.index, faiss.IndexHNSW):
        _write_atomically(_codes_file(cache_file), lambda partial: _write_codes(vector_storage(index.index), partial))
        _write_atomically(cache_file, lambda partial: faiss.write_index(index.index, str(partial), faiss.IO_FLAG_SKIP_STORAGE))
    else:
        _codes_file(cache_file).unlink(missing_ok=True)
        _write_atomically(cache_file, lambda partial: faiss.write_index(index.index, str(partial)))
    if index.check is not None:
        _write_atomically(check_file, lambda partial: partial.write_text(index.check.as_json()))


# The empty vector storage of each graph kind saved without its vectors (what FAISS builds it on).
EMPTY_STORAGE: dict[str, Callable[[int], faiss.Index]] = {
    "hnsw": lambda dim: faiss.IndexFlat(dim, faiss.METRIC_INNER_PRODUCT),
    "hnsw_fp16": lambda dim: faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT),
}


def _codes_file(cache_file: Path) -> Path:
    return cache_file.with_name(cache_file.stem + CODES_SUFFIX)


def _write_codes(storage: faiss.Index, path: Path) -> None:
    """The storage's codes as an (ntotal, code_size) uint8 array, written from FAISS's memory without a copy."""
    size = storage.ntotal * storage.code_size
    view = faiss.rev_swig_ptr(storage.codes.data(), size) if size else np.zeros(0, np.uint8)
    with path.open("wb") as handle:
        np.save(handle, view.reshape(storage.ntotal, storage.code_size))


def read_graph(kind: str, path: Path) -> tuple[faiss.Index, int]:
    """A saved index and the rows its vector storage has room for. A graph saved without its vectors gets a
    storage allocated with :data:`GROWTH_HEADROOM` first, filled from the codes file a block at a time (never a
    second copy of them in memory); one saved whole is read as it is. Raises RuntimeError when the files do not
    fit together."""
    codes_file = _codes_file(path)
    if not codes_file.exists() or kind not in EMPTY_STORAGE:
        index = faiss.read_index(str(path))
        if isinstance(index, faiss.IndexHNSW) and index.storage is None:
            raise RuntimeError(f"its vectors file {codes_file.name} is missing")
        return index, index.ntotal
    graph = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_STORAGE)
    if graph.storage is not None:  # saved whole (an earlier release): the codes file beside it is not its own
        return graph, graph.ntotal
    storage = EMPTY_STORAGE[kind](graph.d)
    room = int(graph.ntotal * (1 + GROWTH_HEADROOM))
    reserve(storage, room)
    with codes_file.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        (rows, code_size), _, dtype = header(handle)
        if (rows, code_size, dtype) != (graph.ntotal, storage.code_size, np.dtype(np.uint8)):
            raise RuntimeError(f"{codes_file.name} holds {rows} x {code_size} codes, the graph {graph.ntotal} x {storage.code_size}")
        block_rows = max(1, CODES_READ_BYTES // max(code_size, 1))
        block = np.empty((min(rows, block_rows), code_size), np.uint8)
        for start in range(0, rows, block_rows):
            part = block[: min(block_rows, rows - start)]
            if handle.readinto(memoryview(part).cast("B")) != part.nbytes:
                raise RuntimeError(f"{codes_file.name} ends early, at row {start}")
            storage.add_sa_codes(part)
    graph.storage = storage
    graph.own_fields = True
    storage.this.disown()  # the graph owns its storage now (and frees it)
    return graph, room


def _companions(cache_file: Path) -> tuple[Path, Path]:
    return cache_file.with_name(cache_file.stem + IDS_SUFFIX), cache_file.with_name(cache_file.stem + CHECK_SUFFIX)


def _load(kind: str, source: VectorSource, config: MemoryIndexConfig, cache_file: Path) -> MemoryIndex | None:
    """The saved graph of this version, its metadata read from the table (no vectors), or None."""
    ids_file, check_file = _companions(cache_file)
    if not (cache_file.exists() and ids_file.exists()):
        return None
    try:
        graph, capacity = read_graph(kind, cache_file)
        ids = pl.read_parquet(ids_file).with_row_index("position")
    except (RuntimeError, OSError, ValueError, pl.exceptions.PolarsError) as exc:
        logger.warning("ignoring saved graph %s: %s", cache_file, exc)
        return None
    if graph.ntotal != ids.height:
        logger.warning("ignoring saved graph %s: %d nodes, %d ids", cache_file, graph.ntotal, ids.height)
        return None
    live_ids = live_positions(ids.drop("position"))
    parts = [metadata.join(live_ids, on="image_id", how="inner") for metadata, _ in source.batches(False)]
    rows = pl.concat(parts)
    if rows.height != live_ids.height or rows.height != source.count():
        logger.warning("ignoring saved graph %s: it holds %d rows, table version %d has %d", cache_file, live_ids.height, source.version, source.count())
        return None
    schema = parts[0].drop("position").schema
    live = ids["image_id"].is_not_null().to_numpy()
    index = MemoryIndex(kind, graph, source.version, _in_position_order(rows, ids.height, schema), config, None if live.all() else live)
    index.capacity = capacity
    index.check = read_check(check_file) if check_file.exists() else None
    index.effort_from(index.check)
    if index.check is None or (index.check.kind, index.check.version, index.check.rows) != (kind, source.version, index.rows):
        index.check = self_check(index, source, tune=True)
        _write_atomically(check_file, lambda partial: partial.write_text(index.check.as_json()))
    logger.info("loaded %s graph %s (%d rows); recall@%d %.4f", kind, cache_file, index.rows, index.check.k, index.check.recall)
    return index


def _load_older(kind: str, version: int, config: MemoryIndexConfig, cache_file: Path) -> MemoryIndex | None:
    """The newest graph of the same kind saved for an earlier table version, with its image ids only (what
    :meth:`MemoryIndex.refresh` needs), or None."""
    suffix = cache_file.name.split("-", 1)[1]  # <kind>-m<M>.faiss
    saved = []
    for path in cache_file.parent.glob(f"v*-{suffix}"):
        match = re.match(r"^v(\d+)-", path.name)
        if match and int(match.group(1)) < version:
            saved.append((int(match.group(1)), path))
    if not saved:
        return None
    older_version, path = max(saved)
    ids_file, check_file = _companions(path)
    try:
        graph, capacity = read_graph(kind, path)
        ids = pl.read_parquet(ids_file, columns=["image_id"])
    except (RuntimeError, OSError, ValueError, pl.exceptions.PolarsError) as exc:
        logger.warning("ignoring saved graph %s: %s", path, exc)
        return None
    if graph.ntotal != ids.height:
        return None
    live = ids["image_id"].is_not_null().to_numpy()
    index = MemoryIndex(kind, graph, older_version, ids, config, None if live.all() else live)
    index.capacity = capacity
    check = read_check(check_file) if check_file.exists() else None
    index.effort_from(check)
    logger.info("following the %s graph of table version %d to version %d", kind, older_version, version)
    return index


def saved_checks(folder: Path) -> list[RecallCheck]:
    """Recall checks saved in a table's index folder, newest table version first (unreadable files are skipped)."""
    checks = [check for path in folder.glob(f"*{CHECK_SUFFIX}") if (check := read_check(path)) is not None]
    return sorted(checks, key=lambda c: c.version, reverse=True)


def read_check(path: Path) -> RecallCheck | None:
    """A saved check, or None (logged) when the file is unreadable."""
    try:
        return RecallCheck.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring recall check %s: %s", path, exc)
        return None


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)  # a killed write never leaves a truncated file under the real name


def write_check(path: Path, check: RecallCheck) -> None:
    """Save a check (atomically)."""
    _write_atomically(path, lambda partial: partial.write_text(check.as_json()))


def _block(column: pa.Array, dim: int) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)
