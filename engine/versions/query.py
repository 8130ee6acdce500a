"""The encoder for queries of a version: masked as its catalogue was, and nothing else."""

from __future__ import annotations

from engine.core.errors import EncoderMismatchError
from engine.encoders.factory import Encoder
from engine.masking.encoder import masking_of
from engine.masking.store import resolve_masker
from engine.storage.database import Database, ModelRecord
from engine.versions.resolve import encoder_for_model


def query_encoder(db: Database, model: ModelRecord, mask: str | None = None, mode: str | None = None, device: str | None = None) -> Encoder | None:
    """The encoder for queries of ``model``: masked as its catalogue was.

    Without ``mask``, a masked model's own masking is used (None = nothing special, the searcher
    builds its encoder). With ``mask``, the queries are masked with it and the searcher refuses them
    unless it is the catalogue's masking.
    """
    if mask is None and mode is None:
        return encoder_for_model(db, model, device) if masking_of(model) else None
    recorded = masking_of(model) or {}
    mask = mask or recorded.get("masker")
    if mask is None:
        raise EncoderMismatchError(f"model {model.id} was made without a mask; a --mask-mode alone cannot apply")
    resolved = resolve_masker(db, mask).id
    if resolved != recorded.get("masker") or (mode or recorded.get("mode")) != recorded.get("mode"):
        raise EncoderMismatchError(
            f"queries masked with {resolved} ({mode or recorded.get('mode', 'zero')}) cannot search model {model.id}, whose catalogue was "
            + (f"masked with {recorded['masker']} ({recorded['mode']})" if recorded else "not masked")
            + ": vectors made under different masking are not comparable"
        )
    return encoder_for_model(db, model, device)
