"""Ingest end to end with a tiny timm encoder: errors recorded, idempotence, increments, resume after kill -9."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import polars as pl
import pytest

from engine.search.searcher import Searcher
from engine.storage.database import Database
from ingest.pipeline import IngestConfig, ingest_folder
from tests.support.paths import CORPUS, REPO, SAMPLES


def embedded_rows(db: Database, model) -> pl.DataFrame:
    return pl.from_arrow(db.embeddings(model).search().select(["image_id", "path", "label"]).limit(None).to_arrow())


def test_corpus_ingest_records_every_bad_file_and_goes_on(db, tiny_encoder):
    report = ingest_folder(db, CORPUS, encoder=tiny_encoder)
    good = sorted((CORPUS / "good").rglob("*.*"))
    bad = sorted((CORPUS / "bad").rglob("*.*"))
    assert (report.total, report.encoded, report.errors) == (len(good) + len(bad), len(good), len(bad))
    errors = db.errors_frame()
    assert sorted(errors["path"]) == sorted(str(p) for p in bad)
    reasons = dict(zip(errors["path"], errors["reason"]))
    assert "decompression bomb" in reasons[str(CORPUS / "bad" / "bomb.png")]
    assert "truncated" in reasons[str(CORPUS / "bad" / "truncated.jpg")]
    images = db.images_frame()
    assert images.height == len(good)
    exif = images.filter(pl.col("path").str.ends_with("exif_rotated.jpg")).row(0, named=True)
    assert (exif["width"], exif["height"], exif["label"]) == (32, 64, "good")
    assert set(images["mode"]) >= {"CMYK", "I;16", "P", "RGBA", "L", "RGB"}


def test_reingest_is_idempotent_and_increments_encode_only_new_files(tmp_path, db, tiny_encoder):
    folder = tmp_path / "catalogue"
    shutil.copytree(SAMPLES, folder)
    extra = sorted(folder.glob("bag/*.png"))[:3]
    held_back = tmp_path / "later"
    held_back.mkdir()
    for path in extra:
        shutil.move(path, held_back / path.name)

    first = ingest_folder(db, folder, IngestConfig(split="train"), encoder=tiny_encoder)
    assert (first.encoded, first.skipped) == (117, 0)
    model = db.resolve_model()
    before = embedded_rows(db, model)

    again = ingest_folder(db, folder, IngestConfig(split="train"), encoder=tiny_encoder)
    assert (again.encoded, again.skipped) == (0, 117)
    assert embedded_rows(db, model).sort("image_id").equals(before.sort("image_id"))

    for path in held_back.iterdir():
        shutil.move(path, folder / "bag" / path.name)
    more = ingest_folder(db, folder, IngestConfig(split="train"), encoder=tiny_encoder)
    assert (more.encoded, more.skipped) == (3, 117)
    after = embedded_rows(db, model)
    assert after.height == 120 and after["image_id"].n_unique() == 120
    assert db.images.count_rows() == 120


def test_duplicate_content_is_stored_once(tmp_path, db, tiny_encoder):
    folder = tmp_path / "dups"
    (folder / "a").mkdir(parents=True)
    source = sorted(SAMPLES.glob("dress/*.png"))[0]
    shutil.copy(source, folder / "a" / "one.png")
    shutil.copy(source, folder / "a" / "two.png")
    report = ingest_folder(db, folder, encoder=tiny_encoder)
    assert (report.encoded, report.skipped) == (1, 1)
    assert db.images.count_rows() == 1


def test_a_failed_write_loses_nothing_and_a_rerun_completes(tmp_path, db, tiny_encoder, monkeypatch):
    calls = {"n": 0}
    original = Database.write_embedded

    def failing(self, model, rows, vectors):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return original(self, model, rows, vectors)

    monkeypatch.setattr(Database, "write_embedded", failing)
    with pytest.raises(OSError, match="disk full"):
        ingest_folder(db, SAMPLES, IngestConfig(write_every=32), encoder=tiny_encoder)
    monkeypatch.setattr(Database, "write_embedded", original)
    partial = db.embeddings(db.resolve_model()).count_rows()
    assert 0 < partial < 120
    report = ingest_folder(db, SAMPLES, IngestConfig(write_every=32), encoder=tiny_encoder)
    assert report.encoded == 120 - partial
    assert embedded_rows(db, db.resolve_model())["image_id"].n_unique() == db.embeddings(db.resolve_model()).count_rows() == 120


KILLED_INGEST = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from engine.encoders.config import EncoderConfig
    from engine.encoders.factory import create_encoder
    from engine.storage.database import Database
    from ingest.pipeline import IngestConfig, ingest_folder

    original = Database.write_embedded
    calls = {{"n": 0}}

    def write_then_die(self, model, rows, vectors):
        calls["n"] += 1
        if calls["n"] == 3:
            # images of this batch are committed, their vectors are not: the worst moment to die
            import pyarrow as pa, schemas
            self.images.merge_insert("id").when_not_matched_insert_all().execute(
                pa.Table.from_pylist(list(rows), schema=schemas.IMAGES_SCHEMA))
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, model, rows, vectors)

    Database.write_embedded = write_then_die
    encoder = create_encoder(EncoderConfig(name="test_efficientnet", weights={weights!r}, device="cpu", batch_size=8))
    ingest_folder(Database({db!r}), {folder!r}, IngestConfig(write_every=16), encoder=encoder)
    """
)


