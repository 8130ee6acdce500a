"""Fault-injection harness: kill -9 real ingests, training runs and review decisions, then check the database.

Starting Python with torch, timm and LanceDB costs seconds of CPU per process, too much for dozens of
killed runs in CI. A :class:`Zygote` process imports them once (and starts no thread pools or runtimes),
then forks one child per job; a child sets ``LOOKALIKE_FAULTS`` (see :mod:`engine.core.faults`) and runs
the job until its fault kills it. The parent compares what the child left with a clean run:
:func:`snapshot` reads every table into comparable form, :func:`integrity_problems` lists violations
(duplicates, orphan embeddings, images without vectors, tables without a model row).

Used by tests/test_hardening.py (bounded, seeded) and benchmarks/soak.py (random kills for minutes).
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import CORPUS, REPO, SAMPLES

PRELOAD = ("numpy", "torch", "timm", "lancedb", "polars", "pyarrow", "PIL.Image", "engine.storage.database", "engine.encoders.factory",
           "engine.training.api", "engine.evaluation.detect", "engine.search.searcher", "ingest.pipeline")


# ---- the zygote ----------------------------------------------------------------------------------


def _child(job: dict) -> None:
    """Run one job in a forked child; never returns."""
    status = 1
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.pop("LOOKALIKE_FAULTS", None)
        if job.get("faults"):
            os.environ["LOOKALIKE_FAULTS"] = job["faults"]
        JOBS[job["kind"]](job)
        status = 0
    except BaseException:  # noqa: BLE001 - the child reports every failure through its exit status and log
        traceback.print_exc()
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(status)


def zygote_main() -> None:
    """Import the heavy modules, then fork a child per JSON job line on stdin; answer with its exit status."""
    import importlib
    import warnings

    for name in PRELOAD:
        importlib.import_module(name)
    # LanceDB resets its async runtime in forked children and warns that state mid-operation at fork
    # time could deadlock; the zygote never runs a LanceDB operation, so nothing is mid-operation.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
    out = sys.stdout
    print(json.dumps({"ready": os.getpid()}), file=out, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(job)
        print(json.dumps({"started": pid}), file=out, flush=True)
        deadline = time.monotonic() + job.get("timeout", 120)
        timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                timed_out = True
                done, status = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "status": code, "timed_out": timed_out}), file=out, flush=True)


@dataclass
class JobResult:
    pid: int
    status: int  # exit code, or minus the signal that ended the child
    timed_out: bool
    log: str

    @property
    def killed(self) -> bool:
        return self.status == -9 and not self.timed_out


class Zygote:
    """A pre-loaded Python process that forks one child per job (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
               "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster than two fighting for shared cores
        env.pop("LOOKALIKE_FAULTS", None)
        self._log = open(self.workdir / "zygote.log", "wb")
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from tests.support import fault_harness; fault_harness.zygote_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=REPO, text=True, bufsize=1,
        )
        self._jobs = 0
        self._pending: dict | None = None
        self._read(timeout=300)  # {"ready": pid}

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        line = self._process.stdout.readline() if ready else ""
        if not line:
            log = (self.workdir / "zygote.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fault-harness zygote did not answer within {timeout} s (exit {self._process.poll()}): {log}")
        return json.loads(line)

    def start(self, kind: str, faults: str | None = None, timeout: float = 120, **params) -> int:
        """Fork a child for a job and return its pid without waiting for it."""
        self._jobs += 1
        log = self.workdir / f"job{self._jobs:03d}-{kind}.log"
        job = {"kind": kind, "faults": faults, "timeout": timeout, "log": str(log), **params}
        self._process.stdin.write(json.dumps(job, default=str) + "\n")
        self._process.stdin.flush()
        self._pending = {"log": log, "timeout": timeout}
        return self._read(timeout=60)["started"]

    def finished(self) -> bool:
        """Whether the last started child has ended (its answer is then kept for :meth:`wait`)."""
        if self._pending is None:
            return True
        if "answer" not in self._pending and select.select([self._process.stdout], [], [], 0)[0]:
            self._pending["answer"] = self._read(timeout=1)
        return "answer" in self._pending

    def wait(self) -> JobResult:
        """Wait for the last started child."""
        pending, self._pending = self._pending, None
        answer = pending.get("answer") or self._read(timeout=pending["timeout"] + 30)
        log = pending["log"].read_text(errors="replace") if pending["log"].exists() else ""
        return JobResult(answer["pid"], answer["status"], answer["timed_out"], log)

    def run(self, kind: str, faults: str | None = None, timeout: float = 120, **params) -> JobResult:
        self.start(kind, faults, timeout, **params)
        return self.wait()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- jobs (run in forked children) ---------------------------------------------------------------


