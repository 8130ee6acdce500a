"""One resolver: a stored ``models`` row back to the encoder that made its vectors, checked once."""

from __future__ import annotations

import logging
from typing import Any

from engine.core.errors import EncoderMismatchError
from engine.storage.database import Database, ModelRecord
from engine.versions.kinds import KINDS, BuildContext

logger = logging.getLogger(__name__)


def check_fingerprint(record: ModelRecord, encoder: Any) -> Any:
    """``encoder`` if it makes ``record``'s vectors (same fingerprint and width), else :class:`EncoderMismatchError`."""
    if encoder.fingerprint != record.fingerprint or encoder.dim != record.dim:
        raise EncoderMismatchError(
            f"encoder {encoder.model_id} (fingerprint {encoder.fingerprint}, dim {encoder.dim}) cannot make the vectors of model "
            f"{record.id} (fingerprint {record.fingerprint}, dim {record.dim}): vectors from different encoders are not comparable "
            "(were its weights or parameters changed since it was published?)"
        )
    return encoder


def build_context(db: Database, device: str | None = None) -> BuildContext:
    """A context whose ``encoder_of`` rebuilds any version's encoder (checked once, then kept for the context's life)."""
    built: dict[str, Any] = {}

    def encoder_of(other: ModelRecord) -> Any:
        if other.id not in built:
            built[other.id] = check_fingerprint(other, KINDS.get(other.kind).build(context, other))
        return built[other.id]

    context = BuildContext(db, device, encoder_of)
    return context


def encoder_for_model(db: Database, record: ModelRecord, device: str | None = None) -> Any:
    """The encoder that embeds new images exactly as ``record``'s vectors were made (parents rebuilt first)."""
    return build_context(db, device).encoder_of(record)


BASE_KINDS = ("encoder",)  # versions made straight from an image encoder (not trained on the catalogue's labels)


def base_version(db: Database, record: ModelRecord) -> ModelRecord | None:
    """The image-encoder version ``record`` is built on (a head on Lite2: Lite2), or None when its chain has none."""
    roots = [m for m in lineage(db, record) if m.kind in BASE_KINDS]
    return roots[-1] if roots else None


def lineage(db: Database, record: ModelRecord) -> list[ModelRecord]:
    """``record`` and every version it is made from, depth first (parents after children, no repeats)."""
    seen: dict[str, ModelRecord] = {}
    pending = [record]
    while pending:
        current = pending.pop(0)
        if current.id in seen:
            continue
        seen[current.id] = current
        pending.extend(db.resolve_model(parent) for parent in KINDS.get(current.kind).parents(current))
    return list(seen.values())
