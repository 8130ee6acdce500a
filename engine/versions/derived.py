"""Derived model versions: whitening, database-side augmentation (DBA), ensembles and test-time
augmentation (TTA), stored in the ``models`` table like trained heads.

Each derivation is built from one or more parent versions and writes its own embeddings table. Its
parameters (a fitted whitening, the DBA settings, member weights, the TTA views) are part of its
fingerprint, so a query is embedded by the version's own encoder (the parents' encoders plus the
transform) and an encoder of anything else is refused. ``bring_in_step`` brings a version up to
date when the catalogue changes (:mod:`engine.versions.coverage`: DBA recomputes every catalogue row, since
new images change their neighbours; the others compute the new rows only).

Registry: ``register_derivation(kind, config_type)`` (which also registers the version kind);
``create_derivation(kind, config)``; ``list_derivations()``. Publication writes the parameters file, then the embeddings, and the
``models`` row last, so a crash never leaves a version without its vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

import schemas
from engine.core.clock import utc_now
from engine.core.errors import EncoderMismatchError, MissingFileError, VersionError
from engine.core.progress import Progress, ProgressCallback
from engine.core.progress import report as report_progress
from engine.core.registry import Registry
from engine.core.splits import CATALOGUE_WHERE
from engine.encoders.ensembles import EnsembleConfig, EnsembleEncoder, concatenate_embeddings, member_weights
from engine.encoders.factory import Encoder
from engine.encoders.identity import RecordedIdentity, encoder_fingerprint, model_version_id
from engine.encoders.tta import TTAConfig, TTAModel
from engine.encoders.whitening import WhitenedModel, Whitening, WhiteningConfig, fit_whitening
from engine.storage.database import Database, ModelRecord, vectors_of
from engine.storage.filters import combine_where, read_filtered
from engine.vectors.expansion import database_augmentation
from engine.versions.coverage import bring_in_step
from engine.versions.files import encode_stored
from engine.versions.kinds import KINDS, BuildContext
from engine.versions.resolve import encoder_for_model

logger = logging.getLogger(__name__)

DERIVED_NOTE_KEY = "derived"
Artefact = dict[str, np.ndarray]


@dataclass(frozen=True)
class DBAConfig:
    """Database-side augmentation of the catalogue rows against the whole catalogue."""

    neighbours: int = 5  # each catalogue vector averaged with this many nearest (itself included)
    alpha: float = 3.0  # weights similarity ** alpha
    catalogue_where: str = CATALOGUE_WHERE  # rows that are augmented; the others (queries) stay raw


class Derivation(Protocol):
    """One kind of derived version."""

    kind: str
    recompute_all: bool  # a refresh rewrites every row (True for DBA) or only the missing ones

    def fit(self, db: Database, parents: Sequence[ModelRecord]) -> Artefact: ...

    def output_dim(self, parents: Sequence[ModelRecord], artefact: Artefact) -> int: ...

    def compute(self, context: DerivationContext, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """Vectors of ``rows`` (image ids and metadata); returns the rows it could compute and their vectors."""

    def encoder(self, record: ModelRecord, parent_encoders: Sequence[Any], artefact: Artefact) -> Any: ...


@dataclass
class DerivationContext:
    db: Database
    record: ModelRecord
    parents: list[ModelRecord]
    artefact: Artefact
    device: str | None = None
    _encoder: Any = None

    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = encoder_for_model(self.db, self.record, self.device)
        return self._encoder


DERIVATIONS: Registry[Callable[[Any], Derivation]] = Registry("derivation")


def register_derivation(kind: str, config_type: type) -> Callable[[Callable[[Any], Derivation]], Callable[[Any], Derivation]]:
    """Register a derivation factory (called with its typed config) and the version kind of its versions."""

    def decorate(factory: Callable[[Any], Derivation]) -> Callable[[Any], Derivation]:
        DERIVATIONS.add(kind, factory, config_type=config_type)
        KINDS.add(kind, DerivedKind(kind), f"derived: {(factory.__doc__ or '').strip().splitlines()[0]}")
        return factory

    return decorate


def list_derivations() -> dict[str, str]:
    return DERIVATIONS.describe()


def create_derivation(kind: str, config: Any | None = None) -> Derivation:
    """A derivation by kind with its typed config (default when None); the error names the valid kinds."""
    entry = DERIVATIONS.entry(kind)
    config_type = entry.info["config_type"]
    if config is not None and not isinstance(config, config_type):
        raise TypeError(f"derivation {kind!r} takes a {config_type.__name__}, not {type(config).__name__}")
    return entry.item(config or config_type())


class DerivedKind:
    """The version kind of one derivation: parents from the config, encoder = parents' encoders plus the transform."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def parents(self, record: ModelRecord) -> list[str]:
        return list(record.settings["parents"])

    def build(self, context: BuildContext, record: ModelRecord) -> Any:
        derivation, parents, artefact = _load(context.db, record)
        return derivation.encoder(record, [context.encoder_of(p) for p in parents], artefact)

    def depends_on_whole_catalogue(self, record: ModelRecord) -> bool:
        """Whether any catalogue change changes every row (DBA: new neighbours, and the split says which rows are augmented)."""
        return _load_derivation(record).recompute_all

    def embed_rows(self, context: BuildContext, record: ModelRecord, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """The derivation applied to the parents' stored vectors of ``rows`` (all of the catalogue's rows when it
        depends on the whole catalogue)."""
        derivation, parents, artefact = _load(context.db, record)
        source = _source_rows(context.db, parents)
        if not derivation.recompute_all:
            wanted = set(rows.column("image_id").to_pylist())
            source = source.filter(pa.array([i in wanted for i in source.column("image_id").to_pylist()], pa.bool_()))
        return derivation.compute(DerivationContext(context.db, record, parents, artefact, context.device), source)


# ---- reading stored vectors --------------------------------------------------------------------------


def read_rows(db: Database, model: ModelRecord, where: str | None = None, with_vectors: bool = True) -> pa.Table:
    """Rows of a version's embeddings table (image id, metadata and optionally vectors)."""
    table = db.embeddings(model)
    query = table.search()
    condition = combine_where(table, where)
    if condition:
        query = query.where(condition)
    columns = [name for name in table.schema.names if name not in ("vector", "model_id")] + (["vector"] if with_vectors else [])
    return read_filtered(query.select(columns).limit(None), where)


def _vectors_by_id(db: Database, model: ModelRecord, image_ids: Sequence[str]) -> np.ndarray:
    table = read_rows(db, model)
    position = {image_id: i for i, image_id in enumerate(table.column("image_id").to_pylist())}
    return vectors_of(table)[[position[i] for i in image_ids]]


# ---- the derivations ---------------------------------------------------------------------------------


class _EncoderWrapping:
    """Derivations whose query encoder is the parent's encoder with its network wrapped."""

    def wrap(self, model, artefact: Artefact):  # noqa: ANN001 - a torch module
        raise NotImplementedError

    def encoder(self, record: ModelRecord, parent_encoders: Sequence[Any], artefact: Artefact) -> Encoder:
        (base,) = parent_encoders
        if not isinstance(base, Encoder):
            raise VersionError(f"{self.kind} needs a parent with one network, not {type(base).__name__}")
        return base.derive(name=record.encoder, model=self.wrap(base.model, artefact), weights_source=record.weights_source,
                           weights_sha256=record.weights_sha256)


@register_derivation("whiten", WhiteningConfig)
class WhiteningDerivation(_EncoderWrapping):
    """PCA-whitening fitted on the parent's catalogue rows. Cost: one fit, O(dim^2) per vector after."""

    kind = "whiten"
    recompute_all = False

    def __init__(self, config: WhiteningConfig) -> None:
        self.config = config

    def fit(self, db: Database, parents: Sequence[ModelRecord]) -> Artefact:
        (parent,) = parents
        catalogue = vectors_of(read_rows(db, parent, db.catalogue_where(self.config.catalogue_where)))
        if len(catalogue) == 0:
            raise VersionError(f"no rows of {parent.id} match {self.config.catalogue_where!r} to fit the whitening on")
        whitening = fit_whitening(catalogue, self.config)
        return {"mean": whitening.mean, "projection": whitening.projection}

    def output_dim(self, parents: Sequence[ModelRecord], artefact: Artefact) -> int:
        return int(artefact["projection"].shape[1])

    def compute(self, context: DerivationContext, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        return rows, Whitening(context.artefact["mean"], context.artefact["projection"]).transform(vectors_of(rows))

    def wrap(self, model, artefact: Artefact):  # noqa: ANN001
        return WhitenedModel(model, Whitening(artefact["mean"], artefact["projection"]))


class _Identity:
    """The parent network unchanged (DBA changes stored vectors, not how a query is embedded)."""

    @staticmethod
    def wrap(model, artefact: Artefact):  # noqa: ANN001
        return model


class _SameEmbedding(RecordedIdentity):
    """A parent's encoder under the derived version's identity (its vectors are the parent's)."""

    def __init__(self, parent: Any, name: str, fingerprint: str) -> None:
        self._parent, self.name, self._fingerprint = parent, name, fingerprint
        self.dim, self.batch_size = parent.dim, parent.batch_size

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return self._parent.encode_images(images)


@register_derivation("dba", DBAConfig)
class AugmentationDerivation(_EncoderWrapping):
    """alpha-DBA of the catalogue rows against the catalogue; query rows stay raw, as a new query is.

    Cost: one exact k-NN of the catalogue against itself per refresh (O(n^2 x dim)); none at query time.
    """

    kind = "dba"
    recompute_all = True

    def __init__(self, config: DBAConfig) -> None:
        self.config = config

    def fit(self, db: Database, parents: Sequence[ModelRecord]) -> Artefact:
        return {}

    def output_dim(self, parents: Sequence[ModelRecord], artefact: Artefact) -> int:
        return parents[0].dim

    def compute(self, context: DerivationContext, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        catalogue_rows = read_rows(context.db, context.parents[0], context.db.catalogue_where(self.config.catalogue_where))
        catalogue_ids = set(catalogue_rows.column("image_id").to_pylist())
        vectors = vectors_of(rows).copy()
        in_catalogue = np.array([i in catalogue_ids for i in rows.column("image_id").to_pylist()], bool)
        if in_catalogue.any():
            vectors[in_catalogue] = database_augmentation(vectors[in_catalogue], self.config.neighbours, self.config.alpha, reference=vectors_of(catalogue_rows))
        return rows, vectors

    wrap = staticmethod(_Identity.wrap)

    def encoder(self, record: ModelRecord, parent_encoders: Sequence[Any], artefact: Artefact) -> Any:
        (base,) = parent_encoders
        if isinstance(base, Encoder):
            return super().encoder(record, parent_encoders, artefact)
        return _SameEmbedding(base, record.encoder, record.fingerprint)  # e.g. an ensemble parent


@register_derivation("ensemble", EnsembleConfig)
class EnsembleDerivation:
    """Weighted concatenation of normalised member vectors. Cost at query time: every member's encoder."""

    kind = "ensemble"
    recompute_all = False

    def __init__(self, config: EnsembleConfig) -> None:
        self.config = config

    def fit(self, db: Database, parents: Sequence[ModelRecord]) -> Artefact:
        if len(parents) < 2:
            raise VersionError(f"an ensemble needs at least 2 member versions, got {len(parents)}")
        return {"weights": member_weights(len(parents), self.config)}

    def output_dim(self, parents: Sequence[ModelRecord], artefact: Artefact) -> int:
        return int(sum(p.dim for p in parents))

    def compute(self, context: DerivationContext, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        ids = rows.column("image_id").to_pylist()
        parts = [vectors_of(rows)] + [_vectors_by_id(context.db, p, ids) for p in context.parents[1:]]
        return rows, concatenate_embeddings(parts, context.artefact["weights"])

    def encoder(self, record: ModelRecord, parent_encoders: Sequence[Any], artefact: Artefact) -> EnsembleEncoder:
        return EnsembleEncoder(record.encoder, parent_encoders, artefact["weights"], record.fingerprint)


@register_derivation("tta", TTAConfig)
class AugmentedViewsDerivation(_EncoderWrapping):
    """Test-time augmentation: every stored image encoded again as the mean of its views.

    Cost: ``views`` forward passes per image, at ingest (here) and at query time.
    """

    kind = "tta"
    recompute_all = False

    def __init__(self, config: TTAConfig) -> None:
        self.config = config

    def fit(self, db: Database, parents: Sequence[ModelRecord]) -> Artefact:
        return {"views": np.array([self.config.views])}

    def output_dim(self, parents: Sequence[ModelRecord], artefact: Artefact) -> int:
        return parents[0].dim

    def compute(self, context: DerivationContext, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        return encode_stored(rows, context.encoder().encode_images, context.record.dim)

    def wrap(self, model, artefact: Artefact):  # noqa: ANN001
        return TTAModel(model, self.config)


# ---- publication, refresh, query encoders ---------------------------------------------------------------


def derived_dir(db: Database) -> Path:
    return db.local_folder("derived")


def artefact_sha(artefact: Artefact) -> str:
    digest = hashlib.sha256()
    for key in sorted(artefact):
        array = np.ascontiguousarray(artefact[key])
        digest.update(key.encode() + str(array.dtype).encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()


def is_derived(model: ModelRecord) -> bool:
    return model.kind in DERIVATIONS


def _config_from_record(kind: str, saved: dict) -> Any:
    config_type = DERIVATIONS.entry(kind).info["config_type"]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    return config_type(**values)


def _load_derivation(model: ModelRecord) -> Derivation:
    if not is_derived(model):
        raise VersionError(f"model {model.id} is a {model.kind} version, not a derived one ({DERIVATIONS.names()})")
    return create_derivation(model.kind, _config_from_record(model.kind, model.settings["params"]))


def _load(db: Database, model: ModelRecord) -> tuple[Derivation, list[ModelRecord], Artefact]:
    derivation = _load_derivation(model)
    settings = model.settings
    parents = [db.resolve_model(p) for p in settings["parents"]]
    path = db.artifact(model.weights_source)
    if not path.is_file():
        raise MissingFileError(f"parameters of model {model.id} not found at {path}; restore the file or publish the version again")
    with np.load(path) as stored:
        artefact = {k: stored[k] for k in stored.files}
    if artefact_sha(artefact) != settings["artefact_sha256"]:
        raise EncoderMismatchError(f"parameters file {path} of model {model.id} changed since it was published")
    return derivation, parents, artefact


def _identity(kind: str, parents: Sequence[ModelRecord], config: Any, artefact: Artefact, dim: int) -> tuple[str, str, str, str, str]:
    """(name, architecture, preprocessing, weights sha, fingerprint) of a derived version."""
    blob = json.dumps([kind, [p.weights_sha256 for p in parents], [p.fingerprint for p in parents], asdict(config), artefact_sha(artefact)], sort_keys=True, default=list)
    weights_sha = hashlib.sha256(blob.encode()).hexdigest()
    if len(parents) == 1:
        name, architecture, preprocessing = f"{parents[0].encoder}+{kind}", parents[0].architecture, parents[0].preprocessing
    else:
        name = kind
        architecture = "+".join(p.architecture for p in parents)
        preprocessing = json.dumps([p.preprocessing for p in parents])
    return name, architecture, preprocessing, weights_sha, encoder_fingerprint(architecture, weights_sha, dim, preprocessing)


def publish_derived(db: Database, kind: str, parents: Sequence[ModelRecord], config: Any | None = None, progress: ProgressCallback | None = None, device: str | None = None) -> ModelRecord:
    """Fit and store a derived version of ``parents``; an identical one already stored is returned as is."""
    derivation = create_derivation(kind, config)
    config = derivation.config
    parents = list(parents)
    if not parents:
        raise VersionError(f"derivation {kind!r} needs a parent version")
    artefact = derivation.fit(db, parents)
    dim = derivation.output_dim(parents, artefact)
    name, architecture, preprocessing, weights_sha, fingerprint = _identity(kind, parents, config, artefact, dim)
    model_id = model_version_id(name, fingerprint)
    existing = db.find_models(model_id=model_id)
    if existing:
        logger.info("derived version %s exists already", model_id)
        return existing[0]
    path = derived_dir(db) / f"{schemas.embeddings_table_name(model_id).removeprefix(schemas.EMBEDDINGS_PREFIX)}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **artefact)
    tmp.replace(path)  # atomic: a reader never sees half a file
    settings = {"parents": [p.id for p in parents], "params": asdict(config), "artefact_sha256": artefact_sha(artefact)}
    notes = {DERIVED_NOTE_KEY: kind, **settings, "config": settings["params"]}  # 0.1's notes, kept for readers of notes
    record = ModelRecord(
        id=model_id, encoder=name, architecture=architecture, weights_source=str(path), weights_sha256=weights_sha, dim=dim,
        preprocessing=preprocessing, fingerprint=fingerprint, embeddings_table=schemas.embeddings_table_name(model_id),
        created_at=utc_now(), parent=parents[0].id, notes=json.dumps(notes, default=list),
        kind=kind, config=json.dumps(settings, sort_keys=True, default=list),
    )
    written = _write(DerivationContext(db, record, parents, artefact, device), derivation, _source_rows(db, parents), progress)
    db.add_model(record)
    bring_in_step(db, [record])  # its coverage record (and anything that changed while it was computed)
    logger.info("published derived version %s (%s of %s): %d rows", record.id, kind, [p.id for p in parents], written)
    return record


def _source_rows(db: Database, parents: Sequence[ModelRecord], exclude: set[str] | None = None) -> pa.Table:
    """The first parent's rows (with vectors) of the images every parent has, minus ``exclude``."""
    rows = read_rows(db, parents[0])
    keep = None
    for other in parents[1:]:
        ids = set(read_rows(db, other, with_vectors=False).column("image_id").to_pylist())
        keep = ids if keep is None else keep & ids
    if keep is not None or exclude:
        wanted = [(keep is None or i in keep) and not (exclude and i in exclude) for i in rows.column("image_id").to_pylist()]
        rows = rows.filter(pa.array(wanted, pa.bool_()))
    return rows


def _write(context: DerivationContext, derivation: Derivation, rows: pa.Table, progress: ProgressCallback | None, batch_rows: int = 2048) -> int:
    if derivation.recompute_all:
        # all rows at once: each catalogue vector depends on the whole catalogue
        batch_rows = max(batch_rows, rows.num_rows)
    written = 0
    for start in range(0, rows.num_rows, batch_rows):
        kept, vectors = derivation.compute(context, rows.slice(start, batch_rows))
        if kept.num_rows:
            context.db.write_vectors(context.record, kept.column("image_id"), kept, vectors)
        written += kept.num_rows
        report_progress(progress, Progress("derive", written, rows.num_rows, "rows", f"{context.record.kind} {context.record.id}"))
    return written


def derived_versions(db: Database) -> list[ModelRecord]:
    """Every derived version of the database, newest first."""
    return [m for m in db.find_models() if is_derived(m)]