def tiny_encoder(weights: str):
    from engine.encoders.config import EncoderConfig
    from engine.encoders.factory import create_encoder

    return create_encoder(EncoderConfig(name="test_efficientnet", weights=weights, device="cpu", batch_size=4))


def ingest_config(index_min_rows: int = 16):
    from engine.storage.index import IndexConfig
    from ingest.pipeline import IngestConfig

    return IngestConfig(write_every=4, decode_workers=2, index=IndexConfig(min_rows=index_min_rows, num_partitions=2, num_sub_vectors=4))


def job_ingest(job: dict) -> None:
    from engine.storage.database import Database
    from ingest.pipeline import ingest_folder

    ingest_folder(Database(job["db"]), job["folder"], ingest_config(job.get("index_min_rows", 16)), encoder=tiny_encoder(job["weights"]))


def job_hold_lock(job: dict) -> None:
    """Take the writer lock, say so through ``job['ready']``, and hold it until killed."""
    from engine.storage.lock import writer_lock

    with writer_lock(job["db"], "test holder"):
        Path(job["ready"]).write_text(str(os.getpid()))
        time.sleep(job.get("hold", 60))


def _die() -> None:
    os.kill(os.getpid(), 9)


def job_train(job: dict) -> None:
    """Train a head on the synthetic model; ``job['kill_at']`` names the moment to die."""
    import torch

    import engine.training.config as training
    from engine.storage.database import Database
    from engine.training.head import train_head

    db = Database(job["db"])
    parent = db.resolve_model(job["parent"])
    kill_at, kill_epoch = job["kill_at"].partition(":")[::2]
    progress = None
    if kill_at == "epoch":  # after the epoch's checkpoint is on disk
        progress = lambda event: _die() if event.task == "train" and event.done == int(kill_epoch) else None  # noqa: E731
    elif kill_at == "checkpoint":  # a torn checkpoint write: half a temporary file, the old checkpoint kept
        original_save, saves = torch.save, {"n": 0}

        def torn_save(obj, path, *args, **kwargs):
            saves["n"] += 1
            original_save(obj, path, *args, **kwargs)
            if str(path).endswith(".tmp") and saves["n"] == int(kill_epoch):
                Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
                _die()

        torch.save = torn_save
    elif kill_at == "reembed":  # half of the new version's vectors written
        original_write = Database.write_vectors

        def half_write(self, model, image_ids, metadata, vectors):
            if model.id != parent.id:
                half = len(image_ids) // 2
                original_write(self, model, image_ids[:half], metadata.slice(0, half), vectors[:half])
                _die()
            original_write(self, model, image_ids, metadata, vectors)

        Database.write_vectors = half_write
    elif kill_at in ("before_model_row", "after_model_row"):
        original_add = Database.add_model

        def add_and_die(self, record):
            if record.id != parent.id:
                if kill_at == "after_model_row":
                    original_add(self, record)
                _die()
            original_add(self, record)

        Database.add_model = add_and_die
    from engine.encoders.config import HeadConfig

    config = training.TrainConfig(**job["config"], head=HeadConfig(**job.get("head", {})))
    train_head(db, parent, config, progress=progress)


