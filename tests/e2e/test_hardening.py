"""Hardening (issue 10): bad input of every kind, kill -9 at seeded points, full disk, read-only folders,
concurrent writers and searches during an ingest. Nothing may be lost, duplicated or left half-written.

The kill tests fork real ingests from a pre-loaded zygote (tests/fault_harness.py) and kill them with
SIGKILL at named fault points (engine/faults.py); LOOKALIKE_FAULT_SEED picks other kill points.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from engine.core.faults import FAULT_POINTS, parse_faults, reset_fault_counts
from engine.encoders.config import HeadConfig
from engine.encoders.heads import load_head
from engine.evaluation.detect import Decision, decide, enqueue_for_review, review_frame
from engine.media.decode import DecodeError, content_id, decode_image
from engine.media.scan import SourceFile
from engine.search.searcher import Searcher
from engine.storage.database import Database
from engine.storage.lock import LOCK_FILE, DatabaseBusyError, DatabaseNotWritableError, writer_lock
from engine.training.config import TrainConfig
from engine.training.head import train_head
from ingest.pipeline import add_to_catalogue, ingest_folder
from ingest.stages import map_file
from tests.support import fault_harness as harness
from tests.support.paths import CORPUS, QUERIES, REPO, SAMPLES
from tests.support.synthetic import clustered_vectors, make_vector_model, synthetic_rows


def _load_make_corpus():
    spec = importlib.util.spec_from_file_location("make_corpus", REPO / "tests" / "data" / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


filesystem_cases = _load_make_corpus().filesystem_cases

FAULT_SEED = int(os.environ.get("LOOKALIKE_FAULT_SEED", "10"))
KILL_PLAN = harness.kill_plan(FAULT_SEED)


def _permissions_ignored() -> bool:
    """Whether this process reads a mode-000 file anyway (root, or CAP_DAC_OVERRIDE)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
            return True
        except PermissionError:
            return False
        finally:
            probe.chmod(0o600)


RUNNING_AS_ROOT = _permissions_ignored()  # root (or CAP_DAC_OVERRIDE): modes do not stop it


@pytest.fixture(autouse=True)
def _no_faults(monkeypatch):
    monkeypatch.delenv("LOOKALIKE_FAULTS", raising=False)
    reset_fault_counts()
    yield
    reset_fault_counts()


# ---- bad input: every kind in the corpus, with its outcome -----------------------------------------

# good file -> (width, height, source mode) after decoding (EXIF orientation applied)
GOOD = {
    "garments/rgb.jpg": (64, 64, "RGB"),
    "garments/gray.png": (64, 64, "L"),
    "garments/rgba.png": (64, 64, "RGBA"),
    "garments/one_pixel.png": (1, 1, "RGB"),
    "garments/wide_30000x20.png": (30000, 20, "L"),
    "garments/exif_rotated.jpg": (32, 64, "RGB"),  # stored 64x32, orientation 6
    "garments/exif_rotated_180.jpg": (64, 32, "RGB"),  # orientation 3
    "garments/exif_rotated_270.jpg": (32, 64, "RGB"),  # orientation 8
    "garments/animated.gif": (64, 64, "P"),  # first frame
    "garments/multipage.tif": (64, 64, "RGB"),  # first page
    "garments/lossy.webp": (64, 64, "RGB"),
    "garments/photo.avif": (64, 64, "RGB"),
    "bags/palette_transparent.png": (64, 64, "P"),
    "bags/cmyk.jpg": (64, 64, "CMYK"),
    "bags/ycck.jpg": (64, 64, "CMYK"),  # Adobe transform 2
    "bags/sixteen_bit.png": (64, 64, "I;16"),
    "bags/float32.tif": (64, 64, "F"),
    "bags/one_bit.png": (64, 64, "1"),
    "bags/gray_alpha.png": (64, 64, "LA"),
    "bags/progressive.jpg": (64, 64, "RGB"),
    "bags/plain.bmp": (64, 64, "RGB"),
}
# bad file -> the reason its error row gives
BAD = {
    "zero_byte.jpg": "empty file (0 bytes)",
    "truncated.jpg": "image file is truncated",
    "bad_crc.png": "corrupt image",
    "text_named.jpg": "not an image Pillow can identify",
    "html_named.png": "not an image Pillow can identify",
    "bomb.png": "decompression bomb",
    "extreme_aspect.png": "aspect ratio too extreme",
    "heic_unsupported.heic": "HEIF/HEIC image (brand 'heic'): this Pillow build cannot decode it",
    "png_signature_only.png": "not an image Pillow can identify",
    "tiff_garbage.tif": "not an image Pillow can identify",
    # found by fuzzing: libavif raises RuntimeError, which stopped the whole ingest before
    "avif_damaged.avif": "corrupt image (RuntimeError): Failed to decode frame 0" if features.check("avif") else "not an image Pillow can identify",
}
CODEC_OF = {"garments/lossy.webp": "webp", "garments/photo.avif": "avif"}


