"""Search contenders side by side on one catalogue, each in a fresh process, memory-safe up to 1M x 1280.

Data (``--data``): ``clustered`` (seeded clustered normalised vectors, dim 1280) or ``real`` (real-derived:
the MIT-scene and Fashion-MNIST embeddings of the default encoder, ``benchmarks/tools/real_embeddings.py``,
each row a real embedding moved along the difference of two others of the same set, so the table keeps the
shape of real image embeddings). The ``width`` column holds ``row % 1000``: ``width < 500 / 50 / 5`` select
50%, 5% and 0.5% of the rows.

Everything is prepared once under ``--work`` and reused: the vectors as a raw float32 file written in chunks,
the queries, the exact answers (computed chunk by chunk, unfiltered and per filter) and the LanceDB database.
Each contender then runs in its own process (``--child NAME``), so its peak RSS is its own and no process ever
holds two copies of the vectors. Columns: recall@10 against exact, p50/p99 of single queries, queries/s of one
batch of all queries, build seconds, peak RSS of the process, bytes on disk; Lookalike's default also answers
the three filters (rows with k results, recall against the exact filtered answer, latency), and
``lookalike-append`` appends 1% more rows and times how the default index follows them.

    python benchmarks/search.py --rows 1000000 --data clustered
    python benchmarks/search.py --rows 1000000 --data real
    python benchmarks/search.py --rows 100000 --contenders exact,faiss-hnsw,lookalike
    python benchmarks/search.py --quick          # a smoke run (make test runs it; never asserts timings)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SELECTIVITIES = {"50%": 500, "5%": 50, "0.5%": 5}  # width < value
WIDTHS = 1000
BLOCK_ROWS = 50_000  # rows generated, read and written at a time: bounded memory at any size
DERIVED_STEP = 0.3  # a real-derived row: a real embedding plus this much of the difference of two others
REAL_CACHE = Path.home() / ".cache" / "lookalike" / "bench"
RESULTS = Path(__file__).parent / "results"
EF_SEARCHES = (128, 256, 512)
IVF_SETTINGS = ((32, 20), (64, 100), (128, 200))  # FAISS IVF-PQ fast-scan: (nprobe, k_factor)  # FAISS graphs are measured at each, Lookalike's graph at the efSearch its check chose
QUICK = {"rows": 2000, "dim": 64, "clusters": 20, "queries": 50, "single": 10, "filtered_queries": 50, "exact_rows": 1000}


# ---- data -------------------------------------------------------------------------------------------


def clustered_blocks(n: int, dim: int, clusters: int, seed: int, centre_seed: int = 0) -> Iterator[np.ndarray]:
    centres = np.random.default_rng(centre_seed).normal(size=(clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, BLOCK_ROWS):
        size = min(BLOCK_ROWS, n - start)
        block = centres[rng.integers(0, clusters, size)] + 0.6 * rng.normal(size=(size, dim)).astype(np.float32)
        yield block / np.linalg.norm(block, axis=1, keepdims=True)


def real_sources() -> list[np.ndarray]:
    paths = [REAL_CACHE / "mit.npy", REAL_CACHE / "fashion.npy"]
    if not all(p.exists() for p in paths):
        raise SystemExit(f"no real embeddings in {REAL_CACHE}: run python benchmarks/tools/real_embeddings.py first")
    return [np.load(p) for p in paths]


def derived_blocks(n: int, sources: list[np.ndarray], seed: int) -> Iterator[np.ndarray]:
    """Rows alternate between the source sets; each is a real embedding moved along the difference of two
    others of its own set (so it stays in the span of real embeddings)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, BLOCK_ROWS):
        size = min(BLOCK_ROWS, n - start)
        block = np.empty((size, sources[0].shape[1]), np.float32)
        which = (np.arange(start, start + size) % len(sources))
        for s, source in enumerate(sources):
            rows = np.flatnonzero(which == s)
            picks = rng.integers(len(source), size=(3, len(rows)))
            block[rows] = source[picks[0]] + DERIVED_STEP * (source[picks[1]] - source[picks[2]])
        yield block / np.linalg.norm(block, axis=1, keepdims=True)


def blocks_for(args: argparse.Namespace, n: int, seed: int) -> Iterator[np.ndarray]:
    if args.data == "real":
        return derived_blocks(n, real_sources(), seed)
    return clustered_blocks(n, args.dim, args.clusters, seed)


