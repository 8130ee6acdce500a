"""Fine-tuning (regime ``finetune``), LoRA, self-supervised methods and consistency regularisation, on a
dozen real sample images with tiny seeded timm backbones: only the unfrozen weights move, a published
version re-embeds the catalogue and embeds queries exactly like it, interrupted runs resume, methods
without labels train without labels."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from engine.encoders.config import EncoderConfig, HeadConfig
from engine.encoders.factory import create_encoder
from engine.encoders.heads import BackboneWithHead, ProjectionHead
from engine.media.scan import SourceFile, scan_folder
from engine.search.searcher import Searcher
from engine.training.api import list_methods, train
from engine.training.augment import create_augmentation, list_augmentations
from engine.training.config import FinetuneConfig, TrainConfig
from engine.training.finetune import ImageData, backbone_blocks, prepare_backbone
from engine.training.head import train_head
from engine.training.loop import TrainingInterrupted
from engine.training.methods import create_loss
from engine.training.selfsupervised import consistency_loss, rotate_batch
from engine.versions import encoder_for_model
from ingest.pipeline import IngestConfig, ingest_files
from tests.support.paths import SAMPLES

CLASSES = ("bag", "sandal", "trouser")


def sample_files(per_class: int = 4, labelled: bool = True) -> list[SourceFile]:
    files = [f for f in scan_folder(SAMPLES) if f.labels[0] in CLASSES]
    chosen = [f for cls in CLASSES for f in [g for g in files if g.labels[0] == cls][:per_class]]
    return [SourceFile(f.path, f.labels if labelled else (), "train") for f in chosen]


def tiny_config(**finetune) -> TrainConfig:
    options = {"unfreeze_blocks": 1, "image_size": 64, "workers": 0, "embed_batch_size": 16, **finetune}
    return TrainConfig(regime="finetune", method="arcface", head=HeadConfig(out_dim=16, hidden_dim=32), epochs=2, batch_size=8,
                       patience=5, warmup_epochs=1, lr=3e-3, val_fraction=0.25, finetune=FinetuneConfig(**options))


@pytest.fixture
def sample_db(db, tiny_encoder):
    ingest_files(db, sample_files(), SAMPLES, IngestConfig(), encoder=tiny_encoder)
    return db, db.resolve_model()


@pytest.fixture(scope="session")
def tiny_vit_encoder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "test_vit.pth"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), path)
    return create_encoder(EncoderConfig(name="test_vit", weights=str(path), device="cpu", batch_size=8))


def backbone_state(db, model) -> dict[str, torch.Tensor]:
    network = encoder_for_model(db, model, "cpu").model
    backbone = network.backbone if isinstance(network, BackboneWithHead) else network
    return {k: v.clone() for k, v in backbone.state_dict().items()}


def assert_queries_embed_like_catalogue(db, model):
    searcher = Searcher(db, model)  # rebuilds the encoder from the stored weights file
    assert searcher.encoder.fingerprint == model.fingerprint
    path = sample_files()[5].path
    hits = searcher.search_files([path], k=1)
    assert hits["path"][0] == str(path) and hits["distance"][0] == pytest.approx(0.0, abs=1e-4)


def test_finetuning_moves_only_the_unfrozen_block_and_publishes_a_whole_version(sample_db):
    db, parent = sample_db
    before = backbone_state(db, parent)
    events = []
    result = train(db, parent, tiny_config(), progress=events.append)
    model = result.model
    assert [e.done for e in events if e.task == "train"] == [1, 2] and model.parent == parent.id and model.id.startswith("test_efficientnet+ft-arcface-")
    assert Path(model.weights_source).is_relative_to(Path(db.uri)) and Path(model.weights_source).is_file()
    after = backbone_state(db, model)
    assert after.keys() == before.keys()
    last_block = {name.rpartition(".")[0] for name in backbone_blocks(create_encoder_backbone())[-1]}
    in_last_block = lambda key: key.rpartition(".")[0] in last_block  # noqa: E731
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(in_last_block(k) for k in moved), moved  # buffers of frozen batch norms included
    assert any(k.endswith("weight") for k in moved)
    # the whole catalogue is re-embedded by the new version, and queries meet it exactly
    assert db.embeddings(model).count_rows() == db.images.count_rows() == 12
    notes = json.loads(model.notes)
    assert notes["regime"] == "finetune" and notes["data"]["trainable_backbone_parameters"] > 0 and notes["data"]["embedded"] == 12
    assert_queries_embed_like_catalogue(db, model)


def create_encoder_backbone():
    model = timm.create_model("test_efficientnet", pretrained=False)
    model.reset_classifier(0)
    return model


def test_interrupted_finetuning_resumes(sample_db):
    db, parent = sample_db
    config = replace(tiny_config(), epochs=3)
    calls = {"n": 0}

    def stop_after_one() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(TrainingInterrupted, match="run the same command again"):
        train(db, parent, config, should_stop=stop_after_one)
    assert [m.id for m in db.find_models()] == [parent.id]  # no half version
    events = []
    result = train(db, parent, config, progress=events.append)
    assert [e.done for e in events if e.task == "train"] == [2, 3]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert not list((Path(db.uri) / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("method", ["simsiam", "rotation"])
def test_self_supervised_methods_train_without_labels(db, tiny_encoder, method):
    ingest_files(db, sample_files(labelled=False), SAMPLES, IngestConfig(), encoder=tiny_encoder)
    parent = db.resolve_model()
    assert db.images_frame(columns=["label"])["label"].null_count() == 12
    with pytest.raises(ValueError, match="simsiam or rotation"):
        train(db, parent, tiny_config())  # arcface needs labels
    result = train(db, parent, replace(tiny_config(), method=method, epochs=1))
    losses = [h["loss"] for h in result.history]
    assert result.model.id.startswith(f"test_efficientnet+ft-{method}-") and np.isfinite(losses).all() and losses[0] != 0
    assert db.embeddings(result.model).count_rows() == 12


def test_self_supervised_methods_need_images():
    assert {"simsiam", "rotation"} <= set(list_methods()) and not {"simsiam", "rotation"} & set(list_methods("head"))
    assert create_loss("simsiam", TrainConfig(), 0, 8).needs_labels is False


def test_head_regime_refuses_image_methods(sample_db):
    db, parent = sample_db
    with pytest.raises(ValueError, match="finetune"):
        train_head(db, parent, TrainConfig(method="rotation", epochs=1))


def test_consistency_is_zero_when_weak_and_strong_views_agree(sample_db):
    db, parent = sample_db
    backbone = create_encoder_backbone()
    network = BackboneWithHead(backbone, ProjectionHead(backbone.num_features, HeadConfig(out_dim=8, hidden_dim=16))).eval()
    labels = np.array(["a"] * 6 + [None] * 6, dtype=object)
    paths = [str(f.path) for f in sample_files()]
    objective = create_loss("arcface", TrainConfig(), 1, 8)
    data_config = dict(timm.data.resolve_model_data_config(backbone))

    def first_pair(weak: str, strong: str):
        config = tiny_config(weak_augment=weak, strong_augment=strong, consistency_weight=1.0)
        data = ImageData(paths, labels, objective, data_config, config, torch.device("cpu"), False, paths[6:])
        return next(iter(data.batches(np.arange(6), 4, epoch=1))).unlabelled

    embed = lambda x: network(x)  # noqa: E731
    weak, strong = first_pair("eval", "eval")
    assert torch.equal(weak, strong)
    assert float(consistency_loss(embed, weak, strong).detach()) == pytest.approx(0.0, abs=1e-6)
    weak, strong = first_pair("weak", "strong")
    assert not torch.equal(weak, strong)
    # how far apart two views land under an untrained 8-d head varies with the draw: any clear
    # positive value shows the loss sees the difference (the zero case above is exact to 1e-6)
    assert float(consistency_loss(embed, weak, strong).detach()) > 1e-4


def test_consistency_regularisation_trains_on_unlabelled_images(sample_db):
    db, parent = sample_db
    with pytest.raises(ValueError, match="consistency weight"):
        train(db, parent, tiny_config(unlabelled_where="label = 'bag'"))
    result = train(db, parent, replace(tiny_config(unlabelled_where="label = 'bag'", consistency_weight=0.5), epochs=1))
    assert json.loads(result.model.notes)["data"]["unlabelled"] == 4


def test_lora_adapts_vit_attention_and_publishes_plain_weights(db, tiny_vit_encoder):
    ingest_files(db, sample_files(), SAMPLES, IngestConfig(), encoder=tiny_vit_encoder)
    parent = db.resolve_model()
    before = backbone_state(db, parent)
    result = train(db, parent, tiny_config(lora=True, unfreeze_blocks=2, lora_rank=4, backbone_lr=1e-2))
    after = backbone_state(db, result.model)
    assert after.keys() == before.keys()  # merged: a plain timm state dict, no adapter keys
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    adapted = {f"blocks.{b}.{layer}.weight" for b in (4, 5) for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert moved and moved <= adapted, moved
    assert result.model.id.startswith("test_vit+lora-arcface-")
    assert_queries_embed_like_catalogue(db, result.model)


def test_lora_needs_linear_layers_and_blocks_are_bounded():
    backbone = create_encoder_backbone()
    with pytest.raises(ValueError, match="LoRA"):
        prepare_backbone(backbone, FinetuneConfig(lora=True, unfreeze_blocks=1))
    with pytest.raises(ValueError, match="between 0 and"):
        prepare_backbone(create_encoder_backbone(), FinetuneConfig(unfreeze_blocks=99))
    trained, params = prepare_backbone(create_encoder_backbone(), FinetuneConfig(unfreeze_blocks=0))
    assert params == [] and not any(p.requires_grad for p in trained.parameters())


def test_augmentations_follow_the_model_data_config():
    assert {"eval", "weak", "train", "strong"} <= set(list_augmentations())
    data_config = {"input_size": (3, 160, 160), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.95, "crop_mode": "center"}
    from PIL import Image

    image = Image.new("RGB", (50, 40), (200, 10, 10))
    assert create_augmentation("strong", data_config, image_size=64)(image).shape == (3, 64, 64)
    assert create_augmentation("eval", data_config)(image).shape == (3, 160, 160)
    with pytest.raises(ValueError, match="strong"):
        create_augmentation("nope", data_config)
    turned = rotate_batch(torch.arange(8.0).reshape(2, 1, 2, 2), torch.tensor([0, 2]))
    assert torch.equal(turned[0], torch.arange(4.0).reshape(1, 2, 2)) and torch.equal(turned[1], torch.tensor([[[7.0, 6.0], [5.0, 4.0]]]))


def test_cli_trains_both_regimes_and_names_wrong_combinations(sample_db, capsys):
    from console.cli.main import main

    db, parent = sample_db
    tiny = ["--db", db.uri, "--dim", "16", "--hidden", "32", "--batch-size", "8"]
    assert main(["train", *tiny, "--regime", "head", "--method", "simsiam", "--epochs", "1"]) == 2
    assert "finetune" in capsys.readouterr().err
    assert main(["train", *tiny, "--regime", "finetune", "--epochs", "1", "--unfreeze-blocks", "1", "--image-size", "64", "--workers", "0",
                 "--unlabelled-where", "label = 'bag'", "--consistency-weight", "0.5", "--activate"]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "trained test_efficientnet+ft-arcface-" in out
    assert db.resolve_model().id.startswith("test_efficientnet+ft-arcface-")


def test_reembedding_encodes_like_ingest_and_records_missing_or_changed_files(db, tiny_encoder, tmp_path):
    import shutil

    import schemas
    from engine.evaluation.metrics import load_split
    from engine.training.finetune import reembed_images

    folder = tmp_path / "images"
    files = []
    for source in sample_files(per_class=2):
        target = folder / source.labels[0] / source.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source.path, target)
        files.append(SourceFile(target, source.labels, "train"))
    ingest_files(db, files, folder, IngestConfig(), encoder=tiny_encoder)
    parent = db.resolve_model()
    files[0].path.unlink()
    files[1].path.write_bytes(files[1].path.read_bytes() + b"changed")
    copy = replace(parent, id="copy-v1", embeddings_table=schemas.embeddings_table_name("copy-v1"))
    assert reembed_images(db, copy, tiny_encoder, workers=1, chunk_rows=3) == 4
    reasons = dict(zip(db.errors_frame()["path"], db.errors_frame()["reason"]))
    assert "cannot read file" in reasons[str(files[0].path)] and "changed since" in reasons[str(files[1].path)]
    original, _ = load_split(db.embeddings(parent), f"path = '{files[2].path}'")
    again, _ = load_split(db.embeddings(copy), f"path = '{files[2].path}'")
    np.testing.assert_allclose(again, original, atol=1e-5)