def job_decide(job: dict) -> None:
    """Decide a review item whose image joins the catalogue; the job's faults name the moment to die."""
    from engine.evaluation.detect import Decision, decide
    from engine.storage.database import Database
    from ingest.pipeline import add_to_catalogue

    db = Database(job["db"])
    encoder = tiny_encoder(job["weights"])
    join = lambda path, label: add_to_catalogue(db, path, label, encoder)  # noqa: E731
    decide(db, Decision(job["review_id"], job["status"], job.get("label"), "tester"), join)


EDIT_LABEL = "jacket"


def job_edit(job: dict) -> None:
    """One catalogue write (``job['op']``: relabel, delete, sync, refresh, or audit: the audit run, then its first
    finding by id relabelled through an audit decision) on a database with several versions."""
    from engine.catalogue.edits import Selection, delete, relabel
    from engine.storage.database import Database
    from engine.versions.coverage import bring_in_step
    from ingest.sync import sync_folder

    db = Database(job["db"])
    if job["op"] == "relabel":
        relabel(db, Selection(where="label = 'coat'"), EDIT_LABEL)
    elif job["op"] == "delete":
        delete(db, Selection(where="label = 'bag'"))
    elif job["op"] == "sync":
        sync_folder(db, job["folder"], ingest_config(), tiny_encoder(job["weights"]))
    elif job["op"] == "refresh":
        bring_in_step(db)
    elif job["op"] == "audit":
        from engine.audit import AuditConfig, AuditDecision, audit_frame, decide, run_audit

        if not audit_frame(db, status=None).height:  # a run killed after writing its findings is not repeated
            run_audit(db, config=AuditConfig(k=3, headroom=5, kinds=("label-mistake",)))
        first = audit_frame(db, status=None).sort("id").row(0, named=True)
        if first["status"] == "open":
            decide(db, AuditDecision(first["id"], "relabel", label=EDIT_LABEL, decided_by="harness"))
    else:
        raise ValueError(f"unknown edit {job['op']!r}")


JOBS = {"ingest": job_ingest, "hold_lock": job_hold_lock, "train": job_train, "decide": job_decide, "edit": job_edit}


# ---- data and kill plans -------------------------------------------------------------------------


def make_fault_folder(target: Path, per_class: int = 4, classes: tuple[str, ...] = ("bag", "coat", "dress", "sandal")) -> Path:
    """A small labelled catalogue with a duplicate and three broken files: every write path is exercised."""
    target = Path(target)
    for cls in classes:
        (target / cls).mkdir(parents=True, exist_ok=True)
        for source in sorted((SAMPLES / cls).glob("*.png"))[:per_class]:
            shutil.copy(source, target / cls / source.name)
    first = sorted((target / classes[0]).glob("*.png"))[0]
    shutil.copy(first, target / classes[-1] / f"zz_duplicate_of_{first.name}")
    (target / "broken").mkdir(exist_ok=True)
    for name in ("zero_byte.jpg", "truncated.jpg", "text_named.jpg"):
        shutil.copy(CORPUS / "bad" / name, target / "broken" / name)
    return target


# How often each point is passed in an ingest of make_fault_folder() with ingest_config() (counted:
# decode 16 images + 1 duplicate + 3 broken files; 4 batches of 4; 4 writes; 3 tables compacted).
POINT_HITS = {
    "ingest.decode": 20,
    "ingest.encode": 4,
    "ingest.write": 4,
    "store.images_written": 4,
    "store.vectors_written": 4,
    "ingest.errors": 4,
    "ingest.index": 1,
    "ingest.optimize": 3,
    "ingest.done": 1,
}
KILLS_PER_POINT = {
    "ingest.decode": 3, "ingest.encode": 2, "ingest.write": 2, "store.images_written": 4,
    "store.vectors_written": 3, "ingest.errors": 2, "ingest.index": 1, "ingest.optimize": 3,
}


