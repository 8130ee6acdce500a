"""Search side by side on one synthetic catalogue, in one process:

* exact brute force (FAISS flat, inner product on normalised vectors): the ground truth;
* LanceDB alone (IVF-PQ index, no refinement), LanceDB with ``refine_factor``;
* FAISS HNSW alone;
* Lookalike's search on disk (LanceDB IVF-PQ candidates with refinement, exact FAISS re-ranking; what a
  searcher does when the vectors exceed its memory budget) and in memory (``MemoryIndexConfig(kind=...)``:
  an HNSW graph or exact flat vectors in RAM, the same FAISS re-ranking and metadata columns).

Vectors are seeded, clustered and L2-normalised, dim 1280 (the default encoder); the ``width`` column
holds ``row % 1000`` so that ``width < 500 / 50 / 5`` select 50%, 5% and 0.5% of the rows. Prints
recall@10 against exact, p50/p99 latency of single queries, throughput of one batch of queries, index
build time and index size; then, per selectivity, how many of the k results each filtered query gets
and its recall@10 against the exact filtered answer. Writes benchmarks/results/search_<rows>.csv.

    python benchmarks/search.py --rows 100000
    python benchmarks/search.py --quick          # a smoke run (make test runs it; never asserts timings)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import polars as pl

import schemas
from engine.core.clock import utc_now
from engine.search.config import MemoryIndexConfig, SearchConfig
from engine.search.searcher import Searcher
from engine.storage.database import Database, ModelRecord
from engine.storage.index import DISTANCE, IndexConfig, ensure_index

SELECTIVITIES = {"50%": "width < 500", "5%": "width < 50", "0.5%": "width < 5"}


def clustered(n: int, dim: int, clusters: int, seed: int, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = centres if centres is not None else rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):  # in chunks: bounded temporary memory
        size = min(50_000, n - start)
        block = centres[rng.integers(0, clusters, size)] + 0.6 * rng.normal(size=(size, dim)).astype(np.float32)
        out[start : start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, centres


def fill_database(db: Database, vectors: np.ndarray) -> ModelRecord:
    dim = vectors.shape[1]
    model = ModelRecord(id="bench", encoder="synthetic", architecture="none", weights_source="seeded", weights_sha256="0" * 64, dim=dim,
                        preprocessing="{}", fingerprint=f"bench-{dim}", embeddings_table=schemas.embeddings_table_name("bench"), created_at=utc_now())
    db.add_model(model)
    now = utc_now()
    for start in range(0, len(vectors), 20_000):
        rows = [{"id": f"{i:09d}", "path": f"/bench/{i:09d}.jpg", "label": f"c{i % 100}", "labels": [f"c{i % 100}"], "split": "train",
                 "width": i % 1000, "height": 100, "channels": 3, "mode": "RGB", "format": "JPEG", "bytes": 1, "source": "/bench", "ingested_at": now}
                for i in range(start, min(start + 20_000, len(vectors)))]
        db.write_embedded(model, rows, vectors[start : start + len(rows)])
    return model


def recall_at_k(found: list[list[int]], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def rss_gb() -> float:
    """Current resident memory of this process (not the peak), GB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=100, help="single queries timed for the latency percentiles")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobes", type=int, default=20)
    parser.add_argument("--refine", type=int, default=SearchConfig.refine_factor, help="refine_factor of LanceDB + refine and Lookalike on disk")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--memory-budget-gb", type=float, default=MemoryIndexConfig.max_bytes / 2**30,
                        help="MemoryIndexConfig.max_bytes for Lookalike's searchers (1M x 1280 needs about 5)")
    parser.add_argument("--filtered-queries", type=int, default=200, help="queries per selectivity for filtered recall")
    parser.add_argument("--quick", action="store_true", help="2,000 rows x 64, 50 queries: checks that everything runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.dim, args.clusters, args.queries, args.single = 2000, 64, 20, 50, 10
    k = args.k

    vectors, centres = clustered(args.rows, args.dim, args.clusters, seed=0)
    queries, _ = clustered(args.queries, args.dim, args.clusters, seed=1, centres=centres)
    work = Path(tempfile.mkdtemp(prefix="lookalike-search-"))
    db = Database(work / "db")
    start = time.perf_counter()
    model = fill_database(db, vectors)
    load_s = time.perf_counter() - start
    print(f"loaded into LanceDB in {load_s:.1f}s; process RSS {rss_gb():.2f} GB", flush=True)
    table = db.embeddings(model)
    ids = np.arange(args.rows)

    # ground truth
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(vectors)
    _, exact = flat.search(queries, k)

    rows = []

    def record(name: str, build_s: float, size: int, search_one, search_batch, found: list[list[int]]) -> None:
        single = timed(lambda: None, 0)
        for q in queries[: args.single]:
            t = time.perf_counter()
            search_one(q)
            single.append(time.perf_counter() - t)
        batch_s = statistics.median(timed(search_batch, 3))
        rows.append({"contender": name, "recall@10": round(recall_at_k(found, exact, k), 4),
                     "p50_ms": round(1000 * statistics.median(single), 2), "p99_ms": round(1000 * float(np.quantile(single, 0.99)), 2),
                     "batch_qps": round(args.queries / batch_s, 1), "build_s": round(build_s, 1), "index_mb": round(size / 2**20, 1),
                     "process_rss_gb": round(rss_gb(), 2)})
        print(rows[-1], flush=True)

    record("exact (FAISS flat)", 0.0, args.rows * args.dim * 4, lambda q: flat.search(q[None], k), lambda: flat.search(queries, k), exact.tolist())  # noqa: F821 - called before the del below
    del flat  # each copy of the vectors is 4.9 GB at 1M x 1280: hold as few at once as possible

    start = time.perf_counter()
    ensure_index(table, IndexConfig(min_rows=0))
    build_s = time.perf_counter() - start
    index_bytes = dir_size(work / "db" / f"{model.embeddings_table}.lance" / "_indices")

    def lance(q: np.ndarray, refine: int | None):
        query = table.search(q).distance_type(DISTANCE).nprobes(args.nprobes).limit(k).select(["image_id", "_distance"])
        return (query.refine_factor(refine) if refine else query).to_arrow()

    def lance_ids(result) -> list[list[int]]:
        frame = pl.from_arrow(result)
        if "query_index" not in frame.columns:
            frame = frame.with_columns(pl.lit(0).alias("query_index"))
        grouped = frame.group_by("query_index", maintain_order=True).agg(pl.col("image_id")).sort("query_index")
        return [[int(i) for i in g] for g in grouped["image_id"]]

    for name, refine in (("LanceDB IVF-PQ alone", None), (f"LanceDB IVF-PQ + refine_factor {args.refine}", args.refine)):
        found = lance_ids(lance(queries, refine))
        record(name, build_s, index_bytes, lambda q, r=refine: lance(q, r), lambda r=refine: lance(queries, r), found)

    start = time.perf_counter()
    memory_defaults = MemoryIndexConfig()  # the same graph parameters Lookalike's in-memory HNSW uses
    hnsw = faiss.IndexHNSWFlat(args.dim, memory_defaults.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = memory_defaults.hnsw_ef_construction
    hnsw.add(vectors)
    hnsw.hnsw.efSearch = memory_defaults.hnsw_ef_search
    hnsw_build = time.perf_counter() - start
    _, hnsw_found = hnsw.search(queries, k)
    record(f"FAISS HNSW{memory_defaults.hnsw_m} alone (efSearch {memory_defaults.hnsw_ef_search})", hnsw_build, faiss.serialize_index(hnsw).nbytes, lambda q: hnsw.search(q[None], k),  # noqa: F821 - called before the del below
           lambda: hnsw.search(queries, k), hnsw_found.tolist())  # noqa: F821
    del hnsw

    def lookalike_ids(frame: pl.DataFrame) -> list[list[int]]:
        grouped = frame.group_by("query", maintain_order=True).agg(pl.col("image_id")).sort("query")
        return [[int(i) for i in g] for g in grouped["image_id"]]

    budget = dataclasses.replace(MemoryIndexConfig(), max_bytes=int(args.memory_budget_gb * 2**30))
    base = SearchConfig(k=k, nprobes=args.nprobes, refine_factor=args.refine, memory_index=budget)
    searcher = Searcher(db, model, dataclasses.replace(base, memory_index=MemoryIndexConfig(kind="off")))
    record("Lookalike on disk (IVF-PQ + refine + FAISS re-rank)", build_s, index_bytes, lambda q: searcher.search_vectors(q, k),
           lambda: searcher.search_vectors(queries, k), lookalike_ids(searcher.search_vectors(queries, k)))
    for kind in ("hnsw", "flat"):
        # the HNSW graph is saved (as the default does), so the default searcher below loads it
        in_memory = Searcher(db, model, dataclasses.replace(base, memory_index=dataclasses.replace(budget, kind=kind, persist=kind == "hnsw")))
        start = time.perf_counter()
        memory = in_memory.memory_index()  # loads the vectors from LanceDB and builds the FAISS index
        memory_build = time.perf_counter() - start
        size = faiss.serialize_index(memory.index).nbytes if kind == "hnsw" else memory.loaded.vectors.nbytes
        record(f"Lookalike in memory ({kind} + FAISS re-rank)", memory_build, size, lambda q, s=in_memory: s.search_vectors(q, k),
               lambda s=in_memory: s.search_vectors(queries, k), lookalike_ids(in_memory.search_vectors(queries, k)))
        del in_memory, memory
    searcher = Searcher(db, model, base)  # the default: in memory while the vectors fit the budget
    on_disk = Searcher(db, model, dataclasses.replace(base, memory_index=MemoryIndexConfig(kind="off")))

    frame = pl.DataFrame(rows)
    filtered_rows = []
    for label, where in SELECTIVITIES.items():
        mask = (ids % 1000) < {"50%": 500, "5%": 50, "0.5%": 5}[label]
        subset = np.flatnonzero(mask)
        sub = faiss.IndexFlatIP(args.dim)
        sub.add(vectors[subset])
        filtered_queries = queries[: args.filtered_queries]
        _, local = sub.search(filtered_queries, k)
        truth = subset[local]
        memory = searcher.memory_index()
        if memory is not None:
            memory.filter_rows.clear()  # the first query with a new filter pays LanceDB's scalar scan
        start = time.perf_counter()
        searcher.search_vectors(filtered_queries[0], k, where=where)
        first_ms = 1000 * (time.perf_counter() - start)
        result = searcher.search_vectors(filtered_queries, k, where=where)
        counts = result.group_by("query").len()["len"]
        found = lookalike_ids(result)
        single = []
        for q in filtered_queries[: args.single // 5 or 1]:  # fewer: a filtered query is an exact scan
            t = time.perf_counter()
            searcher.search_vectors(q, k, where=where)
            single.append(time.perf_counter() - t)
        disk = []
        for q in filtered_queries[:5]:
            t = time.perf_counter()
            on_disk.search_vectors(q, k, where=where)
            disk.append(time.perf_counter() - t)
        disk_found = lookalike_ids(on_disk.search_vectors(filtered_queries, k, where=where))
        del sub
        filtered_rows.append({"selectivity": label, "where": where, "matching_rows": int(mask.sum()),
                              "queries_with_k_results": f"{int((counts == k).sum())}/{len(filtered_queries)}", "recall@10": round(recall_at_k(found, truth, k), 4),
                              "first_query_ms": round(first_ms, 2), "p50_ms_same_filter": round(1000 * statistics.median(single), 2),
                              "path": "in memory" if memory is not None else "LanceDB",
                              "on_disk_p50_ms": round(1000 * statistics.median(disk), 2), "on_disk_recall@10": round(recall_at_k(disk_found, truth, k), 4)})
        print(filtered_rows[-1], flush=True)
    out = args.out or Path(f"benchmarks/results/search_{'quick' if args.quick else args.rows}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.with_columns(pl.lit(args.rows).alias("rows"), pl.lit(args.dim).alias("dim"), pl.lit(platform.machine()).alias("machine"),
                       pl.lit(os.cpu_count()).alias("cpus")).write_csv(out)
    pl.DataFrame(filtered_rows).write_csv(out.with_name(out.stem + "_filtered.csv"))
    with pl.Config(tbl_rows=20, tbl_cols=-1, tbl_width_chars=220, fmt_str_lengths=60):
        print(f"{args.rows} rows x {args.dim}, {args.queries} queries, k={k}, nprobes {args.nprobes}; loading into LanceDB took {load_s:.1f}s")
        print(frame)
        print(pl.DataFrame(filtered_rows))
    return frame, pl.DataFrame(filtered_rows)


if __name__ == "__main__":
    main()
