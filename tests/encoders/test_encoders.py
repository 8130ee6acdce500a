"""Encoders: the registry, offline EfficientNet-Lite weights loaded strictly into timm, local weights files."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from engine.core.errors import EncoderError
from engine.encoders.config import EncoderConfig, list_encoders
from engine.encoders.factory import _load_state_dict, create_encoder
from engine.encoders.lite import _packaged_lite_weights, convert_lite_state_dict
from engine.media.decode import decode_image
from tests.support.paths import CORPUS, QUERIES


def test_registry_lists_the_lite_family():
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(list_encoders())


def test_unknown_encoder_names_the_valid_choices():
    with pytest.raises(EncoderError, match="efficientnet_lite0"):
        create_encoder("no_such_model_anywhere")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_encoder(EncoderConfig(name="test_efficientnet", weights=str(tmp_path / "none.pth")))


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_packaged_lite_weights_convert_to_every_timm_key(variant):
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    converted = convert_lite_state_dict(_load_state_dict(_packaged_lite_weights(variant)()), model)
    assert set(converted) == set(model.state_dict())
    model.load_state_dict(converted, strict=True)
    for name, tensor in model.state_dict().items():
        assert tensor.shape == converted[name].shape, name


def test_default_encoder_is_pretrained_imagenet(default_encoder):
    """The converted weights classify a real photo-like input as ImageNet classes sensibly.

    A pretrained network's pooled features are far from isotropic noise: two views of one image
    are closer than two different garments, and different garments closer than random weights make them.
    """
    assert default_encoder.dim == 1280 and default_encoder.name == "efficientnet_lite0"
    assert default_encoder.data_config["mean"] == (0.5, 0.5, 0.5)
    sandal = decode_image(next(QUERIES.glob("sandal_*.png")).read_bytes()).image
    bag = decode_image(next(QUERIES.glob("bag_*.png")).read_bytes()).image
    vectors = default_encoder.encode_images([sandal, sandal.transpose(Image.FLIP_LEFT_RIGHT), bag])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    same, different = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert same > 0.9 and same > different + 0.1


def test_local_weights_file_for_any_timm_model(tiny_encoder, tiny_weights):
    assert tiny_encoder.architecture == "test_efficientnet" and tiny_encoder.dim == 256
    assert tiny_encoder.weights_source == str(tiny_weights)
    again = create_encoder(EncoderConfig(name="test_efficientnet", weights=str(tiny_weights), device="cpu"))
    assert again.fingerprint == tiny_encoder.fingerprint
    image = decode_image((CORPUS / "good" / "garments" / "rgb.jpg").read_bytes()).image
    np.testing.assert_allclose(again.encode_images([image]), tiny_encoder.encode_images([image]), atol=1e-6)


def test_other_weights_change_the_fingerprint(tmp_path, tiny_encoder):
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    assert create_encoder(EncoderConfig(name="test_efficientnet", weights=str(other))).fingerprint != tiny_encoder.fingerprint


def test_batching_does_not_change_vectors(tiny_weights):
    images = [decode_image(p.read_bytes()).image for p in sorted((CORPUS / "good").rglob("*.*"))]
    one = create_encoder(EncoderConfig(name="test_efficientnet", weights=str(tiny_weights), batch_size=1)).encode_images(images)
    many = create_encoder(EncoderConfig(name="test_efficientnet", weights=str(tiny_weights), batch_size=7)).encode_images(images)
    np.testing.assert_allclose(one, many, atol=1e-5)


@pytest.mark.slow
def test_pretrained_weights_beat_random_weights_on_real_images(default_encoder, tmp_path):
    """Same architecture, same split: the packaged ImageNet weights must retrieve far better than random ones."""
    from engine.evaluation.metrics import evaluate
    from engine.media.scan import scan_folder, stratified_holdout
    from tests.support.paths import SAMPLES

    files = stratified_holdout(scan_folder(SAMPLES, split="train"), 0.25, seed=1, holdout_split="val")
    images = [decode_image(f.path.read_bytes()).image for f in files]
    is_query = np.array([f.split == "val" for f in files])
    labels = np.array([f.labels[0] for f in files])
    torch.manual_seed(0)
    random_weights = tmp_path / "random.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), random_weights)
    random_encoder = create_encoder(EncoderConfig(name="tf_efficientnet_lite0", weights=str(random_weights)))
    scores = {}
    for encoder in (default_encoder, random_encoder):
        vectors = encoder.encode_images(images)
        scores[encoder.name] = evaluate(vectors[is_query], labels[is_query], vectors[~is_query], labels[~is_query])
    # measured: mAP 0.618 vs 0.373, P@5 0.640 vs 0.427
    assert scores["efficientnet_lite0"].mean_ap > scores["tf_efficientnet_lite0"].mean_ap + 0.15
    assert scores["efficientnet_lite0"].p_at_5 > scores["tf_efficientnet_lite0"].p_at_5 + 0.1
