"""End-to-end latency of one image query, split into its parts (medians over --repeats, after a warm-up):

read the file -> decode (Pillow, EXIF, to RGB) -> preprocess (the model's own transform) -> encode (one
forward pass, batch of 1) -> search (top-k with the searcher's defaults) -> vote (top-5 classes).

    python benchmarks/query_latency.py --db /tmp/mit --query ../shared/datasets/mit_scenes/test/coast_0001.jpg
    python benchmarks/query_latency.py --quick    # ingests the shipped samples into a temporary database first
    python benchmarks/query_latency.py --db /tmp/mit --query Q.jpg --model BASE,TUNED   # side by side, one run

Each version searches as the product does: with the query pipeline ``lookalike tune`` stored with it, if any.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from engine.media.decode import decode_image
from engine.media.scan import scan_folder
from engine.search.config import SearchConfig
from engine.search.pipeline import search_config_for
from engine.search.searcher import Searcher
from engine.storage.database import Database
from ingest.pipeline import ingest_files

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--query", type=Path)
    parser.add_argument("--model", help="model ids or encoder names, comma-separated, measured side by side (default: the active model)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/query_latency.csv"))
    parser.add_argument("--quick", action="store_true", help="shipped samples in a temporary database, 5 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.db = Path(tempfile.mkdtemp(prefix="lookalike-latency-")) / "db"
        samples = REPO / "data" / "samples"
        ingest_files(Database(args.db), scan_folder(samples, split="train")[::6], samples)  # 20 images, every class
        args.query = args.query or REPO / "data" / "queries" / "sandal_test_00008.png"
        args.repeats = 5
        args.out = Path(tempfile.gettempdir()) / "lookalike-latency-quick.csv"
    if args.db is None or args.query is None:
        parser.error("--db and --query are required (or --quick)")

    frames = [measure(Database(args.db), name or None, args) for name in (args.model or "").split(",")]
    frame = pl.concat(frames)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(args.out)
    if len(frames) > 1:
        totals = frame.filter(pl.col("part") == "total")
        print(totals.select("model", "pipeline", "median_ms", (pl.col("median_ms") / totals["median_ms"][0]).round(2).alias("ratio_to_first")))
    return frame


def measure(db: Database, model: str | None, args: argparse.Namespace) -> pl.DataFrame:
    record = db.resolve_model(model)
    searcher = Searcher(db, record, search_config_for(db, record, SearchConfig(k=args.k), reranker_named=False))
    encoder = searcher.encoder
    timings: dict[str, list[float]] = {part: [] for part in ("read", "decode", "preprocess", "encode", "search", "vote", "total")}
    for repeat in range(args.repeats + 1):  # the first run warms up caches and the in-memory index
        marks = [time.perf_counter()]
        data = args.query.read_bytes()
        marks.append(time.perf_counter())
        image = decode_image(data).image
        marks.append(time.perf_counter())
        if hasattr(encoder, "preprocess"):
            tensor = encoder.preprocess(image).unsqueeze(0)
            marks.append(time.perf_counter())
            vector = encoder.encode_tensors(tensor)
        else:  # an ensemble: each member preprocesses on its own, so its preprocessing is timed with its encoding
            marks.append(time.perf_counter())
            vector = encoder.encode_images([image])
        marks.append(time.perf_counter())
        searcher.search_vectors(vector, args.k)
        marks.append(time.perf_counter())
        searcher.predict(vector)
        marks.append(time.perf_counter())
        if repeat == 0:
            continue
        for part, start, end in zip(timings, marks, marks[1:]):
            timings[part].append(end - start)
        timings["total"].append(marks[-1] - marks[0])
    rows = [{"part": part, "median_ms": round(1000 * statistics.median(values), 2)} for part, values in timings.items()]
    total = rows[-1]["median_ms"]
    frame = pl.DataFrame(rows).with_columns((pl.col("median_ms") / total).round(3).alias("share_of_total"))
    print(f"{args.query} against {searcher.model.id} ({searcher.table.count_rows()} rows, re-ranker {searcher.config.reranker}), "
          f"{args.repeats} repeats, {torch.get_num_threads()} threads")
    print(frame)
    return frame.with_columns(pl.lit(searcher.model.id).alias("model"), pl.lit(searcher.config.reranker).alias("pipeline"),
                              pl.lit(searcher.table.count_rows()).alias("catalogue_rows"), pl.lit(torch.get_num_threads()).alias("threads"),
                              pl.lit(platform.machine()).alias("machine"))


if __name__ == "__main__":
    main()
