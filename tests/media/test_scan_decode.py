"""Reader and mapper stages: folder scanning, labels, splits, and decoding of odd and broken files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.media.decode import DecodeError, content_id, decode_image
from engine.media.scan import read_label_csv, scan_folder, stratified_holdout
from tests.support.paths import CORPUS, SAMPLES

BAD_REASONS = {
    "zero_byte.jpg": "empty file",
    "truncated.jpg": "truncated",
    "text_named.jpg": "not an image",
    "html_named.png": "not an image",
    "bad_crc.png": "corrupt image",
    "bomb.png": "decompression bomb",
}


@pytest.mark.parametrize("name,reason", sorted(BAD_REASONS.items()))
def test_bad_files_raise_with_their_reason(name, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image((CORPUS / "bad" / name).read_bytes())


@pytest.mark.parametrize("path", sorted((CORPUS / "good").rglob("*.*")), ids=lambda p: p.name)
def test_every_good_file_decodes_to_rgb(path):
    decoded = decode_image(path.read_bytes())
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (decoded.width, decoded.height)


def test_exif_orientation_is_applied():
    decoded = decode_image((CORPUS / "good" / "garments" / "exif_rotated.jpg").read_bytes())
    assert (decoded.width, decoded.height) == (32, 64)  # stored 64x32, orientation 6


def test_modes_are_recorded_and_converted_faithfully():
    sixteen = decode_image((CORPUS / "good" / "bags" / "sixteen_bit.png").read_bytes())
    gray = np.asarray(Image.open(CORPUS / "good" / "bags" / "sixteen_bit.png"), dtype=np.float64) / 257
    assert sixteen.mode.startswith("I")
    np.testing.assert_allclose(np.asarray(sixteen.image)[..., 0], gray, atol=1)
    rgba = decode_image((CORPUS / "good" / "garments" / "rgba.png").read_bytes())
    assert rgba.mode == "RGBA" and rgba.channels == 4
    # 50% alpha over white: every channel is at least half-way to white
    assert np.asarray(rgba.image).min() >= 127
    cmyk = decode_image((CORPUS / "good" / "bags" / "cmyk.jpg").read_bytes())
    assert (cmyk.mode, cmyk.channels) == ("CMYK", 4)


def test_pixel_limit_is_configurable():
    data = (CORPUS / "good" / "garments" / "rgb.jpg").read_bytes()
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(data, max_pixels=64 * 64 - 1)


def test_content_id_depends_on_bytes_only():
    assert content_id(b"abc") == content_id(b"abc") != content_id(b"abd")
    assert len(content_id(b"")) == 32


def test_scan_is_deterministic_and_labels_from_folders():
    files = scan_folder(SAMPLES)
    assert len(files) == 120
    assert [f.path for f in files] == sorted(f.path for f in files)
    assert {f.labels[0] for f in files} == {p.name for p in SAMPLES.iterdir()}
    assert files == scan_folder(SAMPLES)


def test_labels_from_csv_with_header_and_multiple_classes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    (tmp_path / "c.png").write_bytes(b"x")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("Image,Id\na.png,w_1 w_2\nb,new_whale\n")
    assert read_label_csv(csv_path) == {"a.png": ("w_1", "w_2"), "b": ("new_whale",)}
    by_name = {f.path.name: f.labels for f in scan_folder(tmp_path, labels_csv=csv_path)}
    assert by_name == {"a.png": ("w_1", "w_2"), "b.jpg": ("new_whale",), "c.png": ()}


def test_stratified_holdout_is_seeded_and_per_class():
    files = scan_folder(SAMPLES, split="train")
    held = stratified_holdout(files, 0.25, seed=3, holdout_split="val")
    assert held == stratified_holdout(files, 0.25, seed=3, holdout_split="val")
    assert held != stratified_holdout(files, 0.25, seed=4, holdout_split="val")
    for label in {f.labels[0] for f in files}:
        splits = [f.split for f in held if f.labels[0] == label]
        assert splits.count("val") == 3 and splits.count("train") == 9
    with pytest.raises(ValueError):
        stratified_holdout(files, 1.5, seed=0, holdout_split="val")


def test_folder_class_names_with_whitespace_are_stored_with_underscores(tmp_path):
    """Classes are written space-separated (Kaggle Id, CSV labels): 'sub dir' would read back as two classes."""
    import shutil

    from engine.media.scan import scan_folder

    for folder in ("sub dir", "tab\there"):
        (tmp_path / folder).mkdir()
        shutil.copy(sorted((SAMPLES / "bag").iterdir())[0], tmp_path / folder / "x.png")
    assert sorted(f.labels for f in scan_folder(tmp_path)) == [("sub_dir",), ("tab_here",)]


def test_unreadable_folders_are_error_rows_not_silent_gaps(tmp_path, tiny_encoder, monkeypatch):
    """A sub-folder the scan cannot list (no read permission for a non-root user, a path beyond PATH_MAX) was
    skipped with no row and no log line. os.walk reports it through onerror; that is simulated here, since
    root reads every folder."""
    import os
    import shutil
    from pathlib import Path

    from engine.storage.database import Database
    from ingest.pipeline import IngestConfig, ingest_folder

    for folder in ("good", "locked"):
        (tmp_path / "photos" / folder).mkdir(parents=True)
        shutil.copy(sorted((SAMPLES / "bag").iterdir())[0], tmp_path / "photos" / folder / "x.png")
    real_walk = os.walk

    def walk(top, topdown=True, onerror=None, followlinks=False):
        for directory, subdirs, files in real_walk(top, topdown, onerror, followlinks):
            if "locked" in subdirs and onerror is not None:
                subdirs.remove("locked")
                onerror(PermissionError(13, "Permission denied", str(Path(directory) / "locked")))
            yield directory, subdirs, files

    monkeypatch.setattr(os, "walk", walk)
    db = Database(tmp_path / "db")
    report = ingest_folder(db, tmp_path / "photos", IngestConfig(optimize=False), encoder=tiny_encoder)
    assert (report.total, report.encoded, report.errors) == (2, 1, 1)
    errors = db.errors_frame()
    assert errors["path"].to_list() == [str(tmp_path / "photos" / "locked")]
    assert errors["reason"].to_list() == ["cannot read folder: Permission denied"]
