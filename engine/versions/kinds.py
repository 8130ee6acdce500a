"""The registry of model-version kinds: what kind of version a ``models`` row is, and how its encoder is rebuilt.

A kind is one object registered under its name in :data:`KINDS`. The name is stored in the row's ``kind``
column and the kind's parameters (JSON) in its ``config`` column, written when the version is published;
:func:`engine.versions.resolve.encoder_for_model` reads both and calls the kind's ``build``. Adding a kind
of version is one module that defines a class and registers it (see ``engine/versions/base.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from engine.core.registry import Registry
from engine.storage.database import Database, ModelRecord
from engine.versions.files import encode_stored


@dataclass(frozen=True)
class BuildContext:
    """What a kind's builder may use: the database, the device, and the encoders of other versions
    (``encoder_of``: the resolver itself, so a kind never imports it and a parent chain of any kind works)."""

    db: Database
    device: str | None
    encoder_of: Callable[[ModelRecord], Any]

    def parent_encoder(self, record: ModelRecord) -> Any:
        """The encoder of ``record``'s parent version."""
        return self.encoder_of(self.db.resolve_model(record.parent))


class VersionKind(Protocol):
    """One kind of model version."""

    def build(self, context: BuildContext, record: ModelRecord) -> Any:
        """The encoder that embeds new images exactly as ``record``'s vectors were made."""

    def parents(self, record: ModelRecord) -> list[str]:
        """Ids of the versions this one is made from (empty for a base encoder)."""

    def embed_rows(self, context: BuildContext, record: ModelRecord, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """Vectors of catalogue ``rows`` (``image_id``, ``path`` and metadata) that ``record``'s table lacks: the rows
        it could embed and their vectors (its parents are in step already). Raises :class:`VersionError` for a kind
        that cannot embed new images."""


class EmbedsFiles:
    """Mixin: a version whose vectors are made from the image files by its own encoder."""

    def embed_rows(self, context: BuildContext, record: ModelRecord, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        encoder = context.encoder_of(record)
        return encode_stored(rows, encoder.encode_images, record.dim)


KINDS: Registry[VersionKind] = Registry("model-version kind")


def register_kind(name: str, description: str = "") -> Callable[[type], type]:
    """Class decorator: register an instance of the class as the kind ``name``."""

    def decorate(kind_class: type) -> type:
        KINDS.add(name, kind_class(), description or (kind_class.__doc__ or "").strip().splitlines()[0])
        return kind_class

    return decorate


def list_kinds() -> dict[str, str]:
    """Registered kinds of model version and what each is."""
    return KINDS.describe()


class SingleParent:
    """Mixin: a version made from the one version in its ``parent`` column."""

    def parents(self, record: ModelRecord) -> list[str]:
        return [record.parent] if record.parent else []