def test_the_corpus_holds_every_kind_and_nothing_else():
    good = {p.relative_to(CORPUS / "good").as_posix() for p in (CORPUS / "good").rglob("*.*")}
    bad = {p.name for p in (CORPUS / "bad").iterdir()}
    assert good == set(GOOD) and bad == set(BAD)
    assert len(GOOD) + len(BAD) >= 15


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_kind_decodes_with_its_shape_and_mode(name):
    if name in CODEC_OF and not features.check(CODEC_OF[name]):
        with pytest.raises(DecodeError, match="not an image Pillow can identify"):
            decode_image((CORPUS / "good" / name).read_bytes())
        pytest.skip(f"this Pillow build has no {CODEC_OF[name]} codec: the file is a clear error row")
    decoded = decode_image((CORPUS / "good" / name).read_bytes())
    assert (decoded.width, decoded.height, decoded.mode) == GOOD[name]
    assert decoded.image.mode == "RGB" and decoded.image.size == (decoded.width, decoded.height)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_kind_gives_its_reason(name, tiny_encoder):
    """Decoding refuses it, or (an extreme aspect ratio) the model's preprocessing does, before allocating."""
    with pytest.raises(DecodeError) as caught:
        tiny_encoder.preprocess(decode_image((CORPUS / "bad" / name).read_bytes()).image)
    assert BAD[name] in str(caught.value)


@pytest.mark.parametrize("name,turn", [
    ("exif_rotated.jpg", Image.Transpose.ROTATE_270),  # orientation 6: turn 90 degrees clockwise
    ("exif_rotated_180.jpg", Image.Transpose.ROTATE_180),  # orientation 3
    ("exif_rotated_270.jpg", Image.Transpose.ROTATE_90),  # orientation 8: turn 90 degrees anticlockwise
])
def test_exif_rotated_pixels_are_turned_upright(name, turn):
    path = CORPUS / "good" / "garments" / name
    stored = Image.open(path).convert("RGB")  # pixels as stored, orientation ignored
    expected = np.asarray(stored.transpose(turn), dtype=np.int16)
    decoded = np.asarray(decode_image(path.read_bytes()).image, dtype=np.int16)
    assert decoded.shape == expected.shape and np.abs(decoded - expected).max() == 0
    assert np.abs(np.asarray(stored.resize(decoded.shape[1::-1]), dtype=np.int16) - decoded).mean() > 5  # really turned


# ---- property-based: generated images, damaged files ---------------------------------------------

MODE_FORMATS = [("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("1", "PNG"), ("LA", "PNG"),
                ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "TIFF"), ("F", "TIFF"), ("I", "TIFF"),
                ("RGBA", "TIFF"), ("RGB", "BMP"), ("P", "GIF"), ("RGB", "WEBP"), ("RGBA", "WEBP")]


def _random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65536, size=(height, width))
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return Image.fromarray(values.astype(dtype), mode if mode != "I;16" else None)
    rgba = Image.fromarray(rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8), "RGBA")
    return rgba.convert(mode) if mode != "P" else rgba.convert("RGB").convert("P", palette=Image.ADAPTIVE, colors=16)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(mode_format=st.sampled_from(MODE_FORMATS), width=st.integers(1, 48), height=st.integers(1, 48), seed=st.integers(0, 2**16))
def test_property_any_mode_and_size_decodes_to_rgb_of_that_size(mode_format, width, height, seed):
    mode, image_format = mode_format
    if image_format == "WEBP" and not features.check("webp"):
        return
    image = _random_image(mode, width, height, seed)
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    decoded = decode_image(buffer.getvalue())
    assert decoded.image.mode == "RGB" and decoded.image.size == (width, height) == (decoded.width, decoded.height)
    if (mode, image_format) == ("RGB", "PNG"):  # lossless and already RGB: the very pixels
        assert np.array_equal(np.asarray(decoded.image), np.asarray(image))


