"""The on-disk path's recall check: LanceDB's ANN index measured against an exact scan when it is built, and
the cheapest ``nprobes`` / ``refine_factor`` that reaches :data:`MIN_RECALL` chosen from the measurement.

Tables too large for any in-memory index (:mod:`engine.search.policy`) are searched by LanceDB's IVF index.
Its recall depends on the data: at 1M x 1280 clustered vectors, IVF-PQ with refine 50 found 0.48 of the true
ten (benchmarks/search.py), at 100k 0.9998. So rather than trust a default, the index is measured right after
it is built (``check_disk_index``, by the write command that built it), the setting chosen is saved beside the
database (``<db>/_faiss/<table>/lancedb.check.json``), searches use it, and ``lookalike info`` shows it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from engine.search.memory_index import (
    SELF_CHECK_K,
    TIE_TOLERANCE,
    ExactNeighbours,
    RecallCheck,
    TableSource,
    read_check,
    sample_offsets,
    write_check,
)
from engine.storage.index import DISTANCE, index_type

logger = logging.getLogger(__name__)

DEFAULT_NPROBES = 20
# LanceDB re-reads k x refine_factor rows exactly: PQ codes of 1280-d vectors rank too coarsely for less
# (100k rows, nprobes 20: recall@10 0.70 at 10, 1.0 at 50 for +5 ms; benchmarks/search.py)
DEFAULT_REFINE_FACTOR = 50
# (nprobes, refine_factor) from the cheapest up: the check keeps the first that reaches MIN_RECALL
SETTINGS = ((20, 10), (20, 20), (20, 50), (40, 50), (20, 100), (40, 100), (80, 200))
DISK_CHECK_FILE = "lancedb.check.json"


def disk_check_file(folder: Path) -> Path:
    return folder / DISK_CHECK_FILE


def saved_disk_check(folder: Path) -> RecallCheck | None:
    """The last saved check of a table's LanceDB index, or None."""
    path = disk_check_file(folder)
    return read_check(path) if path.exists() else None


def disk_setting(check: RecallCheck | None) -> tuple[int, int]:
    """(nprobes, refine_factor) a check chose, or the defaults."""
    if check is None or check.nprobes is None or check.refine_factor is None:
        return DEFAULT_NPROBES, DEFAULT_REFINE_FACTOR
    return check.nprobes, check.refine_factor


def check_disk_index(table, folder: Path, settings: tuple[tuple[int, int], ...] = SETTINGS) -> RecallCheck:  # noqa: ANN001 - a LanceDB table
    """Measure recall@10 of the table's LanceDB index for each setting, cheapest first, against an exact scan,
    for a seeded sample of its rows as queries (each left out of both answers); save and return the first setting
    that reaches ``MIN_RECALL`` (else the best)."""
    source = TableSource(table, table.version)
    offsets = sample_offsets(source.count())
    query_ids, queries = source.take(offsets)
    exact = ExactNeighbours(queries, SELF_CHECK_K + 1)  # each query's own row comes first: it is dropped below
    ids, filled = [], 0
    for metadata, vectors in source.batches(True):
        exact.add(vectors, np.arange(filled, filled + len(vectors)))
        ids.append(metadata["image_id"])
        filled += len(vectors)
    every_id = pl.concat(ids).to_numpy()
    k = min(SELF_CHECK_K, filled - 1)
    truth, kth = [], np.zeros(len(queries), np.float32)
    for q, own in enumerate(query_ids):
        others = [(p, s) for p, s in zip(exact.positions[q], exact.similarities[q]) if p >= 0 and every_id[p] != own][:k]
        truth.append({every_id[p] for p, _ in others})
        kth[q] = others[-1][1] if others else 1.0
    kind = f"lancedb {index_type(table) or 'flat'}"
    best: RecallCheck | None = None
    for nprobes, refine in settings:
        # each query is a row of the index: one more result, its own row dropped, as if it were not there
        found = (table.search(queries).distance_type(DISTANCE).limit(k + 1).nprobes(nprobes).refine_factor(refine)
                 .select(["image_id", "_distance"]).to_arrow())
        frame = pl.from_arrow(found)
        if "query_index" not in frame.columns:
            frame = frame.with_columns(pl.lit(0).alias("query_index"))
        own = pl.DataFrame({"query_index": np.arange(len(query_ids), dtype=np.int32), "own": query_ids}).cast({"query_index": frame["query_index"].dtype})
        frame = (frame.join(own, on="query_index").filter(pl.col("image_id") != pl.col("own")).sort("query_index", "_distance")
                 .group_by("query_index", maintain_order=True).head(k))
        hits = 0
        for q, group in frame.group_by("query_index"):
            similarities = 1.0 - group["_distance"].to_numpy()
            hits += sum(i in truth[q[0]] or s >= kth[q[0]] - TIE_TOLERANCE for i, s in zip(group["image_id"].to_list(), similarities))
        recall = round(float(hits) / max(len(queries) * k, 1), 4)
        check = RecallCheck(kind=kind, version=int(table.version), rows=filled, queries=len(queries), k=k, recall=recall,
                            setting=f"nprobes {nprobes}, refine {refine}", nprobes=nprobes, refine_factor=refine)
        logger.info("%s index, %s: recall@%d %.4f", kind, check.setting, k, recall)
        if best is None or recall > best.recall:
            best = check
        if check.ok:
            best = check
            break
    if not best.ok:
        logger.warning("%s", best.advice())
    write_check(disk_check_file(folder), best)
    return best
