"""ANN index of an embeddings table: built once a table is large enough, exact scan below that."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Vectors are L2-normalised; cosine distance = 1 - inner product, the same as FAISS re-ranking uses.
DISTANCE = "cosine"


@dataclass(frozen=True)
class IndexConfig:
    """When and how to build the IVF-PQ index of an embeddings table."""

    min_rows: int = 50_000  # below this an exact scan is fast enough and loses nothing
    num_partitions: int | None = None  # None: about sqrt(rows)
    num_sub_vectors: int | None = None  # None: dim / 16 (the largest divisor of dim up to that)


def _sub_vectors(dim: int, wanted: int | None) -> int:
    target = wanted or max(1, dim // 16)
    return max(d for d in range(1, target + 1) if dim % d == 0)


def has_vector_index(table) -> bool:
    """Whether the table's ``vector`` column has an ANN index."""
    return any("vector" in index.columns for index in table.list_indices())


def ensure_index(table, config: IndexConfig = IndexConfig()) -> bool:
    """Build the ANN index once the table has ``min_rows`` rows; True when one exists afterwards."""
    if has_vector_index(table):
        return True
    rows = table.count_rows()
    if rows < config.min_rows:
        logger.info("%d rows < %d: exact scan, no ANN index", rows, config.min_rows)
        return False
    dim = table.schema.field("vector").type.list_size
    partitions = config.num_partitions or max(1, int(math.sqrt(rows)))
    sub_vectors = _sub_vectors(dim, config.num_sub_vectors)
    logger.info("building IVF_PQ index: %d rows, %d partitions, %d sub-vectors", rows, partitions, sub_vectors)
    table.create_index(
        metric=DISTANCE,
        vector_column_name="vector",
        index_type="IVF_PQ",
        num_partitions=partitions,
        num_sub_vectors=sub_vectors,
    )
    return True
