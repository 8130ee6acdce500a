"""Cost of the recall self-check beside the cost of building the index it checks, in one process.

Builds each in-memory index kind over seeded clustered vectors (``benchmarks/search.py``'s generator), then
times ``self_check`` alone three times; prints build + check seconds, the median check seconds and the
recall@10 the check measured.

    python benchmarks/recall_check.py --rows 100000
    python benchmarks/recall_check.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from search import clustered_blocks  # noqa: E402 - the benchmark's own generator

from engine.search.config import MemoryIndexConfig  # noqa: E402
from engine.search.memory_index import LoadedTable, create_memory_index, list_memory_indexes, self_check  # noqa: E402

REPEATS = 3


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="5,000 rows x 64: checks that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.dim, args.clusters = 5000, 64, 20
    vectors = np.concatenate(list(clustered_blocks(args.rows, args.dim, args.clusters, seed=0)))
    table = LoadedTable(version=1, vectors=vectors, metadata=pl.DataFrame({"image_id": [str(i) for i in range(args.rows)]}))
    rows = []
    for kind in list_memory_indexes():
        start = time.perf_counter()
        index = create_memory_index(kind, table, MemoryIndexConfig(), None)
        built = time.perf_counter() - start
        checks = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            check = self_check(index, table)
            checks.append(time.perf_counter() - start)
        rows.append({"index": kind, "rows": args.rows, "dim": args.dim, "build_and_check_s": round(built, 2),
                     "check_s_median": round(statistics.median(checks), 2), "recall@10": check.recall})
        print(rows[-1], flush=True)
    frame = pl.DataFrame(rows)
    print(frame)
    return frame


if __name__ == "__main__":
    main()
