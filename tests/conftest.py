"""Shared fixtures: small real images, a tiny timm encoder with local weights, databases in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub attempt would hang for a minute before failing

import pytest
import timm
import torch

from engine.encoders.config import EncoderConfig
from engine.encoders.factory import Encoder, create_encoder
from engine.storage.database import Database


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Seeded random weights of timm's test_efficientnet, saved as a local file."""
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tiny_weights) -> Encoder:
    return create_encoder(EncoderConfig(name="test_efficientnet", weights=str(tiny_weights), device="cpu", batch_size=8))


@pytest.fixture(scope="session")
def default_encoder() -> Encoder:
    return create_encoder(EncoderConfig(device="cpu"))


@pytest.fixture
def db(tmp_path) -> Database:
    return Database(tmp_path / "db")