GOOD_BYTES = [p.read_bytes() for p in sorted((CORPUS / "good").rglob("*.*"))]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(GOOD_BYTES) - 1),
    edits=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=8), st.booleans()), max_size=4),
    keep=st.one_of(st.just(1.0), st.floats(0, 1)),
)
def test_property_damaged_files_decode_or_give_a_decode_error(index, edits, keep):
    data = bytearray(GOOD_BYTES[index])
    for where, piece, insert in edits:  # overwrite or insert a few bytes anywhere, then maybe truncate
        at = int(where * (len(data) - 1))
        data[at : at if insert else at + len(piece)] = piece
    data = data[: int(len(data) * keep)]
    try:
        decoded = decode_image(bytes(data), max_pixels=10_000_000)
    except DecodeError as exc:
        assert str(exc)  # a reason for the error row
        return
    assert decoded.image.mode == "RGB" and decoded.width >= 1 and decoded.height >= 1


def test_ycck_colours_match_the_cmyk_original():
    ycck = np.asarray(decode_image((CORPUS / "good" / "bags" / "ycck.jpg").read_bytes()).image, dtype=np.float64)
    cmyk = np.asarray(decode_image((CORPUS / "good" / "bags" / "cmyk.jpg").read_bytes()).image, dtype=np.float64)
    assert np.abs(ycck - cmyk).mean() < 3  # JPEG noise only; a YCCK read as CMYK is off by ~100


def test_corpus_ingest_gives_one_row_per_good_kind_and_one_error_per_bad_kind(db, tiny_encoder):
    report = ingest_folder(db, CORPUS, encoder=tiny_encoder)
    assert (report.encoded, report.errors) == (len(GOOD), len(BAD))
    reasons = dict(zip(db.errors_frame()["path"], db.errors_frame()["reason"]))
    assert {Path(p).name: r for p, r in reasons.items()}.keys() == BAD.keys()
    for path, reason in reasons.items():
        assert BAD[Path(path).name] in reason
    assert db.images.count_rows() == db.embeddings(db.resolve_model()).count_rows() == len(GOOD)