def test_kill_9_mid_ingest_resumes_without_duplicates_or_losses(tmp_path, tiny_encoder, tiny_weights):
    db_path = tmp_path / "db"
    script = KILLED_INGEST.format(repo=str(REPO), weights=str(tiny_weights), db=str(db_path), folder=str(SAMPLES))
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]

    db = Database(db_path)
    model = db.resolve_model()
    killed_with = db.embeddings(model).count_rows()
    assert killed_with == 32  # two batches of 16 committed before the kill
    assert db.images.count_rows() == 48  # the third batch's images made it, their vectors did not

    report = ingest_folder(db, SAMPLES, IngestConfig(write_every=16), encoder=tiny_encoder)
    assert report.encoded == 120 - 32
    rows = embedded_rows(db, model)
    assert rows.height == 120 and rows["image_id"].n_unique() == 120
    assert db.images.count_rows() == 120

    # the vectors written after the kill are the ones a clean run writes
    clean = Database(tmp_path / "clean")
    ingest_folder(clean, SAMPLES, encoder=tiny_encoder)
    searcher_a, searcher_b = Searcher(db, model), Searcher(clean, clean.resolve_model())
    ids = sorted(rows["image_id"])
    np.testing.assert_allclose(searcher_a.vectors_of(ids), searcher_b.vectors_of(ids), atol=1e-5)


def test_unreadable_file_is_an_error_row(tmp_path, db, tiny_encoder):
    folder = tmp_path / "links"
    folder.mkdir()
    shutil.copy(sorted(SAMPLES.glob("coat/*.png"))[0], folder / "fine.png")
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")  # unreadable whoever runs the test
    (folder / "loop").symlink_to(folder)  # a folder link loop must not be followed
    report = ingest_folder(db, folder, encoder=tiny_encoder)
    assert (report.total, report.encoded, report.errors) == (2, 1, 1)
    errors = db.errors_frame()
    assert errors["path"].to_list() == [str(folder / "dangling.png")]
    assert "cannot read file" in errors["reason"][0]


def test_an_error_row_is_cleared_once_the_file_is_fixed(tmp_path, db, tiny_encoder):
    folder = tmp_path / "fixable"
    folder.mkdir()
    broken = folder / "x.png"
    broken.write_bytes(b"")
    ingest_folder(db, folder, encoder=tiny_encoder)
    assert db.errors_frame().height == 1
    shutil.copy(sorted(SAMPLES.glob("coat/*.png"))[0], broken)
    ingest_folder(db, folder, encoder=tiny_encoder)
    assert db.errors_frame().height == 0 and db.images.count_rows() == 1


def test_images_whose_resize_would_explode_are_error_rows(tmp_path, db, tiny_encoder):
    """A 666-byte 200000x1 PNG passes the decoder's pixel limit, but the resize to the model's short side would
    allocate gigabytes: it is an error row naming the reason, and the rest of the folder is ingested."""
    import resource

    from PIL import Image

    folder = tmp_path / "strips"
    folder.mkdir()
    for name, size in {"wide.png": (200_000, 1), "tall.png": (1, 200_000), "strip.png": (20_000, 1), "panorama.png": (30_000, 20), "tiny.png": (1, 1)}.items():
        Image.new("RGB", size, (120, 40, 200)).save(folder / name)
    assert (folder / "wide.png").stat().st_size < 2_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = ingest_folder(db, folder, IngestConfig(optimize=False), encoder=tiny_encoder)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    errors = dict(zip(db.errors_frame()["path"], db.errors_frame()["reason"]))
    assert report.errors == 3 and report.encoded == 2  # the panorama and the 1x1 image are fine
    for name in ("wide.png", "tall.png", "strip.png"):
        assert "aspect ratio too extreme" in errors[str(folder / name)]
    assert grown_mb < 1_500, grown_mb  # the strips cost nothing (a 20000x1 strip alone took 3.4 GB before)


def test_error_rows_of_files_deleted_since_are_forgotten_on_the_next_ingest(tmp_path, db, tiny_encoder):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "other.jpg").write_bytes(b"")
    ingest_folder(db, folder, IngestConfig(optimize=False), encoder=tiny_encoder)
    assert db.errors_frame().height == 2
    (folder / "broken.png").unlink()
    ingest_folder(db, folder, IngestConfig(optimize=False), encoder=tiny_encoder)
    assert db.errors_frame()["path"].to_list() == [str(folder / "other.jpg")]  # the deleted file's row stayed forever before


def test_rows_are_committed_by_time_as_well_as_by_count(tmp_path, tiny_encoder):
    """With the count threshold out of reach, the time threshold still commits batch by batch (a kill lost up
    to 255 encoded images of work before)."""
    from engine.storage.database import Database

    by_count, by_time = Database(tmp_path / "a"), Database(tmp_path / "b")
    slow = dataclasses.replace(tiny_encoder, batch_size=4)
    ingest_folder(by_count, SAMPLES / "bag", IngestConfig(optimize=False, write_every=10**6), encoder=slow)
    ingest_folder(by_time, SAMPLES / "bag", IngestConfig(optimize=False, write_every=10**6, write_every_seconds=0.0), encoder=slow)
    versions = lambda db: db.embeddings(db.resolve_model()).version  # noqa: E731
    assert versions(by_time) > versions(by_count) + 1


def test_maintenance_runs_when_due_even_if_nothing_new_was_encoded(tmp_path, tiny_encoder):
    """A resume after a kill during optimize encodes nothing; it used to skip the compaction for good."""
    from engine.storage.database import Database

    db = Database(tmp_path / "db")
    ingest_folder(db, SAMPLES / "bag", IngestConfig(optimize=False, write_every=3), encoder=tiny_encoder)
    table = db.embeddings(db.resolve_model())
    assert table.stats()["fragment_stats"]["num_small_fragments"] > 1
    report = ingest_folder(db, SAMPLES / "bag", IngestConfig(), encoder=tiny_encoder)
    table = db.embeddings(db.resolve_model())  # the handle at the newest version
    assert report.encoded == 0 and table.stats()["fragment_stats"]["num_small_fragments"] <= 1
