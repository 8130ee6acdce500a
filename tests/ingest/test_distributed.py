"""Distributed ingest on a local Ray cluster gives exactly the rows of the local pipeline."""

from __future__ import annotations

import logging
import shutil
import sys

import pytest

from engine.encoders.config import EncoderConfig
from engine.storage.database import Database
from ingest.distributed import RayConfig, RayNotInstalledError, import_ray, ingest_folder_ray
from ingest.pipeline import IngestConfig, ingest_folder
from tests.support.db_rows import assert_same_rows
from tests.support.paths import CORPUS, SAMPLES


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch, tmp_path, tiny_weights, capsys):
    from console.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    with pytest.raises(RayNotInstalledError, match=r"pip install 'lookalike\[distributed\]'"):
        import_ray()
    tiny = ["--model", "test_efficientnet", "--weights", str(tiny_weights), "--device", "cpu"]
    assert main(["ingest", str(SAMPLES / "bag"), "--db", str(tmp_path / "db"), *tiny, "--engine", "ray"]) == 2
    assert "pip install 'lookalike[distributed]'" in capsys.readouterr().err
    assert Database(tmp_path / "db").images_frame().height == 0  # nothing written


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is the optional 'distributed' extra: pip install -e '.[distributed]' (make test installs it)")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def photo_folder(tmp_path):
    """12 shipped samples of 4 classes, a duplicate of one of them under another name, 2 broken files."""
    folder = tmp_path / "photos"
    for label in ("bag", "coat", "sandal", "trouser"):
        (folder / label).mkdir(parents=True)
        for path in sorted((SAMPLES / label).glob("*.png"))[:3]:
            shutil.copy(path, folder / label / path.name)
    shutil.copy(sorted((SAMPLES / "bag").glob("*.png"))[0], folder / "coat" / "zz_copy_of_a_bag.png")
    shutil.copy(CORPUS / "bad" / "truncated.jpg", folder / "bag" / "truncated.jpg")
    shutil.copy(CORPUS / "bad" / "zero_byte.jpg", folder / "sandal" / "zero_byte.jpg")
    return folder


@pytest.mark.slow
def test_ray_ingest_writes_the_rows_of_a_local_ingest_and_is_idempotent(ray_cluster, photo_folder, tmp_path, tiny_weights, tiny_encoder, capsys):
    encoder_config = EncoderConfig(name="test_efficientnet", weights=str(tiny_weights), device="cpu", batch_size=4)
    config = IngestConfig(split="train", write_every=5)  # several upserts per run
    local = Database(tmp_path / "local")
    local_report = ingest_folder(local, photo_folder, config, encoder=tiny_encoder)
    distributed = Database(tmp_path / "ray")
    ray_report = ingest_folder_ray(distributed, photo_folder, config, encoder_config, RayConfig(workers=2))

    assert (ray_report.model_id, ray_report.total, ray_report.encoded, ray_report.skipped, ray_report.errors) == (
        local_report.model_id, local_report.total, local_report.encoded, local_report.skipped, local_report.errors) == (
        tiny_encoder.model_id, 15, 12, 1, 2)
    assert_same_rows(local, distributed)
    assert distributed.images_frame().filter(distributed.images_frame()["path"].str.contains("zz_copy")).height == 0

    # re-ingest through the CLI: nothing new, the same rows
    from console.cli.main import main

    tiny = ["--model", "test_efficientnet", "--weights", str(tiny_weights), "--device", "cpu", "--batch-size", "4"]
    assert main(["ingest", str(photo_folder), "--split", "train", "--db", distributed.uri, *tiny, "--engine", "ray", "--workers", "2"]) == 0
    assert "15 files, 0 encoded, 13 already known, 2 errors" in capsys.readouterr().out
    assert_same_rows(local, distributed)
