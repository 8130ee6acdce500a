"""A saved HNSW graph read back by a new process that then follows appended rows, side by side: the graph saved
whole (the earlier format: FAISS reads its vectors into an allocation of exactly their size, so the first rows it
follows copy all of them) against the graph saved with its vectors beside it (read into a storage allocated with
growth headroom). Each reader runs in a fresh process; columns: seconds to load, seconds to follow, peak RSS.

    python benchmarks/graph_reload.py --rows 200000 --dim 1280      # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from benchmarks.common import write_and_show
from engine.search.memory_index import CODES_SUFFIX, GRAPH_SUFFIX, SCAN_BATCH_ROWS, create_memory_index

FORMATS = ("whole", "split")
APPEND_SHARE = 0.01  # rows appended, as a share of the table (what benchmarks/search.py's append contender adds)
GRAPH_NAME = f"v1-hnsw-m32{GRAPH_SUFFIX}"


def vectors_file(work: Path, rows: int, dim: int, seed: int = 0) -> np.memmap:
    """Seeded clustered unit vectors in a raw float32 file, written a block at a time."""
    path = work / f"vectors-{rows}x{dim}.f32"
    if not path.exists():
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(1000, dim)).astype(np.float32)
        out = np.memmap(path, np.float32, "w+", shape=(rows, dim))
        for start in range(0, rows, 50_000):
            block = centres[rng.integers(0, len(centres), min(50_000, rows - start))]
            block = block + 0.5 * rng.normal(size=block.shape).astype(np.float32)
            out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        out.flush()
    return np.memmap(path, np.float32, "r", shape=(rows, dim))


@dataclass(frozen=True)
class FileTable:
    """The first ``rows`` of the vectors file as a table version, streamed in the batches of a LanceDB scan
    (a memory map would count every page it touched in the reader's RSS)."""

    path: Path
    rows: int
    dim: int
    version: int

    def count(self) -> int:
        return self.rows

    @property
    def metadata(self) -> pl.DataFrame:
        return pl.DataFrame({"image_id": [f"{i:08d}" for i in range(self.rows)]})

    def _read(self, start: int, count: int) -> np.ndarray:
        return np.fromfile(self.path, np.float32, count=count * self.dim, offset=start * self.dim * 4).reshape(count, self.dim)

    def take(self, offsets: np.ndarray) -> tuple[list[str], np.ndarray]:
        return [f"{i:08d}" for i in offsets], np.stack([self._read(int(i), 1)[0] for i in offsets]) if len(offsets) else np.zeros((0, self.dim), np.float32)

    def batches(self, with_vectors: bool = True) -> Iterator[tuple[pl.DataFrame, np.ndarray | None]]:
        metadata = self.metadata
        for start in range(0, max(self.rows, 1), SCAN_BATCH_ROWS):
            count = min(SCAN_BATCH_ROWS, self.rows - start)
            yield metadata[start : start + count], self._read(start, count) if with_vectors else None


def table(vectors: np.ndarray, rows: int, version: int) -> FileTable:
    return FileTable(Path(vectors.filename), rows, vectors.shape[1], version)


def child(args: argparse.Namespace) -> None:
    vectors = vectors_file(args.work, args.total, args.dim)
    started = time.perf_counter()
    index = create_memory_index("hnsw", table(vectors, args.rows, 1), cache_file=args.work / args.child / GRAPH_NAME)
    loaded_s = time.perf_counter() - started
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    followed = index.refresh(table(vectors, args.total, 2))
    follow_s = time.perf_counter() - started
    assert followed is not None and followed.rows == args.total
    print(json.dumps({"format": args.child, "load_s": round(loaded_s, 2), "follow_s": round(follow_s, 2), "capacity": index.capacity,
                      "peak_rss_after_load_mb": rss_loaded // 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lookalike-graph-reload"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/graph_reload.csv"))
    parser.add_argument("--child", choices=FORMATS, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.total = args.total or args.rows + max(1, int(args.rows * APPEND_SHARE))
    if args.child:
        child(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    vectors = vectors_file(args.work, args.total, args.dim)
    split = args.work / "split"
    if not (split / GRAPH_NAME).exists():
        started = time.perf_counter()
        built = create_memory_index("hnsw", table(vectors, args.rows, 1), cache_file=split / GRAPH_NAME)
        print(f"built the graph of {args.rows} x {args.dim} in {time.perf_counter() - started:.0f} s", flush=True)
        whole = args.work / "whole"
        shutil.rmtree(whole, ignore_errors=True)
        shutil.copytree(split, whole)
        (whole / GRAPH_NAME.replace(GRAPH_SUFFIX, CODES_SUFFIX)).unlink()
        faiss.write_index(built.index, str(whole / GRAPH_NAME))  # as releases before the split format saved it
        del built
    rows = []
    for name in FORMATS:
        done = subprocess.run([sys.executable, "-m", "benchmarks.graph_reload", "--rows", str(args.rows), "--dim", str(args.dim),
                               "--work", str(args.work), "--child", name, "--total", str(args.total)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    frame = pl.DataFrame(rows).with_columns((pl.col("peak_rss_mb") / rows[0]["peak_rss_mb"]).round(3).alias("peak_ratio_to_whole"),
                                            pl.lit(args.rows).alias("rows"), pl.lit(args.total - args.rows).alias("appended"),
                                            pl.lit(platform.node()).alias("host"))
    write_and_show(frame, args.out)


if __name__ == "__main__":
    main()
