"""Peak memory of ingest against folder size: it must stay flat, not grow with the folder.

Resamples real photos into distinct JPEGs (a seeded random crop and quality per copy, so every file has
its own content hash), in sub-folders of 1,000, then ingests the first N files for each size in
--sizes, each in a fresh process with a fresh database, and prints the peak resident memory
(``ru_maxrss``) and throughput of each, and the ratio of the largest to the smallest.

    python benchmarks/ingest_memory.py --source ../shared/datasets/mit_scenes/train --sizes 1000,20000
    python benchmarks/ingest_memory.py --source ... --sizes 1000,20000 --model test_efficientnet   # encoder-light

``--model test_efficientnet`` uses timm's tiny test network with seeded random weights: the pipeline's
buffers, hash sets and LanceDB writes are what can grow with the folder, not the encoder, and the tiny
network pushes files through ~20x faster, which also stresses the writer harder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from engine.media.scan import iter_image_files

FILES_PER_FOLDER = 1000

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import create_encoder
from engine.storage.database import Database
from ingest.pipeline import IngestConfig, ingest_files
from engine.media.scan import scan_folder
root, db_path, n, model, weights = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] or None
encoder = create_encoder(EncoderConfig(name=model, weights=weights, device="cpu"))
files = scan_folder(Path(root))[:n]
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
report = ingest_files(Database(db_path), files, Path(root), IngestConfig(optimize=False), encoder=encoder)
seconds = time.perf_counter() - start
print(json.dumps({"files": len(files), "encoded": report.encoded, "errors": report.errors, "seconds": seconds,
                  "rss_before_mb": baseline / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def resample(source: Path, target: Path, count: int, seed: int) -> None:
    """``count`` distinct JPEGs made from the photos under ``source`` (kept between runs)."""
    photos = sorted(iter_image_files(source))
    rng = np.random.default_rng(seed)
    for i in range(count):
        out = target / f"part{i // FILES_PER_FOLDER:03d}" / f"{i:06d}.jpg"
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(photos[i % len(photos)]) as image:
            image = image.convert("RGB")
            w, h = image.size
            cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            image.crop((x, y, x + cw, y + ch)).save(out, quality=int(rng.integers(85, 96)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="a folder of real photos to resample")
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-ingest-memory")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest_memory.csv"))
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    images = args.work / "images"
    resample(args.source, images, sizes[-1], seed=0)
    weights = ""
    if args.model == "test_efficientnet":
        import timm
        import torch

        torch.manual_seed(0)
        weights = str(args.work / "test_efficientnet.pth")
        torch.save(timm.create_model("test_efficientnet", pretrained=False).state_dict(), weights)
    rows = []
    for n in sizes:
        db_path = args.work / f"db-{n}"
        subprocess.run(["rm", "-rf", str(db_path)], check=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-c", CHILD, str(images), str(db_path), str(n), args.model, weights],
                              env=env, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"images": n, "model": args.model, "encoded": result["encoded"], "seconds": round(result["seconds"], 1),
                     "images_per_s": round(result["files"] / result["seconds"], 1), "rss_after_load_mb": round(result["rss_before_mb"]),
                     "peak_rss_mb": round(result["peak_rss_mb"])})
        print(rows[-1], flush=True)
    frame = pl.DataFrame(rows).with_columns(pl.lit(platform.machine()).alias("machine"), pl.lit(os.cpu_count()).alias("cpus"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(args.out)
    print(frame)
    print(f"peak RSS {sizes[-1]} / {sizes[0]} images: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
