"""Foreground masking: RLE against brute force, mask readers, apply modes, a tiny U-Net that learns, and
masked ingest whose model version refuses queries masked another way."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from engine.core.errors import EncoderMismatchError
from engine.encoders.config import HeadConfig
from engine.masking.encoder import MaskedEncoder, masking_of
from engine.masking.masks import MaskSource, foreground_fraction, pair_images_with_masks, read_masks, rle_decode, rle_encode
from engine.masking.modes import apply_mask, mask_preview
from engine.masking.store import foreground_frame, load_masker, maskers_frame, resolve_masker
from engine.masking.unet import MaskerConfig
from engine.search.searcher import Searcher
from engine.storage.database import Database
from engine.training.config import TrainConfig
from engine.training.epochs import TrainingInterrupted
from engine.training.head import train_head
from engine.training.masker import MaskerTrainConfig, train_masker
from engine.versions import encoder_for_model, query_encoder
from ingest.pipeline import IngestConfig, ingest_folder
from tests.support.paths import SAMPLES


def brute_force_decode(encoded: str, height: int, width: int) -> np.ndarray:
    """Pixel by pixel, down each column then across, 1-indexed: the Kaggle convention spelled out."""
    mask = np.zeros((height, width), bool)
    values = [int(v) for v in encoded.split()]
    for start, length in zip(values[0::2], values[1::2]):
        for pixel in range(start - 1, start - 1 + length):
            mask[pixel % height, pixel // height] = True
    return mask


def test_rle_round_trip_matches_brute_force():
    rng = np.random.default_rng(0)
    cases = [np.zeros((3, 4), bool), np.ones((5, 2), bool)] + [rng.random(tuple(rng.integers(1, 12, 2))) < p for p in (0.1, 0.5, 0.9) for _ in range(30)]
    for mask in cases:
        encoded = rle_encode(mask)
        assert np.array_equal(brute_force_decode(encoded, *mask.shape), mask)
        assert np.array_equal(rle_decode(encoded, *mask.shape), mask)
    # column-major: a run of 3 from pixel 2 in a 2x3 image covers (1,0), (0,1), (1,1)
    assert rle_decode("2 3", 2, 3).tolist() == [[False, True, False], [True, True, False]]
    # overlapping runs (hand-written files have them) decode like the brute force
    assert np.array_equal(rle_decode("1 4 3 4", 3, 3), brute_force_decode("1 4 3 4", 3, 3))
    for bad in ("1", "0 2", "5 9", "a b"):
        with pytest.raises(ValueError):
            rle_decode(bad, 3, 3)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(bool, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24)))
def test_property_rle_round_trips_any_mask(mask):
    encoded = rle_encode(mask)
    assert np.array_equal(rle_decode(encoded, *mask.shape), mask)
    assert np.array_equal(rle_decode(encoded, *mask.shape), brute_force_decode(encoded, *mask.shape))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 -x.\t", max_size=30), st.integers(-1, 6), st.integers(-1, 6))
@example("9999999999999999999999 1", 3, 3)
@example("1 -2", 3, 3)
@example("9223372036854775807 9223372036854775807", 3, 3)
def test_property_any_rle_text_decodes_to_its_runs_or_gives_a_value_error(encoded, height, width):
    try:
        mask = rle_decode(encoded, height, width)
    except ValueError as error:
        assert str(error)
    else:
        assert mask.shape == (height, width) and mask.dtype == bool
        assert np.array_equal(mask, brute_force_decode(encoded, height, width))


def write_rle_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "EncodedPixels", "Height", "Width", "ClassId"])
        writer.writerows(rows)


def test_csv_masks_are_the_union_of_an_images_rows(tmp_path):
    top, bottom = np.zeros((6, 5), bool), np.zeros((6, 5), bool)
    top[0:2, 1:4], bottom[3:6, 0:2] = True, True
    write_rle_csv(tmp_path / "masks.csv", [["a.jpg", rle_encode(top), 6, 5, 3], ["b.jpg", rle_encode(bottom), 6, 5, 1],
                                            ["a.jpg", rle_encode(bottom), 6, 5, "31_7"]])
    source = read_masks(tmp_path / "masks.csv")
    assert source.kind == "rle-csv" and source.names() == ["a.jpg", "b.jpg"]
    assert np.array_equal(source.mask("a.jpg"), top | bottom)
    assert np.array_equal(source.mask("b.jpg"), bottom)
    write_rle_csv(tmp_path / "clash.csv", [["a", "1 2", 6, 5, 1], ["a", "1 2", 5, 5, 1]])
    with pytest.raises(ValueError, match="disagree"):
        read_masks(tmp_path / "clash.csv").mask("a.png")  # matched by stem too
    (tmp_path / "wrong.csv").write_text("image,rle\nx,1 2\n")
    with pytest.raises(ValueError, match="EncodedPixels"):
        read_masks(tmp_path / "wrong.csv")
    with pytest.raises(ValueError, match="png-folder"):
        read_masks(tmp_path / "masks.csv", "nope")


def test_mask_folder_pairs_with_images_by_name(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    (images / "sub").mkdir(parents=True)
    masks.mkdir()
    truth = np.zeros((8, 10), bool)
    truth[2:5, 3:9] = True
    for name in ("one", "two"):
        Image.new("RGB", (10, 8), (9, 9, 9)).save(images / "sub" / f"{name}.jpg")
    Image.new("RGB", (10, 8)).save(images / "unmasked.png")
    Image.fromarray(truth.astype(np.uint8) * 255).save(masks / "one.png")
    coloured = np.zeros((8, 10, 3), np.uint8)
    coloured[truth] = (0, 0, 7)  # a dark colour still counts as foreground
    Image.fromarray(coloured).save(masks / "two.png")
    source = read_masks(masks)
    assert source.kind == "png-folder"
    assert np.array_equal(source.mask("one.jpg"), truth) and np.array_equal(source.mask("two.jpg"), truth)
    assert [p.name for p in pair_images_with_masks(images, source)] == ["one.jpg", "two.jpg"]
    with pytest.raises(ValueError, match="no image"):
        pair_images_with_masks(images, MaskSource("png-folder", masks, {"zzz": lambda: truth}))


def test_apply_modes():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(30, 255, (40, 60, 3), dtype=np.uint8))
    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:40] = True
    pixels = np.asarray(image)
    zero = np.asarray(apply_mask(image, mask, "zero"))
    assert (zero[~mask] == 0).all() and np.array_equal(zero[mask], pixels[mask])
    blur = np.asarray(apply_mask(image, mask, "blur"))
    assert np.array_equal(blur[mask], pixels[mask])
    assert np.abs(blur[~mask].astype(int) - pixels[~mask]).mean() > 20  # noise blurred away
    assert apply_mask(image, mask, "crop").size == (24, 24)  # 20x20 box plus a 10% margin each side
    assert apply_mask(image, np.zeros_like(mask), "crop").size == image.size
    assert foreground_fraction(mask) == pytest.approx(400 / 2400)
    with pytest.raises(ValueError, match="blur"):
        apply_mask(image, mask, "erase")
    with pytest.raises(ValueError, match="60x40"):
        apply_mask(image, mask[:, :10], "zero")
    preview = mask_preview(image, mask, "zero")
    assert preview.size == (124, 40) and mask_preview(image, mask).size == image.size


# ---- a tiny masker on composites of the shipped Fashion-MNIST samples -----------------------------

SIDE = 64


def make_composites(folder, count, seed):
    """Fashion-MNIST garments pasted onto coloured noise; returns the image folder and writes masks.csv."""
    rng = np.random.default_rng(seed)
    garments = sorted(SAMPLES.rglob("*.png"))
    rows = []
    for i in range(count):
        garment_path = garments[int(rng.integers(len(garments)))]
        garment = np.asarray(Image.open(garment_path).convert("L").resize((32, 32), Image.NEAREST))
        canvas = (rng.normal(0, 40, (SIDE, SIDE, 3)) + rng.integers(40, 200, 3)).clip(0, 255).astype(np.uint8)
        top, left = rng.integers(0, SIDE - 32, 2)
        mask = np.zeros((SIDE, SIDE), bool)
        mask[top : top + 32, left : left + 32] = garment > 0
        canvas[mask] = (garment[garment > 0][:, None] * rng.uniform(0.4, 1.0, 3)).astype(np.uint8)
        target = folder / "images" / garment_path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        name = f"c{seed}_{i:03d}.png"
        Image.fromarray(canvas).save(target / name)
        rows.append([name, rle_encode(mask), SIDE, SIDE, garment_path.parent.name])
    write_rle_csv(folder / "masks.csv", rows)
    return folder / "images"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small convolutions train several times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_MASKER = dict(image_size=SIDE, decoder_channels=(32, 16, 16, 8, 8))


@pytest.fixture(scope="module")
def masker_db(tmp_path_factory, tiny_weights):
    """A database with one tiny masker trained for a few epochs (shared by the tests below)."""
    root = tmp_path_factory.mktemp("masking")
    images = make_composites(root / "train", 48, seed=0)
    masks = read_masks(root / "train" / "masks.csv")
    db = Database(root / "db")
    config = MaskerTrainConfig(MaskerConfig(encoder="test_efficientnet", encoder_weights=str(tiny_weights), **TINY_MASKER),
                               epochs=6, batch_size=8, lr=3e-3, encoder_lr=3e-3, holdout=0.25, device="cpu")
    record = train_masker(db, pair_images_with_masks(images, masks), masks, config)
    return db, record, root


def test_masker_training_reduces_loss_and_is_stored(masker_db):
    db, record, root = masker_db
    history = json.loads(record.details)["history"]
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    assert record.val_images == 12 and record.train_images == 36 and 0.0 <= record.val_iou <= 1.0
    assert maskers_frame(db)["id"].to_list() == [record.id]
    assert resolve_masker(db, record.id[:12]).id == record.id
    masker = load_masker(db, record.id, "cpu")
    image = Image.new("RGB", (50, 30), (120, 30, 60))
    (mask,) = masker.predict([image])
    assert mask.shape == (30, 50) and mask.dtype == bool
    with pytest.raises(LookupError, match=record.id):
        resolve_masker(db, "unet-nope")


def test_masker_learns_more_than_it_starts_with(masker_db, tiny_weights):
    """The trained masker's held-out IoU beats predicting everything as foreground."""
    db, record, root = masker_db
    masks = read_masks(root / "train" / "masks.csv")
    all_foreground = np.mean([foreground_fraction(masks.mask(n)) for n in masks.names()])  # IoU of an all-ones mask
    assert record.val_iou > all_foreground