def kill_plan(seed: int, kills_per_point: dict[str, int] = KILLS_PER_POINT) -> list[str]:
    """Seeded ``point@hit=kill`` specs, distinct hits per point, spread over every stage."""
    rng = random.Random(seed)
    plan = []
    for point, count in kills_per_point.items():
        hits = rng.sample(range(1, POINT_HITS[point] + 1), min(count, POINT_HITS[point]))
        plan.extend(f"{point}@{hit}=kill" for hit in sorted(hits))
    return plan


# ---- checking a database -------------------------------------------------------------------------

VOLATILE = {"ingested_at", "when"}


def _rows(table, key: str) -> list[dict]:
    rows = table.search().limit(None).to_arrow().to_pylist()
    for row in rows:
        for name in VOLATILE & row.keys():
            del row[name]
    return sorted(rows, key=lambda r: r[key])


def snapshot(db_path: Path | str) -> dict:
    """Every table of a database in comparable form: volatile timestamps dropped, rows sorted by key."""
    import numpy as np

    from engine.storage.database import Database
    from engine.storage.index import has_vector_index

    db = Database(db_path)
    shot = {"tables": db.table_names(), "images": _rows(db.images, "id"), "errors": _rows(db.errors, "path"),
            "models": sorted(m.id for m in db.find_models()), "embeddings": {}, "vectors": {}, "indexed": {}}
    for model in db.find_models():
        table = db.embeddings(model)
        rows = _rows(table, "image_id")
        shot["vectors"][model.id] = np.array([row.pop("vector") for row in rows], dtype=np.float32).reshape(len(rows), model.dim)
        shot["embeddings"][model.id] = rows
        shot["indexed"][model.id] = has_vector_index(table)
    return shot


def integrity_problems(shot: dict, complete: bool = True) -> list[str]:
    """What is wrong with a snapshot; ``complete`` also demands a vector for every image."""
    import schemas

    problems = []
    image_ids = [row["id"] for row in shot["images"]]
    if len(image_ids) != len(set(image_ids)):
        problems.append(f"duplicate image rows: {len(image_ids) - len(set(image_ids))}")
    error_paths = [row["path"] for row in shot["errors"]]
    if len(error_paths) != len(set(error_paths)):
        problems.append("duplicate error rows")
    for model_id, rows in shot["embeddings"].items():
        ids = [row["image_id"] for row in rows]
        if len(ids) != len(set(ids)):
            problems.append(f"{model_id}: duplicate embeddings: {len(ids) - len(set(ids))}")
        orphans = set(ids) - set(image_ids)
        if orphans:
            problems.append(f"{model_id}: {len(orphans)} orphan embeddings (no image row)")
        missing = set(image_ids) - set(ids)
        if complete and missing:
            problems.append(f"{model_id}: {len(missing)} images without a vector")
    tables = {name[len(schemas.EMBEDDINGS_PREFIX):] for name in shot["tables"] if name.startswith(schemas.EMBEDDINGS_PREFIX)}
    known_tables = {schemas.embeddings_table_name(m)[len(schemas.EMBEDDINGS_PREFIX):] for m in shot["models"]}
    if complete and tables - known_tables:
        problems.append(f"embeddings tables without a model row: {sorted(tables - known_tables)}")
    return problems


def differences(shot: dict, clean: dict, atol: float = 1e-5) -> list[str]:
    """How a snapshot differs from a clean run's: rows, errors, models, vectors, index presence."""
    import numpy as np

    found = []
    for key in ("images", "errors", "models", "embeddings", "indexed"):
        if shot[key] != clean[key]:
            found.append(f"{key} differ from the clean run")
    for model_id, vectors in clean["vectors"].items():
        other = shot["vectors"].get(model_id)
        if other is None or other.shape != vectors.shape or not np.allclose(other, vectors, atol=atol):
            found.append(f"vectors of {model_id} differ from the clean run")
    return found
