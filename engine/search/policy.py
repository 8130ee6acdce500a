"""Which index answers a table's queries, chosen from its rows, its vectors' width and the memory budget.

No knob is needed: ``choose_memory_index`` picks the first kind that fits ``MemoryIndexConfig.max_bytes``
(a quarter of the machine's memory unless set), in this order:

========== ======================================= ============================================ =========================
kind       when                                    bytes per row (dim 1280, M 32)                answers
========== ======================================= ============================================ =========================
flat       rows < ``exact_rows`` (50k)             4 dim (5,120)                                exact
hnsw       full-precision vectors + graph fit      4 dim + 8 M x ~1.05 graph links (~5,390)     recall@10 ~0.999
hnsw_fp16  only half-precision vectors fit         2 dim + graph links (~2,830)                 recall@10 ~0.999, distances within 1e-3
(ivf)      a graph checked below 0.95 at any       4 dim + PQ codes + ids (~5,488)              IVF-PQ fast-scan, exact re-rank;
           efSearch (near-copies), if it fits                                                   nprobe and k_factor by its check
(none)     not even that fits                      LanceDB's IVF index on disk                  refine chosen by its recall check
========== ======================================= ============================================ =========================

At 1M x 1280 that is 5.4 GB for ``hnsw`` and 2.8 GB for ``hnsw_fp16`` (FAISS's guideline: d*4 + M*8 bytes a
vector for HNSW); with the default budget on a 24 GB machine (6 GB) ``hnsw`` holds up to about 1.1M rows of
1280-d and ``hnsw_fp16`` about 2.2M. Measured trade-offs: ``docs/benchmarks.md`` (``benchmarks/search.py``).
"""

from __future__ import annotations

import logging
import os

from engine.search.config import AUTO, MemoryIndexConfig

logger = logging.getLogger(__name__)

MEMORY_SHARE = 4  # the default budget is 1/MEMORY_SHARE of physical memory
FLOAT32_BYTES = 4
FLOAT16_BYTES = 2
LINK_BYTES = 4  # a graph link is an int32 node id
# HNSW level 0 has 2M links a node; each upper level M more, reached by 1/M of the nodes (geometric): 2M + M/(M-1)
UPPER_LEVEL_SHARE = 1.05
METADATA_BYTES_PER_ROW = 200  # ids, paths, labels and metadata columns held beside the vectors (a rough mean)

FULL_PRECISION = ("flat", "hnsw", "ivf")
GRAPHS = ("hnsw", "hnsw_fp16")
APPROXIMATE = (*GRAPHS, "ivf")  # indexes that are checked, saved beside the database and follow writes in place
POLICY_ORDER = ("hnsw", "hnsw_fp16")  # above exact_rows: the first that fits
# A graph whose check cannot reach MIN_RECALL at its largest efSearch is replaced by this when it fits (data with
# many near-copies: 1M real-derived rows, HNSW32 0.89 at any efSearch, IVF-PQ fast-scan + exact refine 0.9985)
FALLBACK = "ivf"
PQ_CODE_BYTES_PER_DIM = 0.125  # 4-bit codes of 4-dimension sub-vectors (the fast-scan layout)
ID_BYTES = 8


def memory_budget(config: MemoryIndexConfig) -> int:
    """Bytes an in-memory index may take: ``config.max_bytes``, or a quarter of physical memory."""
    if config.max_bytes is not None:
        return config.max_bytes
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MEMORY_SHARE


def vector_bytes(kind: str) -> int:
    """Bytes one vector component takes in an index of ``kind``."""
    return FLOAT16_BYTES if kind == "hnsw_fp16" else FLOAT32_BYTES


def index_bytes(kind: str, rows: int, dim: int, config: MemoryIndexConfig) -> int:
    """RAM an index of ``kind`` over ``rows`` x ``dim`` vectors takes, metadata included (an estimate
    within a few per cent of what FAISS allocates)."""
    per_row = dim * vector_bytes(kind) + METADATA_BYTES_PER_ROW
    if kind in GRAPHS:
        per_row += int(2 * config.hnsw_m * LINK_BYTES * UPPER_LEVEL_SHARE)
    if kind == "ivf":  # PQ codes and ids in the lists, full vectors for the exact refine
        per_row += int(dim * PQ_CODE_BYTES_PER_DIM) + ID_BYTES
    return rows * per_row


def fallback_for(kind: str, rows: int, dim: int, config: MemoryIndexConfig) -> str | None:
    """What replaces a graph the policy chose if its check falls short (None: keep it, with its warning)."""
    if config.kind != AUTO or kind not in GRAPHS or index_bytes(FALLBACK, rows, dim, config) > memory_budget(config):
        return None
    return FALLBACK


def choose_memory_index(rows: int, dim: int, config: MemoryIndexConfig) -> str | None:
    """The kind of in-memory index for a table, or None when its queries go to LanceDB on disk."""
    if config.kind == "off":
        return None
    budget = memory_budget(config)
    if config.kind != AUTO:
        fits = index_bytes(config.kind, rows, dim, config) <= budget
        if not fits:
            logger.info("a %s index of %d x %d needs %d bytes, over the memory budget of %d: searching on disk",
                        config.kind, rows, dim, index_bytes(config.kind, rows, dim, config), budget)
        return config.kind if fits else None
    if rows < config.exact_rows and index_bytes("flat", rows, dim, config) <= budget:
        return "flat"
    for kind in POLICY_ORDER:
        if index_bytes(kind, rows, dim, config) <= budget:
            return kind
    logger.info("%d vectors of dim %d fit no in-memory index within %d bytes: searching on disk", rows, dim, budget)
    return None