@pytest.fixture
def fs_cases(tmp_path):
    folder = tmp_path / "fs"
    made = filesystem_cases(folder, sorted(SAMPLES.glob("coat/*.png"))[0])
    yield folder, made
    for path in folder.rglob("*"):
        if not path.is_symlink() and path.exists():
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_file_system_kinds_each_get_their_outcome_and_the_run_goes_on(db, tiny_encoder, fs_cases):
    folder, made = fs_cases
    assert {"long_name", "symlink_loop_file", "symlink_loop_folder", "dangling_symlink", "named_pipe", "permission_000"} <= made.keys()
    report = ingest_folder(db, folder, encoder=tiny_encoder)
    reasons = {Path(os.fsencode(p).decode("utf-8", "replace")).name: r for p, r in zip(db.errors_frame()["path"], db.errors_frame()["reason"])}
    assert "Too many levels of symbolic links" in reasons["loop_a.png"] and "Too many levels" in reasons["loop_b.png"]
    assert "No such file or directory" in reasons["dangling.png"]
    assert reasons["named_pipe.png"] == "not a regular file (pipe, socket or device)"
    paths = db.images_frame()["path"].to_list()
    assert not any("loop_dir" in p for p in paths)  # a folder link loop is not followed
    readable = {"non_utf8_name", "non_utf8_folder", "long_name", "uppercase_suffix"} & made.keys()
    if RUNNING_AS_ROOT:
        assert "mode_000.png" not in reasons  # root reads mode-000 files: ingested like any other
        readable.add("permission_000")
    else:
        assert "Permission denied" in reasons["mode_000.png"]
    stored_names = {Path(p).name for p in paths}
    expected_names = {made[kind].name for kind in readable - {"non_utf8_name"}}
    if "non_utf8_name" in made:  # the undecodable byte is kept visibly as \xe9; nothing crashes
        expected_names.add("caf\\xe9_latin1.png")
    assert stored_names == expected_names
    if "non_utf8_folder" in made:
        assert "\\xff\\xfe_class" in set(db.images_frame()["label"].to_list())
    assert (report.encoded, report.skipped) == (len(readable), 0)
    assert report.errors == len(reasons) == 4 + (not RUNNING_AS_ROOT)


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="running as root (or with CAP_DAC_OVERRIDE): mode 000 does not stop this process from reading")
def test_permission_000_file_is_an_error_row_for_a_normal_user(db, tiny_encoder, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    path = folder / "secret.png"
    shutil.copy(sorted(SAMPLES.glob("bag/*.png"))[0], path)
    path.chmod(0)
    try:
        report = ingest_folder(db, folder, encoder=tiny_encoder)
    finally:
        path.chmod(0o644)
    assert report.errors == 1 and "Permission denied" in db.errors_frame()["reason"][0]


def test_a_file_rewritten_while_being_read_is_stored_whole_or_refused(tmp_path, tiny_encoder):
    path = tmp_path / "moving.png"
    versions = []
    for size, source in (((64, 64), "bag"), ((32, 48), "coat")):
        image = Image.open(sorted(SAMPLES.glob(f"{source}/*.png"))[0]).convert("RGB").resize(size)
        image.save(tmp_path / f"v{len(versions)}.png")
        versions.append((tmp_path / f"v{len(versions)}.png").read_bytes())
    by_id = {content_id(v): Image.open(tmp_path / f"v{i}.png").size for i, v in enumerate(versions)}
    path.write_bytes(versions[0])
    stop = threading.Event()

    def rewrite_in_place() -> None:  # truncate, write half, pause, write the rest: readers can see a torn file
        i = 0
        while not stop.is_set():
            data = versions[i % 2]
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                time.sleep(0.0005)
                handle.write(data[len(data) // 2 :])
            time.sleep(0.001)  # whole for a while, then rewritten again
            i += 1

    writer = threading.Thread(target=rewrite_in_place)
    writer.start()
    outcomes = {"whole": 0, "refused": 0}
    try:
        for _ in range(300):
            mapped = map_file(SourceFile(path, ("x",), None), tmp_path, tiny_encoder, set(), 10**8)
            if mapped.error is not None:
                outcomes["refused"] += 1
                assert mapped.error.startswith(("corrupt image", "empty file", "not an image")), mapped.error
            else:
                outcomes["whole"] += 1
                # the id is the hash of the very bytes decoded: a whole version, with that version's size
                assert (mapped.row["width"], mapped.row["height"]) == by_id[mapped.row["id"]]
    finally:
        stop.set()
        writer.join()
    assert outcomes["whole"] > 0, outcomes


# ---- fault plans -----------------------------------------------------------------------------------


def test_kill_plan_is_seeded_and_covers_every_stage():
    assert KILL_PLAN == harness.kill_plan(FAULT_SEED) and len(KILL_PLAN) >= 20
    assert len(set(KILL_PLAN)) == len(KILL_PLAN)
    stages = {parse_faults(spec)[0].point for spec in KILL_PLAN}
    assert stages >= {"ingest.decode", "ingest.encode", "ingest.write", "store.images_written", "store.vectors_written", "ingest.index", "ingest.optimize"}
    assert harness.kill_plan(FAULT_SEED + 1) != KILL_PLAN


def test_fault_specs_are_validated_with_the_valid_choices():
    with pytest.raises(ValueError, match="ingest.decode"):
        parse_faults("ingest.nowhere@1=kill")
    with pytest.raises(ValueError, match="enospc"):
        parse_faults("ingest.write@1=explode")
    with pytest.raises(ValueError, match="positive integer"):
        parse_faults("ingest.write@0=kill")
    assert set(FAULT_POINTS) >= {p.point for p in parse_faults("ingest.write, store.images_written@3=enospc")}


# ---- kill -9 during ingest -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    with harness.Zygote(tmp_path_factory.mktemp("zygote")) as process:
        yield process


@pytest.fixture(scope="module")
def fault_folder(tmp_path_factory):
    return harness.make_fault_folder(tmp_path_factory.mktemp("faults") / "catalogue")


@pytest.fixture(scope="module")
def clean_run(zygote, fault_folder, tiny_weights, tmp_path_factory):
    """The snapshot of an ingest of the fault folder that nothing interrupted."""
    path = tmp_path_factory.mktemp("clean") / "db"
    result = zygote.run("ingest", db=path, folder=fault_folder, weights=tiny_weights)
    assert result.status == 0, result.log[-3000:]
    shot = harness.snapshot(path)
    assert harness.integrity_problems(shot) == []
    assert len(shot["images"]) == 16 and len(shot["errors"]) == 3 and all(shot["indexed"].values())
    return path, shot


@pytest.mark.parametrize("spec", KILL_PLAN)
def test_kill_9_then_rerun_gives_exactly_the_clean_database(spec, zygote, fault_folder, tiny_weights, clean_run, tmp_path):
    _, clean = clean_run
    path = tmp_path / "db"
    killed = zygote.run("ingest", spec, db=path, folder=fault_folder, weights=tiny_weights)
    assert killed.killed, f"{spec} did not kill the ingest (status {killed.status}): {killed.log[-2000:]}"

    after_kill = harness.snapshot(path)  # reopening works
    assert harness.integrity_problems(after_kill, complete=False) == []  # no duplicates, no orphan embeddings
    committed_errors = {(r["path"], r["reason"]) for r in after_kill["errors"]}
    assert committed_errors <= {(r["path"], r["reason"]) for r in clean["errors"]}

    rerun = zygote.run("ingest", db=path, folder=fault_folder, weights=tiny_weights)
    assert rerun.status == 0, rerun.log[-3000:]
    final = harness.snapshot(path)
    assert harness.integrity_problems(final) == []
    assert harness.differences(final, clean) == []


def test_a_table_killed_before_its_first_commit_is_created_on_next_use(tmp_path, tiny_encoder, fault_folder):
    # a kill inside create_table leaves <table>.lance/ with data but no version manifest: LanceDB
    # lists it and cannot open it; that must not stop the database from opening
    path = tmp_path / "db"
    Database(path)
    (path / "images.lance" / "data").mkdir(parents=True)
    db = Database(path)
    assert db.images.count_rows() == 0
    ingest_folder(db, fault_folder, harness.ingest_config(), encoder=tiny_encoder)
    assert harness.integrity_problems(harness.snapshot(path)) == []


def test_a_committed_table_that_cannot_be_opened_still_fails_loudly(tmp_path, tiny_encoder):
    path = tmp_path / "db"
    ingest_folder(Database(path), SAMPLES, encoder=tiny_encoder)
    for manifest in (path / "images.lance" / "_versions").glob("*.manifest"):
        manifest.write_bytes(b"not a manifest")
    with pytest.raises(Exception):  # noqa: B017 - whatever LanceDB raises for a damaged manifest; the point is that it raises
        Database(path).images.count_rows()


# ---- disk full, read-only folder -------------------------------------------------------------------


@pytest.mark.parametrize("fault,message", [
    ("store.images_written@2=enospc", "No space left on device"),
    ("store.images_written@2=lance_enospc", r"No space left on device \(os error 28\)\. Batches committed before the failure are kept"),
    ("ingest.write@2=erofs", "Read-only file system"),
    ("store.vectors_written@2=eio", "Input/output error"),
])
def test_disk_full_or_read_only_gives_a_clear_error_and_keeps_the_last_good_version(fault, message, tmp_path, tiny_encoder, monkeypatch, fault_folder):
    path = tmp_path / "db"
    config = harness.ingest_config()
    monkeypatch.setenv("LOOKALIKE_FAULTS", fault)
    with pytest.raises(DatabaseNotWritableError, match=message) as caught:
        ingest_folder(Database(path), fault_folder, config, encoder=tiny_encoder)
    assert "run the same ingest again to resume" in str(caught.value)
    monkeypatch.delenv("LOOKALIKE_FAULTS")

    db = Database(path)  # still opens
    model = db.resolve_model()
    shot = harness.snapshot(path)
    assert harness.integrity_problems(shot, complete=False) == []
    vectors = len(shot["embeddings"][model.id])
    assert vectors > 0  # the batches before the fault are kept and searchable
    found = Searcher(db, model).search_vectors(shot["vectors"][model.id][:1], k=3)
    assert found["image_id"][0] == shot["embeddings"][model.id][0]["image_id"]

    ingest_folder(db, fault_folder, config, encoder=tiny_encoder)
    final = harness.snapshot(path)
    assert harness.integrity_problems(final) == [] and len(final["images"]) == 16 and len(final["errors"]) == 3


def test_a_database_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, tiny_encoder):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the database folder should be")
    with pytest.raises(DatabaseNotWritableError, match="cannot write to database folder"):
        ingest_folder(_db_at(blocker / "db"), SAMPLES, encoder=tiny_encoder)


def _db_at(uri: Path):
    """A Database object for a path LanceDB cannot create (the lock is what must refuse it)."""
    db = Database.__new__(Database)
    db.uri = str(uri)
    return db


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="running as root (or with CAP_DAC_OVERRIDE): read-only modes do not stop this process; the EROFS fault case covers the error path")
def test_read_only_database_folder_is_refused_and_still_searchable(tmp_path, tiny_encoder, fault_folder):
    path = tmp_path / "db"
    ingest_folder(Database(path), fault_folder, harness.ingest_config(), encoder=tiny_encoder)
    before = harness.snapshot(path)
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)
    try:
        with pytest.raises(DatabaseNotWritableError, match="cannot write to database folder|Permission denied"):
            ingest_folder(Database(path), SAMPLES, harness.ingest_config(), encoder=tiny_encoder)
        db = Database(path)
        model = db.resolve_model()
        assert Searcher(db, model).search_vectors(before["vectors"][model.id][:1], k=1).height == 1
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert harness.differences(harness.snapshot(path), before) == []