def test_masked_ingest_records_its_masker_and_refuses_other_masking(masker_db, tiny_encoder, tmp_path):
    db, record, root = masker_db
    queries = make_composites(tmp_path / "queries", 20, seed=3)
    masked = MaskedEncoder.wrap(tiny_encoder, load_masker(db, record.id, "cpu"), "zero")
    report = ingest_folder(db, queries, IngestConfig(split="train", image_hook=masked, optimize=False), encoder=masked)
    assert report.encoded == 20
    model = db.resolve_model(report.model_id)
    assert masking_of(model) == {"masker": record.id, "mode": "zero"} and "+mask-" in model.id
    fractions = foreground_frame(db, model.id)
    assert fractions.height == 20 and set(fractions["masker_id"]) == {record.id}
    assert ((fractions["fraction"] > 0) & (fractions["fraction"] < 1)).sum() >= 1

    # the same images unmasked are another model version
    plain = ingest_folder(db, queries, IngestConfig(split="train", optimize=False), encoder=tiny_encoder)
    assert plain.model_id != model.id and masking_of(db.resolve_model(plain.model_id)) is None

    # another masking (mode or masker) or none is refused by the fingerprint check, like another encoder
    for other in (MaskedEncoder.wrap(tiny_encoder, masked.masker, "blur"), tiny_encoder):
        with pytest.raises(EncoderMismatchError):
            Searcher(db, model, encoder=other)
    with pytest.raises(EncoderMismatchError, match="masked with"):
        query_encoder(db, model, record.id, "crop")
    with pytest.raises(EncoderMismatchError, match="not masked"):
        query_encoder(db, db.resolve_model(plain.model_id), record.id, "zero")

    # queries are masked as the catalogue was: a catalogue image finds itself first
    searcher = Searcher(db, model, encoder=query_encoder(db, model))
    paths = sorted(queries.rglob("*.png"))[:4]
    results = searcher.search_files(paths, k=1)
    assert results["path"].to_list() == [str(p.resolve()) for p in paths]
    assert results["distance"].max() < 1e-4

    # a head trained on the masked features keeps the masking; its encoder is rebuilt with it
    trained = train_head(db, model, TrainConfig(method="bce", head=HeadConfig(kind="linear", out_dim=16), epochs=2, patience=5,
                                                catalogue_where="split = 'train'", min_class_size=1, device="cpu"))
    assert masking_of(trained.model) == masking_of(model)
    rebuilt = encoder_for_model(db, trained.model, "cpu")
    assert rebuilt.fingerprint == trained.model.fingerprint
    Searcher(db, trained.model, encoder=rebuilt).search_files(paths[:1], k=1)
    # and a searcher given no encoder (review --assign, the console) builds the masked one itself
    for version in (model, trained.model):
        assert Searcher(db, version).encoder.fingerprint == version.fingerprint


