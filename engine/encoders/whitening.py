"""PCA-whitening fitted on the catalogue: centre, rotate onto the principal axes, scale each axis by
``eigenvalue ** -power`` (optionally keeping only the leading ``out_dim`` axes), L2-normalise.

Whitening (Jegou & Chum, ECCV 2012) down-weights the directions every image shares, so co-occurring
features stop counting twice. The fitted transform is stored as a model version (see
:mod:`engine.versions.derived`), so queries are transformed exactly like the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.core.errors import EncoderError
from engine.core.splits import CATALOGUE_WHERE


@dataclass(frozen=True)
class WhiteningConfig:
    """How to fit the whitening."""

    out_dim: int | None = 256  # leading principal axes kept; None keeps all with a positive eigenvalue
    power: float = 0.5  # 0.5 = full whitening, 0 = PCA rotation only, in between = partial whitening
    epsilon: float = 1e-3  # added to every eigenvalue, relative to the largest (regularises tiny axes)
    catalogue_where: str = CATALOGUE_WHERE  # the rows the transform is fitted on


@dataclass(frozen=True)
class Whitening:
    """A fitted whitening: ``(x - mean) @ projection``."""

    mean: np.ndarray  # (dim,)
    projection: np.ndarray  # (dim, out_dim)

    @property
    def out_dim(self) -> int:
        return int(self.projection.shape[1])

    def transform(self, vectors: np.ndarray, normalise: bool = True) -> np.ndarray:
        """Whitened vectors, L2-normalised unless ``normalise`` is False."""
        whitened = (np.asarray(vectors, np.float64) - self.mean) @ self.projection
        if normalise:
            whitened /= np.maximum(np.linalg.norm(whitened, axis=1, keepdims=True), 1e-12)
        return whitened.astype(np.float32)


def fit_whitening(vectors: np.ndarray, config: WhiteningConfig = WhiteningConfig()) -> Whitening:
    """Fit PCA-whitening on ``vectors`` (the catalogue). Cost: O(n x dim^2 + dim^3) once."""
    vectors = np.asarray(vectors, np.float64)
    if len(vectors) < 2:
        raise EncoderError(f"whitening needs at least 2 vectors, got {len(vectors)}")
    mean = vectors.mean(axis=0)
    centred = vectors - mean
    covariance = centred.T @ centred / len(vectors)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
    rank = int((eigenvalues > eigenvalues[0] * 1e-9).sum())
    keep = min(config.out_dim or rank, rank)
    if config.out_dim and config.out_dim > rank:
        raise EncoderError(f"out_dim {config.out_dim} exceeds the rank {rank} of {len(vectors)} catalogue vectors")
    # the sign of an eigenvector is arbitrary: fix it so that refits give the same transform
    signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(eigenvectors.shape[1])])
    eigenvectors = eigenvectors * signs
    scale = (eigenvalues[:keep] + config.epsilon * eigenvalues[0]) ** -config.power
    return Whitening(mean.astype(np.float64), eigenvectors[:, :keep] * scale)


class WhitenedModel(nn.Module):
    """A backbone (or backbone plus head) whose normalised output is whitened: what the stored vectors saw."""

    def __init__(self, base: nn.Module, whitening: Whitening) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("mean", torch.from_numpy(whitening.mean.astype(np.float32)))
        self.register_buffer("projection", torch.from_numpy(whitening.projection.astype(np.float32)))
        self.num_features = whitening.out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = nn.functional.normalize(self.base(images).float(), dim=1)
        return (features - self.mean) @ self.projection
