"""Soak test: kill -9 real ingests at random moments for --minutes, and check every database left behind.

Each round starts a fresh database and ingests the fault folder of tests/support/fault_harness.py (16 labelled
samples, a duplicate, 3 broken files) with the tiny seeded encoder, killed in one of three ways:

* ``point``: SIGKILL at a random named fault point and passage (engine/faults.py);
* ``timed``: SIGKILL from outside after a random delay, anywhere in the run (inside LanceDB commits,
  the index build, compaction...);
* ``chain``: two to four timed kills in a row on the same database before it may finish.

After the kills: the database must reopen with no duplicates and no orphan embeddings; a re-run must
complete; the result must equal a clean run's rows, errors, vectors and index. Prints a summary and
writes benchmarks/results/soak.csv.

    python benchmarks/soak.py --minutes 10 --seed 1
    python benchmarks/soak.py --real-fs       # root with mount(8): a really full tmpfs, a read-only remount
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import fault_harness as harness  # noqa: E402


def _weights(folder: Path) -> Path:
    import timm
    import torch

    torch.manual_seed(0)
    path = folder / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False).state_dict(), path)
    return path


def _timed_kill(zygote: harness.Zygote, delay: float, **job) -> bool:
    """Start an ingest, SIGKILL it after ``delay`` s unless it ended first; True when the kill landed."""
    pid = zygote.start("ingest", **job)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and not zygote.finished():
        time.sleep(0.002)
    if not zygote.finished():
        os.kill(pid, 9)
    result = zygote.wait()
    if result.status not in (0, -9):
        raise RuntimeError(f"ingest failed instead of being killed: {result.log[-2000:]}")
    return result.killed


def soak(minutes: float, seed: int, work: Path) -> pl.DataFrame:
    rng = random.Random(seed)
    folder = harness.make_fault_folder(work / "catalogue")
    weights = _weights(work)
    rows = []
    with harness.Zygote(work / "zygote") as zygote:
        clean_path = work / "clean"
        started = time.monotonic()
        assert zygote.run("ingest", db=clean_path, folder=folder, weights=weights).status == 0
        clean_seconds = time.monotonic() - started
        clean = harness.snapshot(clean_path)
        job = {"folder": folder, "weights": weights}
        end = time.monotonic() + minutes * 60
        round_no = 0
        while time.monotonic() < end:
            round_no += 1
            path = work / f"db{round_no:05d}"
            kind = rng.choice(["point", "timed", "chain"])
            began = time.monotonic()
            if kind == "point":
                point = rng.choice(sorted(harness.POINT_HITS))
                spec = f"{point}@{rng.randint(1, harness.POINT_HITS[point])}=kill"
                landed = [zygote.run("ingest", spec, db=path, **job).killed]
            else:
                delays = [rng.uniform(0.0, clean_seconds * 1.1) for _ in range(1 if kind == "timed" else rng.randint(2, 4))]
                spec = " ".join(f"{d:.3f}s" for d in delays)
                landed = [_timed_kill(zygote, delay, db=path, **job) for delay in delays]
            after_kill = harness.integrity_problems(harness.snapshot(path), complete=False)
            rerun = zygote.run("ingest", db=path, **job)
            final = harness.snapshot(path) if rerun.status == 0 else None
            problems = after_kill + ([f"re-run failed: {rerun.log[-300:]}"] if final is None else harness.integrity_problems(final) + harness.differences(final, clean))
            rows.append({"round": round_no, "kind": kind, "faults": spec, "kills_landed": sum(landed), "kills_tried": len(landed),
                         "problems": "; ".join(problems), "seconds": round(time.monotonic() - began, 2)})
            shutil.rmtree(path, ignore_errors=True)
            if problems:
                print(f"round {round_no} {kind} {spec}: {problems}", flush=True)
    return pl.DataFrame(rows)


def _mount_tmpfs(target: Path, size: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], check=True)


def real_fs(work: Path) -> pl.DataFrame:
    """A really full disk and a really read-only folder (tmpfs mounts; needs root and mount(8))."""
    from engine.search.searcher import Searcher
    from engine.storage.database import Database
    from engine.storage.lock import DatabaseNotWritableError
    from ingest.pipeline import ingest_folder

    encoder = harness.tiny_encoder(str(_weights(work)))
    config = harness.ingest_config()
    clean_path = work / "clean"
    ingest_folder(Database(clean_path), harness.SAMPLES, config, encoder=encoder)
    clean = harness.snapshot(clean_path)
    rows = []

    full = work / "full"
    _mount_tmpfs(full, "400k")
    try:
        try:
            ingest_folder(Database(full / "db"), harness.SAMPLES, config, encoder=encoder)
            error = "none: the disk did not fill"
        except DatabaseNotWritableError as exc:
            error = str(exc)
        shot = harness.snapshot(full / "db")
        kept = len(shot["images"])
        problems = harness.integrity_problems(shot, complete=False)
        shutil.copytree(full / "db", work / "moved")
    finally:
        subprocess.run(["umount", str(full)], check=True)
    ingest_folder(Database(work / "moved"), harness.SAMPLES, config, encoder=encoder)
    final = harness.snapshot(work / "moved")
    problems += harness.integrity_problems(final) + harness.differences(final, clean)
    rows.append({"scenario": "disk full (400 KiB tmpfs), then moved to a bigger disk and re-run", "error": error,
                 "rows_kept_after_error": kept, "problems": "; ".join(problems)})

    read_only = work / "ro"
    _mount_tmpfs(read_only, "64m")
    try:
        ingest_folder(Database(read_only / "db"), harness.SAMPLES, config, encoder=encoder)
        before = harness.snapshot(read_only / "db")
        subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
        try:
            ingest_folder(Database(read_only / "db"), harness.CORPUS, config, encoder=encoder)
            error = "none: the ingest wrote to a read-only file system"
        except DatabaseNotWritableError as exc:
            error = str(exc)
        db = Database(read_only / "db")
        model = db.resolve_model()
        hits = Searcher(db, model).search_vectors(before["vectors"][model.id][:3], k=5).height
        problems = harness.differences(harness.snapshot(read_only / "db"), before) + ([] if hits == 15 else [f"search gave {hits} rows"])
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    rows.append({"scenario": "read-only file system (tmpfs remounted ro), then search", "error": error,
                 "rows_kept_after_error": len(before["images"]), "problems": "; ".join(problems)})
    return pl.DataFrame(rows)


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-fs", action="store_true", help="full and read-only tmpfs mounts instead of the kill soak")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="lookalike-soak-") as tmp:
        if args.real_fs:
            frame = real_fs(Path(tmp))
            out = args.out or REPO / "benchmarks" / "results" / "soak_real_fs.csv"
            with pl.Config(fmt_str_lengths=400, tbl_width_chars=250):
                print(frame)
        else:
            frame = soak(args.minutes, args.seed, Path(tmp))
            out = args.out or REPO / "benchmarks" / "results" / "soak.csv"
            summary = frame.group_by("kind").agg(
                rounds=pl.len(), kills_landed=pl.col("kills_landed").sum(), failed_rounds=(pl.col("problems") != "").sum(),
                median_s=pl.col("seconds").median(),
            ).sort("kind")
            print(summary)
            print(f"{frame.height} rounds, {frame['kills_landed'].sum()} kills landed, "
                  f"{(frame['problems'] != '').sum()} rounds with problems (seed {args.seed}, {args.minutes} min)")
    import lancedb
    import PIL

    frame = frame.with_columns(machine=pl.lit(f"{platform.machine()} {os.cpu_count()} cpus"), lancedb=pl.lit(lancedb.__version__),
                               pillow=pl.lit(PIL.__version__), python=pl.lit(platform.python_version()))
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(out)
    return frame


if __name__ == "__main__":
    main()