def read_blocks(work: Path, dim: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, block) of the prepared vectors, read without a memory map (its pages would count as RSS)."""
    with open(work / "vectors.f32", "rb") as f:
        start = 0
        while True:
            block = np.fromfile(f, dtype=np.float32, count=BLOCK_ROWS * dim)
            if block.size == 0:
                return
            yield start, block.reshape(-1, dim)
            start += len(block) // dim


def sample_rows(work: Path, dim: int, rows: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of the prepared rows (for training quantisers)."""
    chosen = np.sort(np.random.default_rng(seed).choice(rows, size=min(size, rows), replace=False))
    out = np.empty((len(chosen), dim), np.float32)
    with open(work / "vectors.f32", "rb") as f:
        for i, r in enumerate(chosen):
            f.seek(int(r) * dim * 4)
            out[i] = np.fromfile(f, dtype=np.float32, count=dim)
    return out


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """Vectors, queries, exact answers and the LanceDB database under ``work`` (each step skipped when done)."""
    import faiss

    from engine.search.memory_index import ExactNeighbours

    work.mkdir(parents=True, exist_ok=True)
    meta_file = work / "prepared.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    wanted = {"rows": args.rows, "dim": args.dim, "data": args.data, "queries": args.queries, "clusters": args.clusters}
    if {k: meta.get(k) for k in wanted} != wanted:
        meta = dict(wanted)
    dim = args.dim
    if not meta.get("vectors"):
        started = time.perf_counter()
        with open(work / "vectors.f32", "wb") as f:
            for block in blocks_for(args, args.rows, seed=0):
                block.astype(np.float32).tofile(f)
        np.save(work / "queries.npy", np.concatenate(list(blocks_for(args, args.queries, seed=1))))
        meta.update(vectors=True, vectors_s=round(time.perf_counter() - started, 1), truth=False, db=False)
        meta_file.write_text(json.dumps(meta))
        print(f"vectors written in {meta['vectors_s']}s", flush=True)
    queries = np.load(work / "queries.npy")
    if not meta.get("truth"):
        started = time.perf_counter()
        exact = {"all": ExactNeighbours(queries, args.k)}
        exact.update({label: ExactNeighbours(queries[: args.filtered_queries], args.k) for label in SELECTIVITIES})
        for start, block in read_blocks(work, dim):
            positions = np.arange(start, start + len(block))
            exact["all"].add(block, positions)
            for label, below in SELECTIVITIES.items():
                mask = positions % WIDTHS < below
                exact[label].add(block[mask], positions[mask])
        for name, neighbours in exact.items():
            np.save(work / f"truth_{name.replace('%', 'pct')}.npy", neighbours.positions)
        meta.update(truth=True, truth_s=round(time.perf_counter() - started, 1))
        meta_file.write_text(json.dumps(meta))
        print(f"exact answers in {meta['truth_s']}s", flush=True)
    if not meta.get("db"):
        started = time.perf_counter()
        fill_database(work, dim)
        meta.update(db=True, db_s=round(time.perf_counter() - started, 1))
        meta_file.write_text(json.dumps(meta))
        print(f"LanceDB loaded in {meta['db_s']}s", flush=True)
    del faiss
    return meta


def open_database(work: Path):  # noqa: ANN201 - (Database, ModelRecord)
    from engine.storage.database import Database

    db = Database(work / "db")
    return db, db.resolve_model("bench")


def fill_database(work: Path, dim: int) -> None:
    import shutil

    import schemas
    from engine.core.clock import utc_now
    from engine.storage.database import Database, ModelRecord

    shutil.rmtree(work / "db", ignore_errors=True)
    db = Database(work / "db")
    model = ModelRecord(id="bench", encoder="synthetic", architecture="none", weights_source="seeded", weights_sha256="0" * 64, dim=dim,
                        preprocessing="{}", fingerprint=f"bench-{dim}", embeddings_table=schemas.embeddings_table_name("bench"), created_at=utc_now())
    db.add_model(model)
    for start, block in read_blocks(work, dim):
        db.write_embedded(model, bench_rows(start, len(block)), block)


