"""What keeping every model version in step costs (issue 17), measured side by side in one run.

1. ``sync`` of an unchanged folder of ``--sync-files`` images (default 10,000 distinct PNGs made from the shipped
   samples, one pixel changed each): scan, hash every file, compare with the catalogue, bring every version in
   step (nothing to do). The catalogue is first ingested with timm's tiny ``test_efficientnet`` (random weights):
   an unchanged sync encodes nothing, so the encoder does not enter the figure.
2. Ingest of ``--new`` more MIT photos into a catalogue of ``--catalogue`` MIT photos with 1, 3 and 6 live
   versions (the default Lite0 encoder with its ImageNet weights): 1 = the base; 3 = + an ArcFace head + DBA;
   6 = + whitening of the head + an ensemble of base and head + a Lite1 base (which encodes the files again).
   Each case ingests into its own copy of one prepared database; the ratio to the 1-version ingest is the
   cost of the consistency promise.

    python benchmarks/consistency.py [--sync-files 10000] [--catalogue 320] [--new 80] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import write_and_show  # noqa: E402

from engine.encoders.config import EncoderConfig  # noqa: E402
from engine.encoders.factory import create_encoder  # noqa: E402
from engine.encoders.whitening import WhiteningConfig  # noqa: E402
from engine.media.scan import SourceFile  # noqa: E402
from engine.storage.database import Database  # noqa: E402
from engine.training.api import train  # noqa: E402
from engine.training.config import TrainConfig  # noqa: E402
from engine.versions.derived import publish_derived  # noqa: E402
from ingest.pipeline import IngestConfig, ingest_files  # noqa: E402
from ingest.sync import sync_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIT = REPO.parent / "shared" / "datasets" / "mit_scenes" / "train"
SAMPLES = REPO / "data" / "samples"
RESULTS = REPO / "benchmarks" / "results"
REPEATS = 3


def make_distinct_pngs(target: Path, count: int) -> Path:
    """``count`` distinct small PNGs (a shipped sample with one pixel set from the index), a folder per class."""
    samples = sorted(SAMPLES.glob("*/*.png"))
    for index in range(count):
        source = samples[index % len(samples)]
        pixels = np.array(Image.open(source).convert("L"))
        pixels.flat[index % pixels.size] = (int(pixels.flat[index % pixels.size]) + 1 + index // pixels.size) % 256
        folder = target / source.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{index:06d}.png")
    return target


def bench_sync(workdir: Path, files: int) -> pl.DataFrame:
    import timm
    import torch

    folder = make_distinct_pngs(workdir / "sync_folder", files)
    torch.manual_seed(0)
    weights = workdir / "tiny.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    encoder = create_encoder(EncoderConfig(name="test_efficientnet", weights=str(weights), device="cpu", batch_size=64))
    db = Database(workdir / "sync_db")
    started = time.perf_counter()
    sync_folder(db, folder, IngestConfig(), encoder)
    first = time.perf_counter() - started
    seconds = []
    for _ in range(REPEATS):
        report = sync_folder(db, folder, IngestConfig(), encoder)
        assert report.new == report.removed == report.moved == 0 and report.unchanged == files, report
        seconds.append(report.seconds)
    return pl.DataFrame({"case": [f"sync, unchanged {files} files"], "median_s": [statistics.median(seconds)], "runs": [REPEATS],
                         "files_per_s": [files / statistics.median(seconds)], "first_sync_s (ingest)": [first]})


def _mit_files(count: int, offset: int = 0) -> list[SourceFile]:
    classes = sorted(p for p in MIT.iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.jpg")) for c in classes]
    chosen = []
    for i in range(offset, offset + count):
        files = per_class[i % len(classes)]
        chosen.append(SourceFile(files[i // len(classes)], (classes[i % len(classes)].name,), "train"))
    return chosen


def bench_versions(workdir: Path, catalogue: int, new: int) -> pl.DataFrame:
    lite0 = create_encoder(EncoderConfig())
    prepared = workdir / "versions_1"
    db = Database(prepared)
    ingest_files(db, _mit_files(catalogue), MIT, IngestConfig(), lite0)
    base = db.resolve_model()
    stages = {1: prepared}

    def copy(count: int) -> Database:
        path = workdir / f"versions_{count}"
        shutil.copytree(stages[max(stages)], path)
        stages[count] = path
        return Database(path)

    db3 = copy(3)
    head = train(db3, db3.resolve_model(base.id), TrainConfig(epochs=10)).model
    publish_derived(db3, "dba", [db3.resolve_model(base.id)])
    db6 = copy(6)
    publish_derived(db6, "whiten", [db6.resolve_model(head.id)], WhiteningConfig(out_dim=min(128, catalogue // 2)))
    publish_derived(db6, "ensemble", [db6.resolve_model(base.id), db6.resolve_model(head.id)])
    ingest_files(db6, _mit_files(catalogue), MIT, IngestConfig(), create_encoder(EncoderConfig(name="efficientnet_lite1")))

    rows = []
    more = _mit_files(new, offset=catalogue)
    for count, path in sorted(stages.items()):
        seconds = []
        for repeat in range(REPEATS):
            trial = workdir / f"trial_{count}_{repeat}"
            shutil.copytree(path, trial)
            target = Database(trial)
            started = time.perf_counter()
            report = ingest_files(target, more, MIT, IngestConfig(), lite0)
            seconds.append(time.perf_counter() - started)
            assert len(report.versions) == count and all(c.in_step for c in report.versions), report.versions
            shutil.rmtree(trial)
        rows.append({"versions": count, "kinds": ", ".join(m.kind for m in Database(path, read_only=True).find_models()),
                     "ingest_s_median": statistics.median(seconds), "runs": REPEATS})
    frame = pl.DataFrame(rows)
    return frame.with_columns((pl.col("ingest_s_median") / frame["ingest_s_median"][0]).alias("ratio_to_1_version"))


def main(argv: list[str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync-files", type=int, default=10_000)
    parser.add_argument("--catalogue", type=int, default=320)
    parser.add_argument("--new", type=int, default=80)
    parser.add_argument("--quick", action="store_true", help="small sizes, nothing written to benchmarks/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.sync_files, args.catalogue, args.new = 300, 48, 16
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        synced = write_and_show(bench_sync(workdir, args.sync_files), None if args.quick else RESULTS / "consistency_sync.csv")
        versions = write_and_show(bench_versions(workdir, args.catalogue, args.new), None if args.quick else RESULTS / "consistency_versions.csv")
    return synced, versions


if __name__ == "__main__":
    main()
