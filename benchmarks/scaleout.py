"""Scale-out side by side, on the same photos and the default encoder:

1. ingest: the local pipeline vs the Ray engine with 1 and 2 encoder actors (a local Ray cluster of
   ``--ray-cpus`` CPUs, started once before timing; actor start-up is part of each run, as it is for a user);
2. object storage: ingest and batched search (unfiltered and under a ``where`` filter) against a local
   folder vs ``s3://`` on a moto S3 server in its own process on loopback.

Contenders run in interleaved rounds (`--rounds`, medians). Prints the ratios to the local pipeline and writes benchmarks/results/scaleout.csv. Needs the
``distributed`` and ``test`` extras (Ray, moto[server]).

    python benchmarks/scaleout.py --images /work/shared/datasets/mit_scenes/train --limit 200
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from engine.encoders.config import EncoderConfig
from engine.encoders.factory import create_encoder
from engine.media.scan import iter_image_files
from engine.search.config import SearchConfig
from engine.search.searcher import Searcher
from engine.storage.database import Database
from ingest.distributed import RayConfig, import_ray, ingest_folder_ray
from ingest.pipeline import IngestConfig, ingest_folder


def _copy(files: list[Path], folder: Path) -> None:
    for i, path in enumerate(files):  # one flat copy: the same bytes for every contender
        target = folder / path.parent.name / f"{i:06d}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_moto(work: Path) -> tuple[subprocess.Popen, str]:
    import boto3

    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=(work / "moto.log").open("w"))
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench")
    for _ in range(120):
        try:
            client.create_bucket(Bucket="lookalike-bench")
            return server, endpoint
        except Exception:  # noqa: BLE001  (the server is still starting)
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"moto server did not start; see {work / 'moto.log'}")


def _timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--queries", type=int, default=40, help="catalogue images used as queries in the search part")
    parser.add_argument("--repeats", type=int, default=5, help="search calls per round (the first is reported apart)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every ingest contender (medians)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaleout.csv"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    files = list(iter_image_files(args.images))[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="lookalike-scaleout-"))
    folder = work / "images"
    _copy(files, folder)
    encoder_config = EncoderConfig(device="cpu", batch_size=args.batch_size)
    encoder = create_encoder(encoder_config)
    config = IngestConfig(split="train")
    timings: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], int] = {}

    def record(part: str, contender: str, seconds: float, images: int) -> None:
        timings.setdefault((part, contender), []).append(seconds)
        counts[(part, contender)] = images
        print(f"{part:8s} {contender:50s} {seconds:8.3f} s", flush=True)

    ray = import_ray()
    init_seconds, _ = _timed(lambda: ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False))
    record("setup", f"ray.init (num_cpus={args.ray_cpus}, once)", init_seconds, 0)
    server, endpoint = _start_moto(work)
    os.environ.update({"LOOKALIKE_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
    try:
        for round_ in range(args.rounds):  # contenders interleaved: a load spike hits one round, not one contender
            targets = {"local pipeline": (str(work / f"local{round_}"), None), "local pipeline -> s3:// (moto)": (f"s3://lookalike-bench/db{round_}", None),
                       "ray, 1 worker x 1 CPU": (str(work / f"ray1-{round_}"), 1), "ray, 2 workers x 1 CPU": (str(work / f"ray2-{round_}"), 2)}
            for contender, (uri, workers) in targets.items():
                if workers is None:
                    run = lambda uri=uri: ingest_folder(Database(uri), folder, config, encoder)  # noqa: E731
                else:
                    run = lambda uri=uri, workers=workers: ingest_folder_ray(Database(uri), folder, config, encoder_config, RayConfig(workers=workers))  # noqa: E731
                seconds, report = _timed(run)
                record("ingest", contender, seconds, report.encoded)
            for name, uri in (("local folder", targets["local pipeline"][0]), ("s3:// (moto)", targets["local pipeline -> s3:// (moto)"][0])):
                seconds, db = _timed(lambda uri=uri: Database(uri))
                record("open", name, seconds, 0)
                searcher = Searcher(db, config=SearchConfig(k=10), encoder=encoder)
                ids = db.images_frame(columns=["id"])["id"].sort().to_list()[: args.queries]
                vectors = searcher.vectors_of(ids)
                for label, where in (("unfiltered", None), ("where label = 'coast'", "label = 'coast'")):
                    times = [_timed(lambda searcher=searcher, vectors=vectors, where=where: searcher.search_vectors(vectors, where=where))[0] for _ in range(args.repeats)]
                    record("search", f"{name}, {label}, first call", times[0], len(ids))
                    record("search", f"{name}, {label}, warm median", statistics.median(times[1:]), len(ids))
    finally:
        server.terminate()
        server.wait(timeout=30)
        ray.shutdown()

    rows = [{"part": part, "contender": contender, "images": counts[(part, contender)], "runs": len(times),
             "seconds": round(statistics.median(times), 3), "min": round(min(times), 3), "max": round(max(times), 3),
             "per_second": round(counts[(part, contender)] / statistics.median(times), 2) if counts[(part, contender)] else None}
            for (part, contender), times in timings.items()]
    baseline = {(r["part"], r["contender"]): r["seconds"] for r in rows}
    for r in rows:  # each contender against its local counterpart: the local pipeline, or the same search on a local folder
        twin = ("ingest", "local pipeline") if r["part"] in ("ingest", "setup") else (r["part"], r["contender"].replace("s3:// (moto)", "local folder"))
        r["vs_local"] = round(r["seconds"] / baseline[twin], 2) if baseline.get(twin) else None
    frame = pl.DataFrame(rows).with_columns(
        pl.lit(platform.node()).alias("host"), pl.lit(os.cpu_count()).alias("cpus"), pl.lit(round(os.getloadavg()[0], 1)).alias("load_1min_at_end"),
    )
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60):
        print(frame)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(args.out)
    shutil.rmtree(work, ignore_errors=True)
    return frame


if __name__ == "__main__":
    main()