def bench_rows(start: int, count: int, prefix: str = "") -> list[dict]:
    from engine.core.clock import utc_now

    now = utc_now()
    return [{"id": f"{prefix}{i:09d}", "path": f"/bench/{prefix}{i:09d}.jpg", "label": f"c{i % 100}", "labels": [f"c{i % 100}"], "split": "train",
             "width": i % WIDTHS, "height": 100, "channels": 3, "mode": "RGB", "format": "JPEG", "bytes": 1, "source": "/bench", "ingested_at": now}
            for i in range(start, start + count)]


# ---- measuring (in the child) ----------------------------------------------------------------------


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def latency(search_one: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[float, float]:
    times = []
    for q in queries:
        started = time.perf_counter()
        search_one(q)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times), 1000 * float(np.quantile(times, 0.99))


def throughput(search_batch: Callable[[], object], count: int) -> float:
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        search_batch()
        runs.append(time.perf_counter() - started)
        if runs[-1] > 5:  # slow contenders: one run is enough to see the order of magnitude
            break
    return count / statistics.median(runs)


def measure(ctx: Context, search: Callable[[np.ndarray], np.ndarray], build_s: float, disk: int, single: int | None = None,
            timed: Callable[[np.ndarray], object] | None = None, **extra) -> dict:
    """Recall of ``search`` (queries -> (n, k) row numbers); latency and throughput of ``timed`` (the contender's
    own call, without the benchmark's conversion to row numbers; ``search`` when None)."""
    found = search(ctx.queries)
    timed = timed or search
    p50, p99 = latency(lambda q: timed(q[None]), ctx.queries[: single or ctx.args.single])
    return {"recall@10": round(recall_at_k(found, ctx.truth, ctx.args.k), 4), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
            "batch_qps": round(throughput(lambda: timed(ctx.queries), len(ctx.queries)), 1), "build_s": round(build_s, 1),
            "disk_mb": round(disk / 2**20, 1), **extra}


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    work: Path
    queries: np.ndarray
    truth: np.ndarray


def faiss_add_all(ctx: Context, index) -> float:  # noqa: ANN001 - a FAISS index
    from engine.search.memory_index import reserve

    started = time.perf_counter()
    reserve(faiss_storage(index), ctx.args.rows)  # as Lookalike does: the peak RSS is the index, not its doubling buffer
    for _, block in read_blocks(ctx.work, ctx.args.dim):
        index.add(block)
    return time.perf_counter() - started


def faiss_storage(index):  # noqa: ANN001, ANN201 - the FAISS index that holds the codes of ``index``
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.refine_index)  # the exact vectors (its base holds small PQ codes)
    return index


def faiss_disk_bytes(ctx: Context, index) -> int:  # noqa: ANN001
    import faiss

    path = ctx.work / "contender.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


def faiss_contender(index, ctx: Context, train: bool = False, single: int | None = None, **extra) -> dict | list[dict]:  # noqa: ANN001
    """Build, then measure; a graph once per efSearch in ``EF_SEARCHES`` (to compare at equal recall)."""
    import faiss

    started = time.perf_counter()
    if train:
        index.train(sample_rows(ctx.work, ctx.args.dim, ctx.args.rows, ctx.args.train_rows, seed=3))
    build = time.perf_counter() - started + faiss_add_all(ctx, index)
    disk = faiss_disk_bytes(ctx, index)
    graph = getattr(faiss.downcast_index(index), "hnsw", None)
    if graph is None:
        return measure(ctx, lambda q: index.search(q, ctx.args.k)[1], build, disk, single, **extra)
    rows = []
    for ef in EF_SEARCHES:
        graph.efSearch = ef
        rows.append(measure(ctx, lambda q: index.search(q, ctx.args.k)[1], build, disk, single, **{**extra, "setting": f"{extra['setting']}, efSearch {ef}"}))
    return rows


