"""Ingest throughput side by side, in one process on the same files:

1. encoder forward only, on pre-decoded tensors, at the ingest batch size (the ceiling);
2. Lookalike's ingest pipeline end to end (read, hash, decode, preprocess, encode, write);
3. a naive notebook loop: decode one image, encode it, write it, repeat;
4. re-ingest of the unchanged folder (a hash check per file, no encode).

Prints medians over --repeats and the ratios (pipeline / forward is the efficiency; the target on a
2-core machine is >= 0.85); writes benchmarks/results/ingest.csv.

    python benchmarks/ingest_pipeline.py --images ../shared/datasets/mit_scenes/train --limit 400
    python benchmarks/ingest_pipeline.py --quick      # a smoke run (make test runs it; never asserts timings)

(Named ``ingest_pipeline.py``, not ``ingest.py``: run as a script, that name would shadow the ``ingest`` package.)
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from engine.core.clock import utc_now
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import create_encoder
from engine.media.decode import content_id, decode_image
from engine.media.scan import iter_image_files
from engine.storage.database import Database
from ingest.pipeline import IngestConfig, ingest_folder


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.csv"))
    parser.add_argument("--quick", action="store_true", help="24 shipped samples, one run: checks that everything runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = args.images or Path(__file__).resolve().parents[1] / "data" / "samples"
        args.limit, args.repeats, args.batch_size = 24, 1, 8
        args.out = args.out if argv and "--out" in argv else Path(tempfile.gettempdir()) / "lookalike-ingest-quick.csv"
    if args.images is None:
        parser.error("--images is required (or --quick)")

    files = list(iter_image_files(args.images))[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    folder = work / "images"
    for i, path in enumerate(files):  # a flat copy: the same bytes for every contender
        target = folder / path.parent.name / f"{i:06d}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    encoder = create_encoder(EncoderConfig(batch_size=args.batch_size))
    tensors = torch.stack([encoder.preprocess(decode_image(p.read_bytes()).image) for p in files])
    encoder.encode_tensors(tensors[: args.batch_size])  # warm-up

    def forward_only() -> float:
        start = time.perf_counter()
        for i in range(0, len(tensors), args.batch_size):
            encoder.encode_tensors(tensors[i : i + args.batch_size])
        return time.perf_counter() - start

    def pipeline(run: int) -> float:
        db = Database(work / f"db-pipeline-{run}")
        start = time.perf_counter()
        ingest_folder(db, folder, IngestConfig(decode_workers=args.workers, optimize=False), encoder=encoder)
        return time.perf_counter() - start

    def reingest(run: int) -> float:
        db = Database(work / f"db-pipeline-{run}")
        start = time.perf_counter()
        report = ingest_folder(db, folder, IngestConfig(decode_workers=args.workers, optimize=False), encoder=encoder)
        assert report.encoded == 0
        return time.perf_counter() - start

    def naive(run: int) -> float:
        db = Database(work / f"db-naive-{run}")
        model = db.register_model(encoder)
        start = time.perf_counter()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            decoded = decode_image(data)
            vector = encoder.encode_images([decoded.image])
            row = {"id": content_id(data), "path": str(path), "label": path.parent.name, "labels": [path.parent.name], "split": None,
                   "width": decoded.width, "height": decoded.height, "channels": decoded.channels, "mode": decoded.mode,
                   "format": decoded.format, "bytes": len(data), "source": str(folder), "ingested_at": utc_now()}
            db.write_embedded(model, [row], vector)
        return time.perf_counter() - start

    timings: dict[str, list[float]] = {"forward": [], "pipeline": [], "naive": [], "reingest": []}
    for run in range(args.repeats):  # interleaved, so drift on a noisy machine hits every contender alike
        timings["forward"].append(forward_only())
        timings["pipeline"].append(pipeline(run))
        timings["reingest"].append(reingest(run))
        if run == 0:  # the naive loop is slow: one run
            timings["naive"].append(naive(run))
    n = len(files)
    median = {k: statistics.median(v) for k, v in timings.items()}
    rows = [{"contender": k, "median_s": round(v, 3), "images_per_s": round(n / v, 1), "runs": len(timings[k])} for k, v in median.items()]
    frame = pl.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.with_columns(pl.lit(n).alias("images"), pl.lit(args.batch_size).alias("batch_size"), pl.lit(torch.get_num_threads()).alias("threads"),
                       pl.lit(platform.machine()).alias("machine")).write_csv(args.out)
    print(frame)
    print(f"{n} images, batch {args.batch_size}, {torch.get_num_threads()} torch threads, {args.workers} decode threads")
    print(f"pipeline efficiency (pipeline / forward-only throughput): {median['forward'] / median['pipeline']:.3f}")
    print(f"speed-up over the naive loop: {median['naive'] / median['pipeline']:.2f}x")
    print(f"re-ingest of the unchanged folder: {median['reingest'] / n * 10_000:.1f} s per 10k files")
    shutil.rmtree(work)
    return frame


if __name__ == "__main__":
    main()
