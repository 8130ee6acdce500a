"""The embedded database: LanceDB tables on disk, opened and checked against ``schemas``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import lancedb
import numpy as np
import polars as pl
import pyarrow as pa

import schemas
from engine.core.clock import utc_now
from engine.core.errors import EncoderMismatchError, InvalidRequestError, NotFoundError, StorageError
from engine.core.faults import fault_point
from engine.core.splits import CATALOGUE_WHERE, UNSPLIT_CATALOGUE_WHERE, sql_quote
from engine.storage import migrations
from engine.storage.filters import combine_where, read_filtered
from engine.storage.location import artifacts_dir, is_object_store, resolve_storage_options

logger = logging.getLogger(__name__)

DEFAULT_DB_ENV = "LOOKALIKE_DB"
DEFAULT_DB_PATH = Path("data") / "lookalike.lancedb"
ACTIVE_MODEL_KEY = "active_model"
SCRATCH_URI = "memory://"  # where a read-only database keeps empty stand-ins of tables it does not have
AMBIGUITY_SHOWN = 5  # ids listed when a prefix matches several
RELOCATABLE_DEPTH = 3  # a moved database finds its files at most this many path parts below its folder
EXTERNAL_KIND = "external"
DELETE_CHUNK = 2048  # ids per ``IN (...)`` delete: bounded SQL text, few commits


class VersionSource(Protocol):
    """What :meth:`Database.register_model` records of an encoder (``engine.encoders.factory.Encoder``)."""

    name: str
    architecture: str
    weights_source: str
    weights_sha256: str
    dim: int
    preprocessing: str
    fingerprint: str
    model_id: str
    version_kind: str
    version_config: dict[str, Any]


class ModelNotFoundError(NotFoundError):
    """No model version matches the name asked for."""


MODEL_SETTING_SEPARATOR = ":"  # a setting of one model version is keyed '<name>:<model id>' and goes with it


def default_db_path() -> str:
    """``$LOOKALIKE_DB`` if set, else ``data/lookalike.lancedb`` under the working directory."""
    return os.environ.get(DEFAULT_DB_ENV) or str(DEFAULT_DB_PATH)


@dataclass(frozen=True)
class ModelRecord:
    """One row of the ``models`` table."""

    id: str
    encoder: str
    architecture: str
    weights_source: str
    weights_sha256: str
    dim: int
    preprocessing: str
    fingerprint: str
    embeddings_table: str
    created_at: datetime
    parent: str | None = None
    notes: str | None = None
    kind: str = EXTERNAL_KIND  # see engine.versions.kinds; "external": vectors made outside Lookalike
    config: str = "{}"  # JSON: the kind's parameters

    @property
    def settings(self) -> dict[str, Any]:
        """The kind's parameters (the ``config`` column, parsed)."""
        return json.loads(self.config or "{}")


def vectors_of(table: pa.Table) -> np.ndarray:
    """The ``vector`` column of stored rows as an (n, dim) float32 array."""
    column = table.column("vector").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size).astype(np.float32, copy=False)


