"""The identity of vectors: an encoder's fingerprint and the model-version id derived from it."""

from __future__ import annotations

import hashlib
import json

FINGERPRINT_CHARS = 16
ID_FINGERPRINT_CHARS = 8


def model_version_id(name: str, fingerprint: str) -> str:
    """A model version's id: its name and a short fingerprint (the same vectors give the same id)."""
    return f"{name}-{fingerprint[:ID_FINGERPRINT_CHARS]}"


def encoder_fingerprint(architecture: str, weights_sha256: str, dim: int, preprocessing: str) -> str:
    """Hash of everything that decides what vectors an encoder makes."""
    blob = json.dumps([architecture, weights_sha256, dim, preprocessing], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:FINGERPRINT_CHARS]


class RecordedIdentity:
    """Mixin of encoder-like objects whose identity is a fingerprint recorded elsewhere (ensembles, a parent's
    encoder under a derived version's name): ``name`` and ``_fingerprint`` give ``fingerprint`` and ``model_id``."""

    name: str
    _fingerprint: str

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def model_id(self) -> str:
        return model_version_id(self.name, self.fingerprint)
