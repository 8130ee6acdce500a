"""Ensembles: one vector per image from several model versions, each L2-normalised, weighted,
concatenated and normalised again, so cosine similarity becomes the weighted sum of the members'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.core.errors import EncoderError
from engine.encoders.identity import RecordedIdentity


@dataclass(frozen=True)
class EnsembleConfig:
    """Member weights, in the order of the member versions (None: equal weights)."""

    weights: tuple[float, ...] | None = None


def member_weights(members: int, config: EnsembleConfig) -> np.ndarray:
    """Weights of ``members`` members, checked: positive and one per member."""
    weights = np.ones(members) if config.weights is None else np.asarray(config.weights, np.float64)
    if len(weights) != members or (weights <= 0).any():
        raise EncoderError(f"an ensemble of {members} versions needs {members} positive weights, got {config.weights}")
    return weights


def concatenate_embeddings(parts: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Weighted concatenation of per-member vectors (rows aligned), L2-normalised.

    With unit-norm parts, the cosine similarity of two results is ``sum_i w_i^2 s_i / sum_i w_i^2``
    for member similarities ``s_i``. Cost: O(n x total dim).
    """
    if not parts:
        raise EncoderError("an ensemble needs at least one member")
    blocks = []
    for part, weight in zip(parts, weights):
        part = np.asarray(part, np.float64)
        blocks.append(weight * part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12))
    joined = np.hstack(blocks)
    return (joined / np.maximum(np.linalg.norm(joined, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class EnsembleEncoder(RecordedIdentity):
    """Encodes query images with every member's encoder (each with its own preprocessing) and joins them.

    Query time is the sum of the members', except that heads on one parent share its backbone's forward pass. It has no single preprocessing, so images enter an ensemble
    version through its members (ingest them, then refresh the ensemble), never directly.
    """

    def __init__(self, name: str, members: Sequence, weights: np.ndarray, fingerprint: str) -> None:
        self.name, self.members, self.weights, self._fingerprint = name, list(members), weights, fingerprint
        self.dim = int(sum(m.dim for m in self.members))
        self.batch_size = min(m.batch_size for m in self.members)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        from engine.encoders.heads import encode_members  # torch: only when an ensemble encodes

        return concatenate_embeddings(encode_members(self.members, images), self.weights)
