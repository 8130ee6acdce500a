"""LanceDB's ANN index of an embeddings table: built once a table is large enough, exact scan below that.

Sized from the table (LanceDB's guidance): ``num_sub_vectors = dim / 8`` (PQ sub-vectors of 8 dimensions;
dim/16 gave recall@10 0.54 at 1M x 1280 even with refine 50) and ``num_partitions = sqrt(rows)``. The index
type is ``IVF_PQ`` by default or ``IVF_HNSW_SQ``; which recall and latency each gives at 1M is measured by
``benchmarks/search.py``. The search layer measures the built index and picks its refine factor
(:mod:`engine.search.disk_index`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

from engine.core.errors import InvalidRequestError

logger = logging.getLogger(__name__)

# Vectors are L2-normalised; cosine distance = 1 - inner product, the same as FAISS re-ranking uses.
DISTANCE = "cosine"
INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ")
DIMS_PER_SUB_VECTOR = 8


@dataclass(frozen=True)
class IndexConfig:
    """When and how to build the ANN index of an embeddings table."""

    min_rows: int = 50_000  # below this an exact scan is fast enough and loses nothing
    index_type: str = "IVF_PQ"
    num_partitions: int | None = None  # None: about sqrt(rows)
    num_sub_vectors: int | None = None  # IVF_PQ; None: dim / 8 (the largest divisor of dim up to that)


def sub_vectors(dim: int, wanted: int | None) -> int:
    """PQ sub-vectors for ``dim``: ``wanted`` or dim / 8, lowered to a divisor of dim."""
    target = wanted or max(1, dim // DIMS_PER_SUB_VECTOR)
    return max(d for d in range(1, target + 1) if dim % d == 0)


def partitions(rows: int, wanted: int | None) -> int:
    return wanted or max(1, int(math.sqrt(rows)))


def has_vector_index(table) -> bool:
    """Whether the table's ``vector`` column has an ANN index."""
    return index_type(table) is not None


def index_type(table) -> str | None:
    """The type of the ``vector`` column's ANN index (``IVF_PQ``, ...), or None without one."""
    for index in table.list_indices():
        if "vector" in index.columns:
            # LanceDB lists "IvfPq" for the IVF_PQ it was asked for
            return re.sub(r"(?<!^)(?=[A-Z])", "_", str(index.index_type)).upper()
    return None


def ensure_index(table, config: IndexConfig = IndexConfig()) -> bool:
    """Build the ANN index once the table has ``min_rows`` rows; True when one was built now."""
    if config.index_type not in INDEX_TYPES:
        raise InvalidRequestError(f"unknown index type {config.index_type!r}; choose one of {list(INDEX_TYPES)}")
    if has_vector_index(table):
        return False
    rows = table.count_rows()
    if rows < config.min_rows:
        logger.info("%d rows < %d: exact scan, no ANN index", rows, config.min_rows)
        return False
    dim = table.schema.field("vector").type.list_size
    options = {"num_partitions": partitions(rows, config.num_partitions)}
    if config.index_type == "IVF_PQ":
        options["num_sub_vectors"] = sub_vectors(dim, config.num_sub_vectors)
    logger.info("building %s index: %d rows, %s", config.index_type, rows, options)
    table.create_index(metric=DISTANCE, vector_column_name="vector", index_type=config.index_type, **options)
    return True
