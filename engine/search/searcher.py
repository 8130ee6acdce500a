"""Search: LanceDB candidates under a ``where`` filter, exact FAISS re-ranking, k-NN class voting."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from engine.core.errors import EncoderMismatchError, SearchError, UnknownIdError
from engine.encoders.factory import Encoder
from engine.media.decode import decode_image
from engine.search.config import SearchConfig
from engine.search.disk_index import disk_setting, saved_disk_check
from engine.search.fusion import LinearClassifier, load_classifier, ranked_classes
from engine.search.memory_index import GRAPH_SUFFIX, MemoryIndex, RecallCheck, TableSource, create_memory_index, follow
from engine.search.policy import choose_memory_index, fallback_for
from engine.search.rerank import Candidates, create_reranker
from engine.storage.database import Database, ModelRecord, sql_quote
from engine.storage.filters import WhereFilterError, checked_where_for, one_line, read_filtered, shown
from engine.storage.index import DISTANCE, has_vector_index
from engine.versions import check_fingerprint, encoder_for_model

logger = logging.getLogger(__name__)

RESULT_COLUMNS = ["image_id", "path", "label"]


STALE_VERSION_TEXT = "Not found"  # LanceDB's message when a version's files were removed under a reader
FILTER_CACHE_SIZE = 16  # filters whose matching rows a memory index remembers (one table version each)


def index_folder(db: Database, model: ModelRecord) -> Path:
    """Where a model version's persisted in-memory indexes and their recall checks live."""
    return db.local_folder("_faiss") / model.embeddings_table