def stored_vectors(db: Database, model: ModelRecord, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``model``'s stored vectors of the given images that it has, by image id (read in chunks of ids)."""
    found: dict[str, np.ndarray] = {}
    table = db.embeddings(model)
    for start in range(0, len(image_ids), DELETE_CHUNK):
        chunk = image_ids[start : start + DELETE_CHUNK]
        rows = table.search().where("image_id IN (" + ", ".join(sql_quote(i) for i in chunk) + ")").select(["image_id", "vector"]).limit(None).to_arrow()
        if rows.num_rows:
            found.update(zip(rows.column("image_id").to_pylist(), vectors_of(rows)))
    return found


class Database:
    """A Lookalike database: a LanceDB directory holding the tables described in ``schemas``.

    Opening checks every known table's schema version; an incompatible table raises
    :class:`schemas.SchemaMismatchError` before anything is read or written.

    ``read_only=True`` is how read commands open a database: it must exist already (a typo'd path is an
    error, not a new empty database), nothing is created or upgraded, and a table the database does not
    have yet (no calibration, no review queue) reads as empty.
    """

    def __init__(self, uri: str | os.PathLike[str] | None = None, *, read_only: bool = False) -> None:
        self.uri = str(uri or default_db_path())
        self.read_only = read_only
        # object stores (s3://...): endpoint and keys from the environment or the storage config, never logged
        self.storage_options = resolve_storage_options(self.uri)
        self._check_location()
        self._db = lancedb.connect(self.uri, storage_options=self.storage_options.as_dict() or None)
        self._scratch: lancedb.DBConnection | None = None  # empty stand-ins for missing tables when read-only
        self._listed: set[str] = set()  # tables seen by the last listing (a reader re-lists only for one it has not seen)
        if read_only and not self.table_names():
            raise NotFoundError(f"{self.uri} is not a Lookalike database (it holds no tables); check --db, or create one with lookalike ingest")
        self._check_schemas()

    def _check_location(self) -> None:
        """A local path that is a file, or (read-only) does not exist, is refused before LanceDB creates anything."""
        if self.is_object_store:
            return
        path = Path(self.uri)
        if path.exists() and not path.is_dir():
            raise StorageError(f"--db {self.uri} is a file, not a database folder; give a folder (lookalike ingest creates one)")
        if self.read_only and not path.exists():
            raise NotFoundError(f"no Lookalike database at {self.uri}: the folder does not exist; check --db, or create one with lookalike ingest")

    def __repr__(self) -> str:
        return f"Database({self.uri!r})"

    @property
    def is_object_store(self) -> bool:
        return is_object_store(self.uri)

    @property
    def connection(self) -> lancedb.DBConnection:
        """The LanceDB connection (with the storage options), for tables outside ``schemas``."""
        return self._db

    def local_folder(self, name: str) -> Path:
        """A local folder for non-table files (weights, caches): inside a local database, else per URI."""
        return artifacts_dir(self.uri, name)

    def artifact(self, recorded: str | os.PathLike[str]) -> Path:
        """A file the database recorded by absolute path (weights, parameters), found again after the database
        folder was moved or copied: the recorded path if it exists, else the same file under this database's folder.
        Checksums and fingerprints, checked by the callers, keep a different file from passing for it."""
        path = Path(recorded)
        if path.exists() or self.is_object_store:
            return path
        root = Path(self.uri)
        for depth in range(1, RELOCATABLE_DEPTH + 1):
            moved = root.joinpath(*path.parts[-depth:])
            if moved.exists():
                return moved
        return path

    # ---- tables ---------------------------------------------------------------------------------

    def _list_tables(self) -> set[str]:
        self._listed = set(self.table_names())
        return self._listed

    def table_names(self) -> list[str]:
        names: list[str] = []
        page_token = None
        while True:
            listing = self._db.list_tables(page_token=page_token)
            names.extend(listing.tables)
            page_token = listing.page_token
            if not page_token:
                return sorted(names)

    def _check_schemas(self) -> None:
        fixed = {
            schemas.IMAGES_TABLE: schemas.IMAGES_SCHEMA,
            schemas.MODELS_TABLE: schemas.MODELS_SCHEMA,
            schemas.ERRORS_TABLE: schemas.ERRORS_SCHEMA,
            schemas.CALIBRATIONS_TABLE: schemas.CALIBRATIONS_SCHEMA,
            schemas.REVIEW_TABLE: schemas.REVIEW_SCHEMA,
            schemas.SETTINGS_TABLE: schemas.SETTINGS_SCHEMA,
            schemas.COVERAGE_TABLE: schemas.COVERAGE_SCHEMA,
            schemas.AUDIT_TABLE: schemas.AUDIT_SCHEMA,
            schemas.REGIONS_TABLE: schemas.REGIONS_SCHEMA,
        }
        for name in self.table_names():
            table = self._open_listed(name)
            if table is None:
                continue
            if name == schemas.MODELS_TABLE and migrations.needs_upgrade(table):
                if self.read_only:  # readers infer the kinds (find_models); the next write command upgrades it
                    logger.info("database %s is from release 0.1: read as it is, upgraded by the next write", self.uri)
                    schemas.check_compatible(name, table.schema, migrations.legacy_models_schema())
                    continue
                self._upgrade_models(table)
                table = self._open_listed(name)
            if name in fixed:
                schemas.check_compatible(name, table.schema, fixed[name])
            elif name.startswith(schemas.EMBEDDINGS_PREFIX):
                on_disk = table.schema
                dim = on_disk.field("vector").type.list_size if "vector" in on_disk.names else 1
                schemas.check_compatible(name, on_disk, schemas.embeddings_schema(dim, "", ""))
            elif name.startswith(schemas.REGION_EMBEDDINGS_PREFIX):
                dim = table.schema.field("vector").type.list_size if "vector" in table.schema.names else 1
                schemas.check_compatible(name, table.schema, schemas.region_embeddings_schema(dim, ""))

    def _upgrade_models(self, table: lancedb.table.Table) -> None:
        """Record the kind of every version of a database from release 0.1 (see ``migrations``)."""
        try:
            migrations.upgrade_models(table)
        except OSError as error:  # a read-only database: readers infer the kinds the same way
            raise StorageError(f"database {self.uri} was written by release 0.1 and must be upgraded once, but it cannot be "
                               f"written ({error}); open it once with write permission") from error

    def _open_listed(self, name: str) -> lancedb.table.Table | None:
        """A listed table, or None for one whose creation was killed before its first commit.

        Such a folder holds no data (no version manifest); LanceDB lists it but cannot open it, and
        ``create_table(exist_ok=True)`` creates the table over it on first use.
        """
        try:
            return self._db.open_table(name)
        except ValueError:
            folder = None if is_object_store(self.uri) else Path(self.uri) / f"{name}.lance"
            if folder is None or any((folder / "_versions").glob("*.manifest")):
                raise
            logger.warning("table %s was never committed (an interrupted create): it will be created on first use", name)
            return None

    def table(self, name: str, schema: pa.Schema) -> lancedb.table.Table:
        """The table ``name`` (created with ``schema`` on first use; empty and never created when read-only)."""
        return self._table(name, schema)

    def _table(self, name: str, schema: pa.Schema) -> lancedb.table.Table:
        if self.read_only and name not in self._listed and name not in self._list_tables():
            # nothing is created for a reader: an empty table of the same schema, in memory
            if self._scratch is None:
                self._scratch = lancedb.connect(SCRATCH_URI)
            return self._scratch.create_table(name, schema=schema, exist_ok=True)
        if name in self._listed or name in self._list_tables():
            # opened as it is: a table may hold more columns than ``schema`` (user metadata columns)
            table = self._open_listed(name)
            if table is not None:
                return table
        return self._db.create_table(name, schema=schema, exist_ok=True)

    @property
    def images(self) -> lancedb.table.Table:
        return self._table(schemas.IMAGES_TABLE, schemas.IMAGES_SCHEMA)

    @property
    def models(self) -> lancedb.table.Table:
        return self._table(schemas.MODELS_TABLE, schemas.MODELS_SCHEMA)

    @property
    def errors(self) -> lancedb.table.Table:
        return self._table(schemas.ERRORS_TABLE, schemas.ERRORS_SCHEMA)

    @property
    def calibrations(self) -> lancedb.table.Table:
        return self._table(schemas.CALIBRATIONS_TABLE, schemas.CALIBRATIONS_SCHEMA)

    @property
    def settings(self) -> lancedb.table.Table:
        return self._table(schemas.SETTINGS_TABLE, schemas.SETTINGS_SCHEMA)

    def get_setting(self, key: str) -> str | None:
        rows = self.settings.search().where(f"key = {sql_quote(key)}").limit(None).to_arrow().to_pylist()
        return rows[0]["value"] if rows else None

    def set_setting(self, key: str, value: str) -> None:
        row = pa.Table.from_pylist([{"key": key, "value": value, "updated_at": utc_now()}], schema=schemas.SETTINGS_SCHEMA)
        self.settings.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(row)

    @property
    def regions(self) -> lancedb.table.Table:
        return self._table(schemas.REGIONS_TABLE, schemas.REGIONS_SCHEMA)

    def region_embeddings(self, model: ModelRecord) -> lancedb.table.Table:
        """``model``'s region vectors (created on first use)."""
        return self._table(schemas.region_embeddings_table_name(model.id), schemas.region_embeddings_schema(model.dim, model.id))

    def write_regions(self, model: ModelRecord, regions: pa.Table, vectors: np.ndarray) -> None:
        """Upsert regions (``schemas.REGION_FIELDS`` columns) and ``model``'s vectors of them, keyed by region id:
        the vectors first, so a region row never lacks the vector of the version that found it."""
        if not regions.num_rows:
            return
        fields = pa.schema(schemas.REGION_FIELDS)
        regions = regions.select(fields.names).cast(fields)
        vector_column = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel()), model.dim)
        table = self.region_embeddings(model)
        table.merge_insert("region_id").when_matched_update_all().when_not_matched_insert_all().execute(
            pa.table({**{n: regions.column(n) for n in fields.names}, "vector": vector_column}, schema=table.schema))
        stamped = regions.append_column(pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
                                        pa.array([utc_now()] * regions.num_rows, pa.timestamp("us", tz="UTC")))
        self.regions.merge_insert("region_id").when_matched_update_all().when_not_matched_insert_all().execute(stamped.cast(schemas.REGIONS_SCHEMA))

    @property
    def review(self) -> lancedb.table.Table:
        return self._table(schemas.REVIEW_TABLE, schemas.REVIEW_SCHEMA)

    @property
    def coverage(self) -> lancedb.table.Table:
        return self._table(schemas.COVERAGE_TABLE, schemas.COVERAGE_SCHEMA)

    @property
    def audit(self) -> lancedb.table.Table:
        return self._table(schemas.AUDIT_TABLE, schemas.AUDIT_SCHEMA)

    # ---- the catalogue's columns ----------------------------------------------------------------

    def user_fields(self) -> list[pa.Field]:
        """The user metadata columns (``ingest --metadata``), as the ``images`` table holds them."""
        return schemas.user_metadata_fields(self.images.schema)

    def metadata_fields(self) -> list[pa.Field]:
        """Every image metadata column: the fixed ones, then the user's; repeated in every embeddings table."""
        return [*schemas.IMAGE_METADATA_FIELDS, *self.user_fields()]

    def metadata_columns(self) -> list[str]:
        return [field.name for field in self.metadata_fields()]

    def images_schema(self) -> pa.Schema:
        """The ``images`` schema with this database's user columns."""
        return pa.schema([schemas.IMAGES_SCHEMA.field("id"), *self.metadata_fields()], metadata=schemas.IMAGES_SCHEMA.metadata)

    def add_user_columns(self, fields: Sequence[pa.Field]) -> list[pa.Field]:
        """Add user metadata columns (null everywhere) to ``images`` and every embeddings table; returns the new ones.

        ``images`` first: it is the record of the columns, and an embeddings table that lacks one (a kill in
        between) gains it when its version is next brought in step (:func:`ensure_user_columns`)."""
        existing = {field.name: field for field in self.user_fields()}
        new = []
        for field in fields:
            schemas.check_user_column_name(field.name)
            if field.name in existing:
                if not existing[field.name].type.equals(field.type):
                    raise InvalidRequestError(f"metadata column {field.name!r} is already {existing[field.name].type}, not {field.type}: "
                                              "give it the same type (--metadata-types) or another name")
                continue
            new.append(pa.field(field.name, field.type, nullable=True))
        if new:
            self.images.add_columns(new)
            fault_point("store.user_columns_added")
            for model in self.find_models():
                self.ensure_user_columns(model)
            logger.info("added metadata columns %s", [f.name for f in new])
        return new

    def ensure_user_columns(self, model: ModelRecord) -> None:
        """Give a version's embeddings table every user column it lacks (null; filled when brought in step)."""
        if model.embeddings_table in self._list_tables():
            self._with_user_columns(self._db.open_table(model.embeddings_table))

    def _with_user_columns(self, table: lancedb.table.Table) -> lancedb.table.Table:
        lacking = [field for field in self.user_fields() if field.name not in table.schema.names]
        if lacking:
            table.add_columns(lacking)
        return table

    def embeddings(self, model: ModelRecord) -> lancedb.table.Table:
        """The embeddings table of a model version (created on first use)."""
        schema = schemas.embeddings_schema(model.dim, model.id, model.fingerprint, self.user_fields())
        try:
            table = self._table(model.embeddings_table, schema)
        except (ValueError, RuntimeError):  # LanceDB refuses the schema of a table made by another encoder
            if model.embeddings_table not in self.table_names():
                raise
            table = self._db.open_table(model.embeddings_table)
        recorded = (table.schema.metadata or {}).get(schemas.ENCODER_FINGERPRINT_KEY, b"").decode()
        if recorded != model.fingerprint:
            raise EncoderMismatchError(
                f"table {model.embeddings_table} holds vectors of encoder fingerprint {recorded}, "
                f"not {model.fingerprint}: they were made by another encoder and cannot meet these"
            )
        return table

    # ---- models ---------------------------------------------------------------------------------

    def register_model(self, encoder: VersionSource, notes: str | None = None) -> ModelRecord:
        """The model version of ``encoder``, added to ``models`` on first use."""
        existing = self.find_models(model_id=encoder.model_id)
        if existing:
            return existing[0]
        record = ModelRecord(
            id=encoder.model_id,
            encoder=encoder.name,
            architecture=encoder.architecture,
            weights_source=encoder.weights_source,
            weights_sha256=encoder.weights_sha256,
            dim=encoder.dim,
            preprocessing=encoder.preprocessing,
            fingerprint=encoder.fingerprint,
            embeddings_table=schemas.embeddings_table_name(encoder.model_id),
            created_at=utc_now(),
            notes=notes,
            kind=encoder.version_kind,
            config=json.dumps(encoder.version_config, sort_keys=True, default=str),
        )
        self.add_model(record)
        logger.info("registered model %s", record.id)
        return record

    def add_model(self, record: ModelRecord) -> None:
        """Insert a model version (no-op when its id exists)."""
        row = pa.Table.from_pylist([record.__dict__], schema=schemas.MODELS_SCHEMA)
        self.models.merge_insert("id").when_not_matched_insert_all().execute(row)
        if self.active_model_id() is None:
            self.set_setting(ACTIVE_MODEL_KEY, record.id)  # the first model is the default until another is activated

    def find_models(self, model_id: str | None = None, encoder: str | None = None) -> list[ModelRecord]:
        """Model versions, newest first, optionally by id or by encoder name."""
        table = self.models
        clauses = []
        if model_id:
            clauses.append(f"id = {sql_quote(model_id)}")
        if encoder:
            clauses.append(f"encoder = {sql_quote(encoder)}")
        query = table.search().where(" AND ".join(clauses)) if clauses else table.search()
        rows = query.limit(None).to_arrow().to_pylist() if clauses else table.to_arrow().to_pylist()
        rows.sort(key=lambda r: r["created_at"], reverse=True)
        return [ModelRecord(**migrations.with_kind(row)) for row in rows]

    def activate_model(self, model_id: str) -> ModelRecord:
        """Make a model version the default of search, eval and predict."""
        record = self.resolve_model(model_id)
        self.set_setting(ACTIVE_MODEL_KEY, record.id)
        return record

    def active_model_id(self) -> str | None:
        return self.get_setting(ACTIVE_MODEL_KEY)

    def resolve_model(self, name: str | None = None) -> ModelRecord:
        """A model version by id, encoder name or unique id prefix (as git takes commits); with no name, the
        active one (else the newest)."""
        name = name or self.active_model_id()
        candidates = (self.find_models(model_id=name) or self.find_models(encoder=name)) if name else self.find_models()
        if name and not candidates:
            candidates = [m for m in self.find_models() if m.id.startswith(name)]
            if len(candidates) > 1:
                raise ModelNotFoundError(f"model {name!r} is ambiguous: it starts {len(candidates)} ids ({', '.join(m.id for m in candidates)}); give more of the id")
        if not candidates:
            known = [m.id for m in self.find_models()]
            wanted = f"model {name!r}" if name else "model yet"
            raise ModelNotFoundError(
                f"no {wanted} in database {self.uri}; models here: {known or 'none (run lookalike ingest first)'}"
            )
        return candidates[0]

    def resolve_image_ids(self, given: Sequence[str]) -> list[str]:
        """Stored image ids for full ids or unique prefixes of them (as ``lookalike search --id`` takes)."""
        resolved = []
        for text in given:
            wanted = text.strip()
            found = self.images.search().where(f"id = {sql_quote(wanted)} OR starts_with(id, {sql_quote(wanted)})").select(["id"]).limit(AMBIGUITY_SHOWN + 1).to_arrow()
            ids = found.column("id").to_pylist()
            if wanted in ids:
                resolved.append(wanted)
            elif len(ids) == 1:
                resolved.append(ids[0])
            elif not ids:
                raise NotFoundError(f"no image id is or starts with {wanted!r} in database {self.uri} (ids are the 32-hex-digit content hashes; any unique prefix will do)")
            else:
                raise NotFoundError(f"image id prefix {wanted!r} is ambiguous ({', '.join(ids[:AMBIGUITY_SHOWN])}{', ...' if len(ids) > AMBIGUITY_SHOWN else ''}); give more of it")
        return resolved

    def models_frame(self) -> pl.DataFrame:
        frame = pl.from_arrow(self.models.to_arrow())
        return frame.sort("created_at", descending=True) if frame.height else frame

    # ---- writes ---------------------------------------------------------------------------------

    def known_image_ids(self, model: ModelRecord) -> set[str]:
        """Ids of images that already have a vector from ``model``."""
        column = self.embeddings(model).search().select(["image_id"]).limit(None).to_arrow().column("image_id")
        return set(column.to_pylist())

    def write_embedded(self, model: ModelRecord, image_rows: Sequence[dict], vectors: np.ndarray) -> None:
        """Upsert images and their vectors, keyed by content hash (idempotent, resumable).

        Images are written before their vectors: a crash in between leaves an image without a
        vector, which the next ingest encodes again; never a vector without its image.
        """
        if not image_rows:
            return
        if vectors.shape != (len(image_rows), model.dim):
            raise EncoderMismatchError(f"expected {len(image_rows)} vectors of dim {model.dim}, got {vectors.shape}")
        images = pa.Table.from_pylist(list(image_rows), schema=self.images_schema())
        self.images.merge_insert("id").when_not_matched_insert_all().execute(images)
        fault_point("store.images_written")
        self.write_vectors(model, images.column("id"), images, vectors)
        fault_point("store.vectors_written")
        self.clear_errors([row["path"] for row in image_rows])

    def write_vectors(self, model: ModelRecord, image_ids: pa.Array, metadata: pa.Table, vectors: np.ndarray, replace: bool = False) -> None:
        """Upsert vectors of already-stored images; ``metadata`` holds their image metadata columns (a column it lacks
        is written null). With ``replace``, rows already stored are overwritten (one commit), else kept."""
        table = self._with_user_columns(self.embeddings(model))
        count = len(image_ids)
        columns = {
            "image_id": image_ids,
            "model_id": pa.array([model.id] * count, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel()), model.dim),
        }
        schema = table.schema
        for field in schema:
            if field.name not in columns:
                columns[field.name] = metadata.column(field.name).cast(field.type) if field.name in metadata.column_names else pa.nulls(count, field.type)
        merge = table.merge_insert("image_id")
        if replace:
            merge = merge.when_matched_update_all()
        merge.when_not_matched_insert_all().execute(pa.table(columns, schema=schema))

    def update_images(self, rows: pa.Table) -> None:
        """Overwrite the given columns of stored images (``rows``: ``id`` and any metadata columns), one commit."""
        if rows.num_rows:
            self.images.merge_insert("id").when_matched_update_all().execute(rows)

    def update_vector_metadata(self, model: ModelRecord, rows: pa.Table) -> None:
        """Overwrite metadata columns of ``model``'s rows (``rows``: ``image_id`` and the columns), one commit."""
        if rows.num_rows:
            self._with_user_columns(self.embeddings(model)).merge_insert("image_id").when_matched_update_all().execute(rows)

    def delete_vectors(self, model: ModelRecord, image_ids: Sequence[str]) -> None:
        """Remove ``model``'s vectors of the given images (one commit per chunk of ids)."""
        table = self.embeddings(model)
        for start in range(0, len(image_ids), DELETE_CHUNK):
            chunk = image_ids[start : start + DELETE_CHUNK]
            table.delete("image_id IN (" + ", ".join(sql_quote(i) for i in chunk) + ")")

    def delete_images(self, image_ids: Sequence[str]) -> None:
        """Remove images from the catalogue (the commit point of a delete: versions follow when brought in step),
        then their foreground fractions (a masked version's per-image record) and their regions. Regions left by a
        delete killed midway are never answered (region searches keep regions of stored images only) and go with the
        next ``lookalike regions``."""
        listed = self._list_tables()
        per_image = [name for name in listed if name == schemas.FOREGROUND_TABLE or name == schemas.REGIONS_TABLE
                     or name.startswith(schemas.REGION_EMBEDDINGS_PREFIX)]
        for start in range(0, len(image_ids), DELETE_CHUNK):
            condition = "IN (" + ", ".join(sql_quote(i) for i in image_ids[start : start + DELETE_CHUNK]) + ")"
            self.images.delete(f"id {condition}")
            for name in per_image:
                self._db.open_table(name).delete(f"image_id {condition}")

    def drop_model(self, model: ModelRecord) -> None:
        """Remove a version: its ``models`` row first (the commit point), then its table and coverage row."""
        self.models.delete(f"id = {sql_quote(model.id)}")
        fault_point("store.model_row_dropped")
        for name in (model.embeddings_table, schemas.region_embeddings_table_name(model.id)):
            if name in self.table_names():
                self._db.drop_table(name)
        for name in (schemas.COVERAGE_TABLE, schemas.CALIBRATIONS_TABLE, schemas.AUDIT_TABLE):
            if name in self._list_tables():
                self._db.open_table(name).delete(f"model_id = {sql_quote(model.id)}")
        if schemas.SETTINGS_TABLE in self._list_tables():  # settings of this version (its query pipeline), keyed '<name>:<id>'
            self.settings.delete(f"key LIKE {sql_quote('%' + MODEL_SETTING_SEPARATOR + model.id)}")

    def record_errors(self, rows: Iterable[dict]) -> None:
        """Upsert ``ingest_errors`` rows (path, reason, source, when), keyed by path."""
        rows = list(rows)
        if rows:
            table = pa.Table.from_pylist(rows, schema=schemas.ERRORS_SCHEMA)
            self.errors.merge_insert("path").when_matched_update_all().when_not_matched_insert_all().execute(table)

    def clear_errors(self, paths: Sequence[str]) -> None:
        """Forget past errors of files that have now been ingested."""
        errors = self.errors
        if paths and errors.count_rows():
            errors.delete("path IN (" + ", ".join(sql_quote(p) for p in paths) + ")")

    # ---- reads ----------------------------------------------------------------------------------

    def images_frame(self, where: str | None = None, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """The ``images`` table (optionally filtered) as a polars DataFrame."""
        table = self.images
        query = table.search().limit(None)
        condition = combine_where(table, where)
        if condition:
            query = query.where(condition)
        if columns:
            query = query.select(list(columns))
        return pl.from_arrow(read_filtered(query, where))

    def catalogue_where(self, where: str | None) -> str | None:
        """The filter that selects the catalogue: ``where`` as given, except that the conventional default (split
        'train') on a database whose images carry no split at all means every labelled image."""
        if where != CATALOGUE_WHERE or self.images.count_rows("split IS NOT NULL") or not self.images.count_rows():
            return where
        logger.info("no image has a split: the catalogue is every labelled image")
        return UNSPLIT_CATALOGUE_WHERE

    def errors_frame(self) -> pl.DataFrame:
        return pl.from_arrow(self.errors.to_arrow()).sort("path")

    def summary(self) -> pl.DataFrame:
        """Row counts of every table."""
        names = self.table_names()
        return pl.DataFrame(
            {"table": names, "rows": [self._db.open_table(n).count_rows() for n in names]},
            schema={"table": pl.String, "rows": pl.Int64},
        )