def test_cli_train_masker_preview_and_masked_search(masker_db, tiny_weights, tmp_path, capsys):
    from console.cli.main import main

    db, record, root = masker_db
    weights = str(tiny_weights)
    assert main(["maskers", "--db", db.uri]) == 0
    assert record.id in capsys.readouterr().out
    out = tmp_path / "previews"
    images = sorted((root / "train" / "images").rglob("*.png"))[:2]
    assert main(["mask-preview", *map(str, images), "--db", db.uri, "--masker", record.id, "--mode", "blur", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.mask.png" for p in images)
    assert main(["mask-preview", str(images[0]), "--masks", str(root / "train" / "masks.csv"), "--out", str(out)]) == 0

    catalogue = make_composites(tmp_path / "cat", 12, seed=5)
    cli_db = str(tmp_path / "clidb")
    assert main(["train-masker", str(root / "train" / "images"), "--masks", str(root / "train" / "masks.csv"), "--db", cli_db,
                 "--encoder", "test_efficientnet", "--weights", weights, "--size", "64", "--epochs", "1", "--limit", "16"]) == 0
    masker_id = resolve_masker(Database(cli_db)).id
    assert main(["ingest", str(catalogue), "--db", cli_db, "--model", "test_efficientnet", "--weights", weights,
                 "--mask", masker_id, "--mask-mode", "crop", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["maskers", "--db", cli_db, "--foreground", Database(cli_db).resolve_model().id]) == 0
    shown = capsys.readouterr().out
    assert "crop" in shown and "12" in shown  # 12 images, masked in crop mode
    query = str(sorted(catalogue.rglob("*.png"))[0])
    assert main(["search", query, "--db", cli_db, "-k", "1"]) == 0  # masked like the catalogue, found itself
    assert main(["search", query, "--db", cli_db, "--mask-mode", "zero"]) == 2
    assert "not comparable" in capsys.readouterr().err


def test_masker_training_runs_through_the_epoch_loop_and_resumes(tmp_path, tiny_weights):
    """A stopped masker run resumes at its next epoch and ends with every epoch in its history."""
    images = make_composites(tmp_path / "train", 12, seed=5)
    masks = read_masks(tmp_path / "train" / "masks.csv")
    db = Database(tmp_path / "db")
    config = MaskerTrainConfig(MaskerConfig(encoder="test_efficientnet", encoder_weights=str(tiny_weights), **TINY_MASKER),
                               epochs=3, batch_size=4, holdout=0.25, device="cpu")
    paths = pair_images_with_masks(images, masks)
    seen = []
    with pytest.raises(TrainingInterrupted):
        train_masker(db, paths, masks, config, progress=seen.append, should_stop=lambda: len(seen) >= 1)
    assert [e.done for e in seen] == [1] and seen[0].task == "masker"
    record = train_masker(db, paths, masks, config, progress=seen.append)
    assert [e.done for e in seen] == [1, 2, 3]
    assert [h["epoch"] for h in json.loads(record.details)["history"]] == [1, 2, 3]
    assert not any((db.local_folder("checkpoints")).glob("masker-*.pt"))  # the finished run's checkpoint is gone