# ---- concurrent writers and readers ----------------------------------------------------------------


def _wait_for_holder(path: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            holder = json.loads((path / LOCK_FILE).read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            holder = {}
        if holder.get("pid") and holder["pid"] != os.getpid():
            return holder
        time.sleep(0.02)
    raise AssertionError("the other writer never took the lock")


def test_a_second_ingest_is_refused_while_one_runs_and_a_killed_holder_leaves_no_stale_lock(
    zygote, fault_folder, tiny_weights, tiny_encoder, clean_run, tmp_path, caplog
):
    path = tmp_path / "db"
    pid = zygote.start("ingest", "ingest.write@2=sleep:60", db=path, folder=fault_folder, weights=tiny_weights)
    holder = _wait_for_holder(path)
    assert holder["pid"] == pid and holder["purpose"].startswith("ingest ")
    with pytest.raises(DatabaseBusyError, match=rf"being written by pid {pid} .*wait for it to finish"):
        ingest_folder(Database(path), fault_folder, harness.ingest_config(), encoder=tiny_encoder)
    os.kill(pid, 9)  # the holder dies without releasing anything
    assert zygote.wait().killed
    with caplog.at_level("WARNING", logger="engine.storage.lock"):
        ingest_folder(Database(path), fault_folder, harness.ingest_config(), encoder=tiny_encoder)
    assert f"stale writer lock of pid {pid}" in caplog.text
    final = harness.snapshot(path)
    assert harness.integrity_problems(final) == [] and harness.differences(final, clean_run[1]) == []


def test_writer_lock_is_exclusive_and_released(tmp_path):
    with writer_lock(str(tmp_path), "first") as record:
        assert record["pid"] == os.getpid()
        with pytest.raises(DatabaseBusyError, match="first"):
            with writer_lock(str(tmp_path), "second"):
                pass
    with writer_lock(str(tmp_path), "third"):
        pass
    assert (tmp_path / LOCK_FILE).read_text() == ""
    with writer_lock("s3://bucket/db", "remote") as record:
        assert record is None


def test_searches_during_an_ingest_never_see_a_broken_table(zygote, tiny_weights, tmp_path):
    path = tmp_path / "db"
    folder = tmp_path / "catalogue"
    shutil.copytree(SAMPLES, folder)
    query = clustered_vectors(2, 256, 2, seed=3)
    # pauses at two writes keep the ingest open long enough for searches to meet its intermediate states
    zygote.start("ingest", "ingest.write@1=sleep:0.5,ingest.write@4=sleep:0.5", db=path, folder=folder, weights=tiny_weights, index_min_rows=64)
    seen_counts: list[int] = []
    searches = 0
    db = Database(path)
    while not zygote.finished():
        try:
            model = db.resolve_model()
        except LookupError:  # the ingest has not registered its model yet
            time.sleep(0.01)
            continue
        count = db.embeddings(model).count_rows()
        found = Searcher(db, model).search_vectors(query, k=5)
        searches += 1
        for (_,), group in found.group_by(["query"]):
            assert group.height == min(5, count) or count != db.embeddings(model).count_rows()
            assert group["image_id"].n_unique() == group.height
            assert (np.diff(group["distance"].to_numpy()) >= -1e-6).all()
        seen_counts.append(count)
    result = zygote.wait()
    assert result.status == 0, result.log[-3000:]
    assert searches >= 2 and seen_counts == sorted(seen_counts)  # rows only ever grow under the reader
    assert len(set(seen_counts)) >= 2  # the searches really overlapped the ingest
    final = harness.snapshot(path)
    assert harness.integrity_problems(final) == [] and len(final["images"]) == 120
    found = Searcher(Database(path)).search_vectors(query, k=5)
    assert set(found["image_id"]) <= {row["id"] for row in final["images"]}


# ---- kill -9 during training and during a review decision ------------------------------------------


@pytest.fixture
def synthetic_db(tmp_path):
    db = Database(tmp_path / "train_db")
    labels = [f"c{i}" for i in range(4)]
    rows = synthetic_rows(160, labels, seed=1)
    vectors = clustered_vectors(160, 32, 4, seed=1)
    for row, i in zip(rows, range(160)):
        row.update(label=labels[i % 4], labels=[labels[i % 4]], split="train")
    model = make_vector_model(db, dim=32)
    db.write_embedded(model, rows, vectors)
    return db, model


TRAIN_CONFIG = {"epochs": 4, "batch_size": 32, "patience": 10, "device": "cpu"}


def _train_config() -> TrainConfig:
    return TrainConfig(**TRAIN_CONFIG, head=HeadConfig(out_dim=16, hidden_dim=32))


@pytest.mark.parametrize("kill_at", ["epoch:2", "checkpoint:3", "reembed", "before_model_row", "after_model_row"])
def test_training_killed_leaves_a_whole_model_version_or_none_and_resumes(kill_at, synthetic_db, zygote):
    db, parent = synthetic_db
    config = {**TRAIN_CONFIG, "head": HeadConfig(out_dim=16, hidden_dim=32)}
    job = zygote.run("train", db=db.uri, parent=parent.id, kill_at=kill_at, config={k: v for k, v in config.items() if k != "head"}, head={"out_dim": 16, "hidden_dim": 32})
    assert job.killed, job.log[-3000:]

    reopened = Database(db.uri)
    trained = [m for m in reopened.find_models() if m.id != parent.id]
    assert len(trained) <= 1  # a whole version or none
    for model in trained:
        assert reopened.embeddings(model).count_rows() == 160 and Path(model.weights_source).is_file()
    assert (kill_at == "after_model_row") == bool(trained)

    result = train_head(reopened, reopened.resolve_model(parent.id), _train_config())
    models = [m for m in reopened.find_models() if m.id != parent.id]
    assert [m.id for m in models] == [result.model.id]
    rows = pl.from_arrow(reopened.embeddings(result.model).search().select(["image_id"]).limit(None).to_arrow())
    assert rows.height == 160 and rows["image_id"].n_unique() == 160
    assert load_head(Path(result.model.weights_source)).config.out_dim == 16
    assert not list((Path(db.uri) / "checkpoints").glob("*.pt"))  # the run's checkpoint is gone once published
    shot = harness.snapshot(db.uri)
    assert harness.integrity_problems(shot) == []  # no embeddings table without its model row


@pytest.fixture
def review_db(zygote, fault_folder, tiny_weights, tmp_path, clean_run, tiny_encoder):
    path = tmp_path / "review_db"
    shutil.copytree(clean_run[0], path)
    db = Database(path)
    model = db.resolve_model()
    query = sorted(QUERIES.glob("*.png"))[0]
    image_id = content_id(query.read_bytes())
    predictions = pl.DataFrame({"query": [0], "distractor_score": [0.9], "is_distractor": [True], "suggested": [["bag"]]})
    assert enqueue_for_review(db, model, [image_id], [str(query)], predictions, 0.5) == 1
    return db, image_id


# mid join: the image row is in, its vector is not; before the other versions: the join's own version has it; after
# the join: every version has it, the decision is not stored
@pytest.mark.parametrize("faults,status", [("store.images_written@1=kill", "added"), ("ingest.versions@1=kill", "added"),
                                           ("ingest.done@1=kill", "added"), ("ingest.done@1=kill", "assigned")])
def test_review_decision_killed_is_stored_whole_or_not_and_can_be_made_again(faults, status, review_db, zygote, tiny_weights, tiny_encoder):
    db, image_id = review_db
    label = {"added": "hats", "assigned": "coat"}[status]
    job = zygote.run("decide", faults, db=db.uri, weights=tiny_weights, review_id=image_id, status=status, label=label)
    assert job.killed, job.log[-3000:]

    reopened = Database(db.uri)
    row = review_frame(reopened).filter(pl.col("id") == image_id).row(0, named=True)
    assert row["status"] == "pending" and row["decided_at"] is None  # not stored; never half

    join = lambda path, lab: add_to_catalogue(reopened, path, lab, tiny_encoder)  # noqa: E731
    decide(reopened, Decision(image_id, status, label, "again"), join)
    row = review_frame(reopened).filter(pl.col("id") == image_id).row(0, named=True)
    assert (row["status"], row["label"], row["decided_by"]) == (status, label, "again")
    image = reopened.images_frame().filter(pl.col("id") == image_id)
    assert image.height == 1 and image["label"].to_list() == [label]
    assert harness.integrity_problems(harness.snapshot(db.uri)) == []


@pytest.fixture(scope="module")
def versions_db(zygote, fault_folder, tiny_weights, tmp_path_factory, tiny_encoder):
    """A database of a copy of the fault folder with a base, a trained head and a DBA version; then one file of
    the folder moved to another class and one removed (what a sync finds)."""
    from engine.training.api import train
    from engine.training.config import TrainConfig
    from engine.versions.derived import DBAConfig, publish_derived

    root = tmp_path_factory.mktemp("versions")
    folder = root / "catalogue"
    shutil.copytree(fault_folder, folder)
    path = root / "db"
    result = zygote.run("ingest", db=path, folder=folder, weights=tiny_weights)
    assert result.status == 0, result.log[-3000:]
    db = Database(path)
    base = db.resolve_model()
    train(db, base, TrainConfig(epochs=1, batch_size=8, head=HeadConfig(out_dim=8, hidden_dim=16), catalogue_where="label IS NOT NULL", min_class_size=1))
    publish_derived(db, "dba", [base], DBAConfig(neighbours=3, catalogue_where="label IS NOT NULL"))
    coats = sorted((folder / "coat").glob("*.png"))
    coats[0].rename(folder / "dress" / coats[0].name)
    coats[1].unlink()
    return path, folder


def _edited(zygote, source: Path, target: Path, op: str, folder: Path, weights, faults: str | None = None):
    if not target.exists():
        shutil.copytree(source, target)
    return zygote.run("edit", faults, db=target, op=op, folder=folder, weights=weights)


EDIT_KILLS = [
    ("relabel", "edit.committed@1"), ("relabel", "coverage.metadata@1"), ("relabel", "coverage.metadata@2"),
    ("delete", "edit.committed@1"), ("delete", "coverage.deleted@1"), ("delete", "coverage.deleted@2"), ("delete", "coverage.vectors@1"),
    ("sync", "sync.removed@1"), ("sync", "ingest.observed@1"), ("sync", "ingest.versions@1"), ("sync", "coverage.deleted@2"),
    ("refresh", "coverage.metadata@1"),
    ("audit", "audit.written@1"), ("audit", "audit.intent@1"), ("audit", "edit.committed@1"), ("audit", "coverage.metadata@2"),
    ("audit", "audit.applied@1"),
]


@pytest.mark.parametrize("op,point", EDIT_KILLS)
def test_catalogue_writes_killed_then_run_again_reach_the_clean_state(op, point, versions_db, zygote, tiny_weights, tmp_path):
    """kill -9 inside a relabel, delete, sync or refresh of a database with three versions: it opens, says which
    versions are behind, and the same command run again gives exactly the database of a run never killed."""
    from engine.versions.coverage import coverage_of

    source, folder = versions_db
    wanted = "relabel" if op == "refresh" else op  # a refresh finishes a relabel killed before any version followed
    clean = _edited(zygote, source, tmp_path / "clean", wanted, folder, tiny_weights)
    assert clean.status == 0, clean.log[-3000:]
    if op == "refresh":
        first = _edited(zygote, source, tmp_path / "db", "relabel", folder, tiny_weights, "edit.committed@1=kill")
        assert first.killed, first.log[-2000:]
    killed = _edited(zygote, source, tmp_path / "db", op, folder, tiny_weights, f"{point}=kill")
    assert killed.killed, f"{point} did not kill the {op}: {killed.log[-2000:]}"

    opened = Database(tmp_path / "db", read_only=True)
    coverage = {m.id: coverage_of(opened, m) for m in opened.find_models()}
    if point.startswith("edit.committed"):  # the catalogue changed and no version followed yet: every one says so
        assert not any(c.in_step for c in coverage.values())
    assert all(c.reason and "lookalike refresh" in c.reason for c in coverage.values() if not c.in_step)

    again = zygote.run("edit", None, db=tmp_path / "db", op=op, folder=folder, weights=tiny_weights)
    assert again.status == 0, again.log[-3000:]
    final = harness.snapshot(tmp_path / "db")
    assert harness.integrity_problems(final) == []
    assert harness.differences(final, harness.snapshot(tmp_path / "clean")) == []
    reopened = Database(tmp_path / "db", read_only=True)
    assert all(coverage_of(reopened, m).in_step for m in reopened.find_models())
    if op == "audit":  # the decision is recorded once, with what it replaced
        from engine.audit import audit_frame

        decided = audit_frame(reopened, status=None).sort("id").row(0, named=True)
        assert decided["status"] == "relabelled" and decided["decided_by"] == "harness" and decided["decision"]


def test_cli_prints_busy_and_full_disk_as_one_line_errors(tmp_path, tiny_weights, capsys, monkeypatch, fault_folder):
    from console.cli.main import main

    db = str(tmp_path / "db")
    model = ["--model", "test_efficientnet", "--weights", str(tiny_weights)]
    with writer_lock(db, "another ingest"):
        assert main(["ingest", str(fault_folder), "--db", db, *model]) == 2
    busy = capsys.readouterr().err
    assert "error: database" in busy and "is being written by pid" in busy and "Traceback" not in busy
    monkeypatch.setenv("LOOKALIKE_FAULTS", "store.images_written@1=lance_enospc")
    assert main(["ingest", str(fault_folder), "--db", db, *model]) == 2
    full = capsys.readouterr().err
    assert "No space left on device (os error 28). Batches committed before the failure are kept" in full
    assert "Traceback" not in full and "commit.rs" not in full