def c_exact(ctx: Context) -> dict:
    import faiss

    return faiss_contender(faiss.IndexFlatIP(ctx.args.dim), ctx, single=max(5, ctx.args.single // 5))


def c_faiss_hnsw(ctx: Context) -> dict:
    import faiss

    from engine.search.config import MemoryIndexConfig

    config = MemoryIndexConfig()
    index = faiss.IndexHNSWFlat(ctx.args.dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction, index.hnsw.efSearch = config.hnsw_ef_construction, config.hnsw_ef_search
    return faiss_contender(index, ctx, setting=f"M {config.hnsw_m}")


def c_faiss_hnsw_sq8(ctx: Context) -> dict:
    import faiss

    from engine.search.config import MemoryIndexConfig

    config = MemoryIndexConfig()
    index = faiss.IndexHNSWSQ(ctx.args.dim, faiss.ScalarQuantizer.QT_8bit, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction, index.hnsw.efSearch = config.hnsw_ef_construction, config.hnsw_ef_search
    return faiss_contender(index, ctx, train=True, setting=f"SQ8, M {config.hnsw_m}")


def c_faiss_ivfpq_fastscan(ctx: Context) -> list[dict]:
    import faiss

    lists = max(16, int(np.sqrt(ctx.args.rows)))
    factory = f"IVF{lists},PQ{ctx.args.dim // 4}x4fs,RFlat"
    index = faiss.index_factory(ctx.args.dim, factory, faiss.METRIC_INNER_PRODUCT)
    started = time.perf_counter()
    index.train(sample_rows(ctx.work, ctx.args.dim, ctx.args.rows, ctx.args.train_rows, seed=3))
    build = time.perf_counter() - started + faiss_add_all(ctx, index)
    disk = faiss_disk_bytes(ctx, index)
    rows = []
    for nprobe, k_factor in IVF_SETTINGS:  # probed lists, and candidates re-scored exactly (k x k_factor)
        faiss.extract_index_ivf(index).nprobe = nprobe
        faiss.downcast_index(index).k_factor = k_factor
        rows.append(measure(ctx, lambda q: index.search(q, ctx.args.k)[1], build, disk, setting=f"{factory}, nprobe {nprobe}, k_factor {k_factor}"))
    return rows


def lance_contender(ctx: Context, index_config, settings: tuple[tuple[int, int], ...] | None) -> dict:  # noqa: ANN001
    """Build LanceDB's index (replacing the last one), choose its setting by the recall check (or the given
    one), and measure LanceDB alone with it."""
    from engine.search.disk_index import check_disk_index
    from engine.search.searcher import index_folder
    from engine.storage.index import DISTANCE, ensure_index

    db, model = open_database(ctx.work)
    table = db.embeddings(model)
    if table.list_indices():
        table.drop_index(table.list_indices()[0].name)
    before = dir_bytes(ctx.work / "db")
    started = time.perf_counter()
    ensure_index(table, dataclasses.replace(index_config, min_rows=0))
    build = time.perf_counter() - started
    disk = max(0, dir_bytes(ctx.work / "db") - before)
    started = time.perf_counter()
    check = check_disk_index(table, index_folder(db, model), **({"settings": settings} if settings else {}))
    check_s = time.perf_counter() - started

    def query(q: np.ndarray):  # noqa: ANN202 - LanceDB's answer
        return (table.search(q).distance_type(DISTANCE).nprobes(check.nprobes).refine_factor(check.refine_factor).limit(ctx.args.k)
                .select(["image_id", "_distance"]).to_arrow())

    return measure(ctx, lambda q: grouped_rows(pl.from_arrow(query(q)), "query_index", len(q), ctx.args.k), build, disk, timed=query,
                   setting=check.setting, self_check=check.recall, check_s=round(check_s, 1))


def grouped_rows(frame: pl.DataFrame, query_column: str, queries: int, k: int) -> np.ndarray:
    """(queries, k) row numbers from a frame of image ids ("000000042" -> 42); -1 pads."""
    if query_column not in frame.columns:
        frame = frame.with_columns(pl.lit(0).alias(query_column))
    out = np.full((queries, k), -1, np.int64)
    for (q,), group in frame.group_by(query_column):
        rows = np.array([int(i) for i in group["image_id"].to_list()][:k])
        out[q, : len(rows)] = rows
    return out


def c_lancedb_ivfpq_old(ctx: Context) -> dict:
    from engine.storage.index import IndexConfig

    # the previous release: dim/16 sub-vectors, nprobes 20, refine 50
    return lance_contender(ctx, IndexConfig(num_sub_vectors=max(1, ctx.args.dim // 16)), ((20, 50),))


def c_lancedb_ivf_hnsw_sq(ctx: Context) -> dict:
    from engine.storage.index import IndexConfig

    return lance_contender(ctx, IndexConfig(index_type="IVF_HNSW_SQ"), None)


def c_lancedb_ivfpq(ctx: Context) -> dict:
    from engine.storage.index import IndexConfig

    return lance_contender(ctx, IndexConfig(), None)  # Lookalike's default: dim/8 sub-vectors, setting from the check


def lookalike_searcher(ctx: Context, interval: float | None = None, **memory):  # noqa: ANN201 - a Searcher
    from engine.search.config import MemoryIndexConfig, SearchConfig
    from engine.search.searcher import Searcher

    db, model = open_database(ctx.work)
    budget = {"max_bytes": int(ctx.args.memory_budget_gb * 2**30)} if ctx.args.memory_budget_gb else {}
    if ctx.args.exact_rows is not None:
        budget["exact_rows"] = ctx.args.exact_rows
    config = SearchConfig(k=ctx.args.k, memory_index=dataclasses.replace(MemoryIndexConfig(), **budget, **memory))
    return Searcher(db, model, config if interval is None else dataclasses.replace(config, consistency_interval_s=interval))


def lookalike_rows(frame: pl.DataFrame, queries: int, k: int) -> np.ndarray:
    return grouped_rows(frame, "query", queries, k)


def lookalike_contender(ctx: Context, filtered: bool = False, **memory) -> dict:
    searcher = lookalike_searcher(ctx, **memory)
    started = time.perf_counter()
    index = searcher.memory_index()
    build = time.perf_counter() - started
    k = ctx.args.k
    extra = {"setting": f"{index.kind}{' (policy)' if memory.get('kind', 'auto') == 'auto' else ''}: {index.check.setting}"} if index is not None else {"setting": "LanceDB on disk"}
    if index is not None:
        extra["self_check"] = index.check.recall
    folder = ctx.work / "db" / "_faiss"
    row = measure(ctx, lambda q: lookalike_rows(searcher.search_vectors(q, k), len(q), k), build, dir_bytes(folder) if folder.exists() else 0,
                  timed=lambda q: searcher.search_vectors(q, k), **extra)
    if filtered:
        row["filtered"] = filtered_rows(ctx, searcher)
    return row


def filtered_rows(ctx: Context, searcher) -> list[dict]:  # noqa: ANN001 - a Searcher
    k = ctx.args.k
    rows = []
    queries = ctx.queries[: ctx.args.filtered_queries]
    for label, below in SELECTIVITIES.items():
        where = f"width < {below}"
        truth = np.load(ctx.work / f"truth_{label.replace('%', 'pct')}.npy")
        started = time.perf_counter()
        searcher.search_vectors(queries[:1], k, where=where)
        first_ms = 1000 * (time.perf_counter() - started)
        result = searcher.search_vectors(queries, k, where=where)
        counts = result.group_by("query").len()["len"]
        p50, p99 = latency(lambda q, w=where: searcher.search_vectors(q[None], k, where=w), queries[: max(5, ctx.args.single // 5)])
        started = time.perf_counter()
        searcher.search_vectors(queries, k, where=where)
        qps = len(queries) / (time.perf_counter() - started)
        rows.append({"selectivity": label, "where": where, "matching_rows": int(np.sum(np.arange(ctx.args.rows) % WIDTHS < below)),
                     "queries_with_k_results": f"{int((counts == k).sum())}/{len(queries)}",
                     "recall@10": round(recall_at_k(lookalike_rows(result, len(queries), k), truth, k), 4),
                     "first_query_ms": round(first_ms, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "batch_qps": round(qps, 1)})
    return rows


def c_lookalike(ctx: Context) -> dict:
    return lookalike_contender(ctx, filtered=True)


def c_lookalike_fp16(ctx: Context) -> dict:
    return lookalike_contender(ctx, filtered=True, kind="hnsw_fp16", persist=False)


def c_lookalike_disk(ctx: Context) -> dict:
    row = lookalike_contender(ctx, kind="off")
    searcher = lookalike_searcher(ctx, kind="off")
    row["filtered"] = filtered_rows(ctx, searcher) if ctx.args.disk_filtered else []
    return row


def c_lookalike_append(ctx: Context) -> dict:
    """1% more rows appended twice to the table Lookalike's default index was built for: the first time a
    long-lived searcher (the console) follows them in place, the second time a new searcher (the next CLI
    command after an ingest) follows the graph saved for the earlier version; beside a rebuild's build_s."""
    from engine.storage.maintenance import optimize_table

    db, model = open_database(ctx.work)
    appended = max(1, ctx.args.rows // 100)
    searcher = lookalike_searcher(ctx, interval=0.0)
    started = time.perf_counter()
    before = searcher.memory_index()
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    db.write_embedded(model, bench_rows(0, appended, prefix="n"), np.concatenate(list(blocks_for(ctx.args, appended, seed=7))))
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    after = searcher.memory_index()
    in_place_s = time.perf_counter() - started
    followed = before is not None and after is not None and after.index is before.index
    in_place_check = after.check.recall if after else None
    del searcher, before, after
    gc.collect()  # the first graph goes before the next command's loads: one graph at a time, as two processes would
    db.write_embedded(model, bench_rows(0, appended, prefix="m"), np.concatenate(list(blocks_for(ctx.args, appended, seed=8))))
    fresh = lookalike_searcher(ctx)
    started = time.perf_counter()
    next_command = fresh.memory_index()
    next_command_s = time.perf_counter() - started
    table = db.embeddings(model)
    started = time.perf_counter()
    optimize_table(table)  # LanceDB adds the new rows to its IVF index
    lance_update_s = time.perf_counter() - started
    table.delete("image_id LIKE 'n%' OR image_id LIKE 'm%'")  # leave the prepared table as it was
    optimize_table(table)
    return {"setting": f"{next_command.kind if next_command else 'disk'}: {appended} rows appended, twice", "load_s": round(load_s, 1), "write_s": round(write_s, 1),
            "followed_in_place": followed, "in_place_s": round(in_place_s, 1), "in_place_check": in_place_check,
            "next_command_s": round(next_command_s, 1), "self_check": next_command.check.recall if next_command else None,
            "dead_rows": next_command.dead if next_command else None, "lancedb_index_update_s": round(lance_update_s, 1)}


# in the order they run: the LanceDB contenders replace each other's index, Lookalike on disk uses the last
# (the default), and the append, which writes to the table, comes last
CONTENDERS: dict[str, tuple[str, Callable[[Context], dict]]] = {
    "exact": ("exact brute force (FAISS flat)", c_exact),
    "lookalike": ("Lookalike default (policy)", c_lookalike),
    "faiss-hnsw": ("FAISS HNSW32 alone", c_faiss_hnsw),
    "lookalike-fp16": ("Lookalike hnsw_fp16 (quantised tier)", c_lookalike_fp16),
    "faiss-hnsw-sq8": ("FAISS HNSW32 + SQ8", c_faiss_hnsw_sq8),
    "faiss-ivfpq-fs": ("FAISS IVF-PQ fast-scan + refine", c_faiss_ivfpq_fastscan),
    "lancedb-ivfpq-old": ("LanceDB IVF-PQ dim/16, refine 50 (previous default)", c_lancedb_ivfpq_old),
    "lancedb-ivf-hnsw-sq": ("LanceDB IVF_HNSW_SQ, setting from its check", c_lancedb_ivf_hnsw_sq),
    "lancedb-ivfpq": ("LanceDB IVF-PQ dim/8, setting from its check", c_lancedb_ivfpq),
    "lookalike-disk": ("Lookalike on disk (LanceDB index + FAISS re-rank)", c_lookalike_disk),
    "lookalike-append": ("Lookalike default, 1% rows appended", c_lookalike_append),
}


def child(args: argparse.Namespace, work: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    queries = np.load(work / "queries.npy")
    ctx = Context(args, work, queries, np.load(work / "truth_all.npy"))
    found = CONTENDERS[args.child][1](ctx)
    for row in found if isinstance(found, list) else [found]:
        row["peak_rss_gb"] = round(peak_rss_gb(), 2)
    print("RESULT " + json.dumps(found), flush=True)


def run_child(name: str, argv: list[str]) -> list[dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *argv, "--child", name], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        print(f"{name}: failed (exit {done.returncode}): {' | '.join(tail)}", flush=True)
        return [{"error": f"exit {done.returncode}: {tail[-1] if tail else ''}"}]
    found = json.loads(lines[-1][len("RESULT "):])
    found = found if isinstance(found, list) else [found]
    for row in found:
        row["wall_s"] = round(time.perf_counter() - started, 1)
    return found


def write_results(args: argparse.Namespace, rows: list[dict], filtered: list[dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    frame = pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.lit(args.rows).alias("rows"), pl.lit(args.dim).alias("dim"), pl.lit(args.data).alias("data"),
        pl.lit(platform.machine()).alias("machine"), pl.lit(os.cpu_count()).alias("cpus"))
    filtered_frame = pl.DataFrame(filtered, infer_schema_length=None)
    name = "quick" if args.quick else (f"{args.rows}" if args.data == "clustered" else f"real_{args.rows}")
    out = args.out or RESULTS / f"search_{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    filtered_out = out.with_name(out.stem + "_filtered.csv")
    if args.keep_other_rows:  # rows of contenders this run did not measure stay in the files
        labels = [CONTENDERS[n][0] for n in args.contenders.split(",") if n]
        for path, new in ((out, frame), (filtered_out, filtered_frame)):
            if path.exists() and path.stat().st_size:
                old = pl.read_csv(path).filter(~pl.col("contender").is_in(labels))
                new = pl.concat([old, new], how="diagonal_relaxed") if new.height else old
                new.write_csv(path)
        return pl.read_csv(out), pl.read_csv(filtered_out) if filtered_out.stat().st_size else filtered_frame
    frame.write_csv(out)
    filtered_frame.write_csv(filtered_out)
    return frame, filtered_frame


def main(argv: list[str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280, help="clustered data only (real data has the encoder's width)")
    parser.add_argument("--data", choices=["clustered", "real"], default="clustered")
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=100, help="single queries timed for the latency percentiles")
    parser.add_argument("--filtered-queries", type=int, default=200, help="queries per selectivity for filtered recall")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--train-rows", type=int, default=100_000, help="rows FAISS's quantisers are trained on")
    parser.add_argument("--memory-budget-gb", type=float, default=None, help="MemoryIndexConfig.max_bytes (default: a quarter of RAM)")
    parser.add_argument("--exact-rows", type=int, default=None, help="MemoryIndexConfig.exact_rows (--quick: 1000, so the policy builds a graph)")
    parser.add_argument("--disk-filtered", action="store_true", help="also run the filters on the on-disk path (slow at 1M)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, in order; of {list(CONTENDERS)}")
    parser.add_argument("--keep-other-rows", action="store_true", help="keep the result rows of contenders not run now")
    parser.add_argument("--work", type=Path, default=None, help="where data, exact answers and the database are kept (reused)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="2,000 rows x 64, 50 queries: checks that everything runs")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
        args.data, args.train_rows, args.disk_filtered = "clustered", 2000, True
        args.work = args.work or Path(tempfile.mkdtemp(prefix="lookalike-search-"))
    if args.data == "real":
        args.dim = real_sources()[0].shape[1]
    work = args.work or REAL_CACHE / f"search-{args.data}-{args.rows}"
    if args.child:
        child(args, work)
        return pl.DataFrame(), pl.DataFrame()
    meta = prepare(args, work)
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    if args.quick:  # the child gets the quick sizes spelled out
        passed += [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()] + ["--train-rows=2000", "--disk-filtered"]
    passed += ["--work", str(work), "--data", args.data, "--dim", str(args.dim)]
    rows, filtered = [], []
    for name in [n for n in args.contenders.split(",") if n]:  # none: only prepare
        print(f"running {name} ...", flush=True)
        for row in run_child(name, passed):
            for f in row.pop("filtered", []):
                filtered.append({"contender": CONTENDERS[name][0], **f})
            rows.append({"contender": CONTENDERS[name][0], **row})
            print(rows[-1], flush=True)
        frame, filtered_frame = write_results(args, rows, filtered)  # after each contender: a long run keeps what it measured
    if not rows:
        frame, filtered_frame = write_results(args, rows, filtered)
    if not rows:
        return frame, filtered_frame
    shown = [c for c in ("contender", "recall@10", "p50_ms", "p99_ms", "batch_qps", "build_s", "peak_rss_gb", "disk_mb", "setting", "error") if c in frame.columns]
    with pl.Config(tbl_rows=30, tbl_cols=-1, tbl_width_chars=250, fmt_str_lengths=70):
        print(f"{args.rows} rows x {args.dim} ({args.data}), {args.queries} queries, k={args.k}; prepared: {meta}")
        print(frame.select(shown))
        print(filtered_frame)
    return frame, filtered_frame


if __name__ == "__main__":
    main()