class Searcher:
    """Queries one model version's embeddings.

    The encoder for image queries is built from the model record and its fingerprint checked, so a
    table is never searched with vectors from another encoder.
    """

    def __init__(self, db: Database, model: str | ModelRecord | None = None, config: SearchConfig = SearchConfig(), encoder: Encoder | None = None) -> None:
        self.db = db
        self.model = model if isinstance(model, ModelRecord) else db.resolve_model(model)
        self.config = config
        self.table = db.embeddings(self.model)
        self.reranker = create_reranker(config.reranker, configs=config.reranker_configs)
        self._encoder = encoder
        self._memory: MemoryIndex | None = None
        self._memory_kind: str | None = None  # what the policy chose for the current version (None: on disk)
        self._memory_version = -1
        self._disk_check: RecallCheck | None = None
        self._classifier: LinearClassifier | None = None
        self._checked_at = -math.inf
        self._version = -1
        self._indexed = False
        if encoder is not None:
            self._check_encoder(encoder)

    def _check_encoder(self, encoder: Encoder) -> None:
        check_fingerprint(self.model, encoder)

    @property
    def encoder(self) -> Encoder:
        """The model's encoder, built on first use from its recorded name and weights."""
        if self._encoder is None:
            self._encoder = encoder_for_model(self.db, self.model)  # checked by the resolver
        return self._encoder

    # ---- queries --------------------------------------------------------------------------------

    def encode_files(self, paths: Sequence[Path | str]) -> np.ndarray:
        """Query image files to vectors, decoded exactly as ingest decodes catalogue images."""
        images = [decode_image(Path(p).read_bytes()).image for p in paths]
        return self.encoder.encode_images(images)

    def vectors_of(self, image_ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of catalogue images, in the order asked for."""
        if not image_ids:
            return np.zeros((0, self.model.dim), np.float32)
        where = "image_id IN (" + ", ".join(sql_quote(i) for i in image_ids) + ")"
        by_id: dict[str, np.ndarray] = {}
        for attempt in range(2):  # an id not found yet may have been committed by another process since the last check
            if attempt:
                self._checked_at = -math.inf
            self._refresh()
            found = self._read(lambda: self.table.search().where(where).select(["image_id", "vector"]).limit(None).to_arrow())
            by_id = dict(zip(found.column("image_id").to_pylist(), _vectors(found)))
            if all(i in by_id for i in image_ids):
                break
        missing = [i for i in image_ids if i not in by_id]
        if missing:
            raise UnknownIdError(f"no vectors of model {self.model.id} for image ids {missing}")
        return np.stack([by_id[i] for i in image_ids])

    def _read(self, read):  # noqa: ANN001, ANN202 - a LanceDB read and its result
        """``read()``, once more on the newest table version when another process removed the files of the one
        this searcher had open (``lookalike optimize`` cleaning up old versions)."""
        try:
            return read()
        except (OSError, RuntimeError, ValueError) as exc:
            if STALE_VERSION_TEXT not in str(exc):
                raise
            logger.info("table %s: version %s was cleaned up by another process; reading the newest", self.model.embeddings_table, self._version)
            self._checked_at = -math.inf
            self._memory, self._memory_version = None, -1  # rebuilt from the newest version
            self._refresh()
            return read()

    def search_vectors(self, vectors: np.ndarray, k: int | None = None, where: str | None = None, columns: Sequence[str] = ()) -> pl.DataFrame:
        """Nearest catalogue images of each query vector, all queries in one LanceDB call.

        Returns one row per (query, rank): query, rank, image_id, path, label, distance (cosine),
        plus ``columns``. Every query gets ``k`` rows whenever ``k`` rows match ``where``.
        """
        return self._read(lambda: self._search_vectors(vectors, k, where, columns))

    def _search_vectors(self, vectors: np.ndarray, k: int | None, where: str | None, columns: Sequence[str]) -> pl.DataFrame:
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.model.dim:
            raise EncoderMismatchError(f"query vectors have dim {vectors.shape[1]}, model {self.model.id} has {self.model.dim}")
        k = self.config.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SearchError(f"k must be a whole number of at least 1, got {k!r}")
        self._refresh()
        where = checked_where_for(self.table, where)
        wanted = list(dict.fromkeys([*RESULT_COLUMNS, *columns, "vector"]))
        # quality re-rankers look at their ``depth`` nearest candidates: fetch at least that many
        limit = max(k * self.config.candidate_factor, self.config.min_candidates, getattr(self.reranker, "depth", 0))
        memory = self.memory_index()
        if memory is not None:
            # a filter picks rows by LanceDB's scan of the scalar columns; their vectors are searched in RAM
            # (LanceDB's own filtered scan re-reads every vector: ~0.5 s at 100k x 1280)
            rows = self._matching_positions(memory, where) if where else None
            return self._search_memory(memory, vectors, k, limit, [c for c in wanted if c != "vector"], rows)
        # LanceDB's distances are exact (refined, or a flat scan): a re-ranker that only orders by exact
        # distance would recompute them from re-read vectors, so its k nearest are taken as they are
        direct = getattr(self.reranker, "ranks_by_distance", False)
        if direct:
            limit = k
            wanted.remove("vector")
        query = self.table.search(vectors).distance_type(DISTANCE).limit(limit).select([*wanted, "_distance"])
        if where:
            query = query.where(where, prefilter=True)
        if self._indexed:
            if where and self._matching_rows(where) <= self.config.exact_filter_rows:
                query = query.bypass_vector_index()
            else:
                # LanceDB refines limit x factor rows; the pool stays k x refine_factor, as LanceDB alone
                # would use, however many candidates the re-ranker asks for (re-reads dominate the cost).
                nprobes, refine_factor = self.disk_setting()
                refine = max(1, math.ceil(k * refine_factor / limit))
                query = query.nprobes(nprobes).refine_factor(refine)
        try:
            found = query.to_arrow()
        except (ValueError, RuntimeError, OSError) as exc:
            if STALE_VERSION_TEXT in str(exc):
                raise  # the version was cleaned up by another process: search_vectors reads the newest
            raise WhereFilterError(f"bad where filter {shown(where)}: {one_line(exc)}") from exc
        if direct:
            return self._as_found(found, [c for c in wanted if c != "vector"])
        return self._rerank(vectors, found, k, [c for c in wanted if c != "vector"])

    def _as_found(self, found: pa.Table, columns: list[str]) -> pl.DataFrame:
        """LanceDB's rows in its order of distance, numbered per query."""
        frame = pl.from_arrow(found)
        if "query_index" not in frame.columns:  # a single query comes back without it
            frame = frame.with_columns(pl.lit(0, pl.Int32).alias("query_index"))
        frame = frame.sort(["query_index", "_distance"], maintain_order=True)
        query_of = frame["query_index"].to_numpy()
        ranks = frame.select(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("query_index")).to_series().to_numpy()
        return self._results(query_of, ranks, frame, frame["_distance"].to_numpy(), columns)

    def _matching_positions(self, memory: MemoryIndex, where: str) -> np.ndarray:
        """Row positions of the rows ``where`` matches in the memory index's table version."""
        cached = memory.filter_rows.get(where)
        if cached is not None:
            return cached
        found = read_filtered(self.table.search().where(where).select(["image_id"]).limit(None), where)
        rows = memory.positions_of(found.column("image_id").to_pylist())
        if len(memory.filter_rows) >= FILTER_CACHE_SIZE:
            memory.filter_rows.pop(next(iter(memory.filter_rows)))  # the oldest
        memory.filter_rows[where] = rows
        return rows

    def _matching_rows(self, where: str) -> int:
        try:
            return self.table.count_rows(where)
        except (ValueError, RuntimeError, OSError) as exc:
            raise WhereFilterError(f"bad where filter {shown(where)}: {one_line(exc)}") from exc

    def _refresh(self) -> None:
        """Follow writes committed by others (an ingest, a review decision) since the last check."""
        now = time.monotonic()
        if now - self._checked_at < self.config.consistency_interval_s:
            return
        self.table.checkout_latest()
        version = self.table.version
        if version != self._version:
            self._version = version
            self._indexed = has_vector_index(self.table)
        self._checked_at = now

    def memory_index(self) -> MemoryIndex | None:
        """The in-memory index (built, loaded, or brought in step with the table's current version), or None
        when the configuration or the memory budget leaves the queries to LanceDB (engine.search.policy)."""
        self._refresh()
        config = self.config.memory_index
        version = self._version
        if self._memory_version == version:
            return self._memory
        kind = choose_memory_index(self.table.count_rows(), self.model.dim, config)
        old, self._memory, self._memory_version = self._memory, None, -1  # never left half-updated
        if kind is None:
            self._memory_version = version
            return None
        cache_file = None
        if config.persist:  # object stores: a local cache folder per URI
            cache_file = index_folder(self.db, self.model) / f"v{version}-{kind}-m{config.hnsw_m}{GRAPH_SUFFIX}"
        source = TableSource(self.table, version)
        rows = source.count()
        fallback = fallback_for(kind, rows, self.model.dim, config)
        if old is not None and old.kind in (kind, fallback):
            cache_file = cache_file.with_name(cache_file.name.replace(kind, old.kind, 1)) if cache_file is not None else None
            memory = follow(old, source, cache_file)
        else:
            memory = None
        del old
        if memory is None:
            memory = create_memory_index(kind, source, config, cache_file, fallback)  # warns when its check is low
        self._memory, self._memory_version = memory, version
        return memory

    def disk_setting(self) -> tuple[int, int]:
        """(nprobes, refine_factor) for LanceDB's index: the configuration's, else what its recall check chose."""
        check = self.disk_check
        nprobes, refine = disk_setting(check)
        return self.config.nprobes or nprobes, self.config.refine_factor or refine

    @property
    def disk_check(self) -> RecallCheck | None:
        """The saved recall check of this table's LanceDB index (None before one)."""
        if self._disk_check is None:
            self._disk_check = saved_disk_check(index_folder(self.db, self.model))
        return self._disk_check

    @property
    def index_check(self) -> RecallCheck | None:
        """The recall check of the index this searcher's last query used: the in-memory one it built or
        loaded, or LanceDB's when it searches on disk (None before either)."""
        if self._memory is not None:
            return self._memory.check
        return self.disk_check if self._indexed else None

    def _search_memory(self, memory: MemoryIndex, vectors: np.ndarray, k: int, limit: int, columns: list[str], rows: np.ndarray | None = None) -> pl.DataFrame:
        missing = [c for c in columns if c not in memory.metadata.columns]
        if missing:
            raise SearchError(f"unknown columns {missing}; the table has {memory.metadata.columns}")
        metadata = memory.metadata
        exact_rows = self.config.exact_filter_rows
        if getattr(self.reranker, "ranks_by_distance", False):
            # the index's distances are those of its stored vectors already: re-ranking its candidates would
            # recompute them and re-sort; its k nearest are the answer (all queries at once, no per-query work)
            positions, distances = memory.search(vectors, k, rows, exact_rows)
            valid = positions >= 0  # -1 pads a short result; valid entries are a prefix of each row
            return self._results(np.repeat(np.arange(len(vectors), dtype=np.int32), valid.sum(axis=1)),
                                 np.cumsum(valid, axis=1, dtype=np.int32)[valid], metadata[positions[valid], columns], distances[valid], columns)
        positions, distances = memory.search(vectors, limit, rows, exact_rows)
        groups = []
        for q in range(len(vectors)):
            valid = positions[q] >= 0
            rows = positions[q][valid]
            groups.append(Candidates(rows, memory.vectors_at(rows), distances[q][valid]))
        return self._rerank_groups(vectors, groups, k, lambda taken: metadata[taken, columns], columns)

    def _rerank(self, vectors: np.ndarray, found: pa.Table, k: int, columns: list[str]) -> pl.DataFrame:
        if "query_index" not in found.column_names:  # a single query comes back without it
            found = found.append_column("query_index", pa.array(np.zeros(found.num_rows, np.int32)))
        query_index = found.column("query_index").to_numpy()
        distances = found.column("_distance").to_numpy().astype(np.float32)
        candidate_vectors = _vectors(found)
        # candidates arrive grouped by query: slice each group, re-rank it, then take all winners at once
        order = np.argsort(query_index, kind="stable")
        bounds = np.searchsorted(query_index[order], np.arange(len(vectors) + 1))
        groups = []
        for q in range(len(vectors)):
            rows = order[bounds[q] : bounds[q + 1]]
            groups.append(Candidates(rows, candidate_vectors[rows], distances[rows]))
        return self._rerank_groups(vectors, groups, k, lambda taken: pl.from_arrow(found.take(pa.array(taken, pa.int64())).select(columns)), columns)

    def _rerank_groups(self, vectors: np.ndarray, groups: list[Candidates], k: int, take, columns: list[str]) -> pl.DataFrame:
        """Re-rank each query's candidates, then fetch every winner's columns with one ``take``."""
        rows_taken, query_of, ranks, best = [], [], [], []
        for q, candidates in enumerate(groups):
            best_rows, best_distances = self.reranker.rerank(vectors[q], candidates, k)
            rows_taken.append(best_rows)
            query_of.append(np.full(len(best_rows), q, np.int32))
            ranks.append(np.arange(1, len(best_rows) + 1, dtype=np.int32))
            best.append(best_distances)
        taken = take(np.concatenate(rows_taken).astype(np.int64) if rows_taken else np.zeros(0, np.int64))
        return self._results(_joined(query_of, np.int32), _joined(ranks, np.int32), taken, _joined(best, np.float32), columns)

    @staticmethod
    def _results(query_of: np.ndarray, ranks: np.ndarray, taken: pl.DataFrame, distances: np.ndarray, columns: list[str]) -> pl.DataFrame:
        """The result frame, built column by column in the final order (no lazy frame to plan per query)."""
        return pl.DataFrame([
            pl.Series("query", query_of, pl.Int32),
            pl.Series("rank", ranks, pl.Int32),
            *(taken.get_column(c) for c in RESULT_COLUMNS),
            pl.Series("distance", distances, pl.Float32),
            *(taken.get_column(c) for c in columns if c not in RESULT_COLUMNS),
        ])

    def search_files(self, paths: Sequence[Path | str], k: int | None = None, where: str | None = None, columns: Sequence[str] = ()) -> pl.DataFrame:
        """Nearest catalogue images of query image files (one batched call); adds a ``query_path`` column."""
        results = self.search_vectors(self.encode_files(paths), k, where, columns)
        return results.with_columns(pl.Series("query_path", [str(paths[q]) for q in results["query"]], pl.String))

    def search_ids(self, image_ids: Sequence[str], k: int | None = None, where: str | None = None, columns: Sequence[str] = ()) -> pl.DataFrame:
        """Nearest catalogue images of stored images (the image itself comes first, at distance 0)."""
        return self.search_vectors(self.vectors_of(image_ids), k, where, columns)

    def predict(self, vectors: np.ndarray, where: str | None = None, top: int = 5) -> pl.DataFrame:
        """Top classes of each query by similarity-weighted k-NN voting, blended with the version's classifier where
        its tuned pipeline holds one (``SearchConfig.class_fusion``): query, rank, label, score."""
        vectors = np.atleast_2d(vectors)
        neighbours = self.search_vectors(vectors, self.config.vote_neighbours, where)
        classifier = self.fusion_classifier()
        blend = classifier.blend(vectors, self.config.class_fusion.weight) if classifier else None
        rows = []
        for q in range(len(vectors)):
            mine = neighbours.filter(pl.col("query") == q)
            for rank, (label, score) in enumerate(ranked_classes(blend, q, mine["label"].to_list(), mine["distance"].to_numpy(), top), start=1):
                rows.append({"query": q, "rank": rank, "label": label, "score": score})
        return pl.DataFrame(rows, schema={"query": pl.Int32, "rank": pl.Int32, "label": pl.String, "score": pl.Float64})


    def fusion_classifier(self) -> LinearClassifier | None:
        """The class fusion's classifier (None without one), loaded once and checked against its recorded checksum."""
        if self.config.class_fusion is None:
            return None
        if self._classifier is None:
            fusion = self.config.class_fusion
            self._classifier = load_classifier(self.db.artifact(fusion.classifier), fusion.sha256)
        return self._classifier


def _joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _vectors(table: pa.Table) -> np.ndarray:
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)

