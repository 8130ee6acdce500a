"""Base versions: a registered encoder or timm architecture (``encoder``), the same with a stored masker in
front (``masked``), and vectors made outside Lookalike (``external``), which cannot embed new images."""

from __future__ import annotations

from typing import Any

from engine.core.errors import CannotEmbedError, VersionError
from engine.encoders.config import EncoderConfig
from engine.encoders.factory import Encoder, create_encoder
from engine.masking.encoder import masked_encoder
from engine.storage.database import EXTERNAL_KIND, ModelRecord
from engine.versions.kinds import BuildContext, EmbedsFiles, register_kind


def _base_encoder(context: BuildContext, record: ModelRecord) -> Encoder:
    settings = record.settings
    recorded = context.db.artifact(settings.get("weights") or record.weights_source)
    # a packaged encoder's weights file moves with the environment; the fingerprint check catches other weights
    weights = str(recorded) if recorded.is_file() else None
    return create_encoder(EncoderConfig(name=settings.get("name", record.encoder), weights=weights, device=context.device))


@register_kind("encoder")
class BaseEncoderKind(EmbedsFiles):
    """A registered encoder or timm architecture with its weights file."""

    def build(self, context: BuildContext, record: ModelRecord) -> Encoder:
        return _base_encoder(context, record)

    def parents(self, record: ModelRecord) -> list[str]:
        return []


@register_kind("masked")
class MaskedEncoderKind(EmbedsFiles):
    """A base encoder with a stored masker in front (the masker and mode are in the config)."""

    def build(self, context: BuildContext, record: ModelRecord) -> Encoder:
        settings = record.settings
        return masked_encoder(_base_encoder(context, record), context.db, settings["masker"], settings["mode"], context.device)

    def parents(self, record: ModelRecord) -> list[str]:
        return []


@register_kind(EXTERNAL_KIND)
class ExternalKind:
    """Vectors written by another program: searchable by vector or stored id, no encoder to rebuild."""

    def build(self, context: BuildContext, record: ModelRecord) -> Any:
        raise VersionError(f"model {record.id} holds vectors made outside Lookalike: search it with stored ids or vectors, "
                           "or ingest images with an encoder to make a version that embeds new images")

    def parents(self, record: ModelRecord) -> list[str]:
        return [record.parent] if record.parent else []

    def embed_rows(self, context: BuildContext, record: ModelRecord, rows: Any) -> Any:
        raise CannotEmbedError(f"model {record.id} holds vectors made outside Lookalike and cannot embed the {rows.num_rows} "
                           "catalogue images it lacks: write their vectors with the program that made the others, "
                           "or drop the version (lookalike models --drop)")
