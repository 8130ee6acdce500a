"""Arrow schemas of every Lookalike table: the one source of truth.

Tables in a Lookalike database (a LanceDB directory):

``images``
    One row per distinct image *content* (``id`` is the BLAKE2b-128 hash of the file bytes), with the
    metadata read while decoding it.
``models``
    One row per model version: its kind and config (what rebuilds its encoder), architecture, weights and
    their checksum, dimension, preprocessing, parent.
``embeddings__<model id>``
    One table per model version. Each version has its own vector width and its own ANN index, and
    dropping a version drops one table. The table repeats the filterable image metadata next to the
    vector because LanceDB evaluates ``where`` filters on the searched table only: keeping the
    columns there lets the filter run *inside* the index scan (prefilter) instead of as a join that
    would lose rows or force a second pass.
``ingest_errors``
    Files that could not be ingested, with the reason, keyed by path.
``calibrations``
    Distractor thresholds per model version: scorer, objective, threshold, the catalogue it was fitted
    on, its curve, and the class centroids the ``centroid`` scorer needs at query time. The newest row
    of a model is the one search and predict use.
``settings``
    Key/value settings of the database, such as the active model version.
``coverage``
    One row per model version: the ``images`` table version it was last brought in step with, and what it
    lacked then (rows missing, rows of deleted images, rows with outdated metadata), with the reason when it
    cannot be brought in step (an external version cannot embed new images). See
    :mod:`engine.versions.coverage`.
``audit``
    Findings of ``lookalike audit`` about the catalogue's own data: likely label mistakes, near-duplicate groups,
    outliers and split skews, each with the images involved, a score, its evidence (JSON) and a status; a decided
    finding records what was done and what it replaced (so it can be undone). Keyed by a hash of the kind and
    the images (and, for a label mistake, the label it questions), so a decided finding is not raised again.
``regions``
    Boxes of objects inside catalogue images (``lookalike regions``): image id, pixel box, its share of the
    image, the source that found it (annotations, masker, detector, grid), a score and a label when known.
    Keyed by ``region_id`` (a hash of the image, the source and the box).
``regions__<model id>``
    One table per model version that embedded regions: each region's crop embedded by the version's encoder,
    with the region's image, box and label repeated beside the vector (as ``embeddings__`` tables do).
``review``
    Queries flagged as distractors awaiting a decision (confirm, assign a known class, or add as a new
    class), with who decided and when. Keyed by the query's content hash and model.

User metadata columns (``lookalike ingest --metadata CSV``) are extra columns of ``images`` and of every
embeddings table, after the fixed ones; their names and types are read from the ``images`` table's schema
(:func:`user_metadata_fields`), so the table itself is the record of them.

The schema version is written into each table's Arrow metadata; opening a database written with
another major version fails with :class:`SchemaMismatchError`.
"""

from __future__ import annotations

import pyarrow as pa

from engine.core.errors import InvalidRequestError, LookalikeError

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"lookalike.schema_version"
TABLE_KIND_KEY = b"lookalike.table"
MODEL_ID_KEY = b"lookalike.model_id"
ENCODER_FINGERPRINT_KEY = b"lookalike.encoder_fingerprint"

IMAGES_TABLE = "images"
MODELS_TABLE = "models"
ERRORS_TABLE = "ingest_errors"
CALIBRATIONS_TABLE = "calibrations"
SETTINGS_TABLE = "settings"
REVIEW_TABLE = "review"
MASKERS_TABLE = "maskers"
FOREGROUND_TABLE = "foreground"
COVERAGE_TABLE = "coverage"
AUDIT_TABLE = "audit"
REGIONS_TABLE = "regions"
REGION_EMBEDDINGS_PREFIX = "regions__"
EMBEDDINGS_PREFIX = "embeddings__"


class SchemaMismatchError(LookalikeError, RuntimeError):
    """A table on disk was written with a schema this version of Lookalike cannot read."""


def _with_metadata(schema: pa.Schema, kind: str, extra: dict[bytes, bytes] | None = None) -> pa.Schema:
    metadata = {SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode(), TABLE_KIND_KEY: kind.encode()}
    metadata.update(extra or {})
    return schema.with_metadata(metadata)


# Metadata of an image that search filters may use; repeated in every embeddings table.
IMAGE_METADATA_FIELDS: list[pa.Field] = [
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),  # the single (or first) class; null when unlabelled
    pa.field("labels", pa.list_(pa.string())),  # every class for multi-label sets
    pa.field("split", pa.string()),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("channels", pa.int8(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),  # Pillow mode before conversion to RGB
    pa.field("format", pa.string()),
    pa.field("bytes", pa.int64(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # the folder the ingest was pointed at
    pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
IMAGE_METADATA_COLUMNS = [f.name for f in IMAGE_METADATA_FIELDS]

IMAGES_SCHEMA = _with_metadata(
    pa.schema([pa.field("id", pa.string(), nullable=False), *IMAGE_METADATA_FIELDS]), IMAGES_TABLE
)

# Types a user metadata column may have, by the name ``--metadata-types`` takes.
USER_COLUMN_TYPES: dict[str, pa.DataType] = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "string": pa.string()}
# Names a user column may not take: the fixed columns, the keys, and what LanceDB adds to results.
RESERVED_COLUMNS = frozenset({"id", "image_id", "model_id", "vector", "_distance", "_rowid", "_score", *IMAGE_METADATA_COLUMNS})
MAX_USER_COLUMN_NAME = 64


def user_metadata_fields(images_schema: pa.Schema) -> list[pa.Field]:
    """The user metadata columns of a database: the ``images`` columns after the fixed ones."""
    fixed = set(IMAGES_SCHEMA.names)
    return [field for field in images_schema if field.name not in fixed]


def check_user_column_name(name: str) -> str:
    """``name`` if it can be a user metadata column (an SQL identifier that no fixed column has), else an error."""
    if not name or len(name) > MAX_USER_COLUMN_NAME or not (name[0].isalpha() or name[0] == "_") \
            or not all(ch.isalnum() or ch == "_" for ch in name) or not name.isascii():
        raise InvalidRequestError(f"metadata column {name!r} is not a plain name: use letters, digits and _ (at most "
                                  f"{MAX_USER_COLUMN_NAME}, not starting with a digit), so filters can name it")
    if name.lower() in RESERVED_COLUMNS:
        raise InvalidRequestError(f"metadata column {name!r} clashes with a column Lookalike keeps itself "
                                  f"({', '.join(sorted(RESERVED_COLUMNS))}); rename it in the CSV")
    return name

MODELS_SCHEMA = _with_metadata(
    pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("encoder", pa.string(), nullable=False),  # registry name, e.g. efficientnet_lite0
            pa.field("architecture", pa.string(), nullable=False),  # timm architecture
            pa.field("weights_source", pa.string(), nullable=False),
            pa.field("weights_sha256", pa.string(), nullable=False),
            pa.field("dim", pa.int32(), nullable=False),
            pa.field("preprocessing", pa.string(), nullable=False),  # JSON of the timm data config
            pa.field("fingerprint", pa.string(), nullable=False),
            pa.field("embeddings_table", pa.string(), nullable=False),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("parent", pa.string()),
            pa.field("notes", pa.string()),
            # what kind of version this is (engine.versions.kinds) and its parameters as JSON: together they
            # rebuild the encoder. Added in release 0.2; a 0.1 database gains them on first open (nullable for that).
            pa.field("kind", pa.string()),
            pa.field("config", pa.string()),
        ]
    ),
    MODELS_TABLE,
)

ERRORS_SCHEMA = _with_metadata(
    pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("when", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    ERRORS_TABLE,
)


CALIBRATIONS_SCHEMA = _with_metadata(
    pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("scorer", pa.string(), nullable=False),
            pa.field("objective", pa.string(), nullable=False),
            pa.field("threshold", pa.float64(), nullable=False),
            pa.field("catalogue_where", pa.string(), nullable=False),
            pa.field("neighbours", pa.int32(), nullable=False),
            pa.field("auroc", pa.float64(), nullable=False),
            pa.field("map5", pa.float64(), nullable=False),
            pa.field("details", pa.string(), nullable=False),  # JSON: config, data, curve
            pa.field("classes", pa.list_(pa.string()), nullable=False),
            pa.field("centroids", pa.list_(pa.list_(pa.float32())), nullable=False),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    CALIBRATIONS_TABLE,
)

SETTINGS_SCHEMA = _with_metadata(
    pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),  # e.g. active_model
            pa.field("value", pa.string(), nullable=False),
            pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    SETTINGS_TABLE,
)

REVIEW_STATUSES = ("pending", "distractor", "assigned", "added")

REVIEW_SCHEMA = _with_metadata(
    pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),  # content hash of the query image
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("score", pa.float64(), nullable=False),
            pa.field("threshold", pa.float64(), nullable=False),
            pa.field("suggested", pa.list_(pa.string()), nullable=False),  # top classes, best first
            pa.field("status", pa.string(), nullable=False),  # one of REVIEW_STATUSES
            pa.field("label", pa.string()),  # the class given by the decision
            pa.field("decided_by", pa.string()),
            pa.field("decided_at", pa.timestamp("us", tz="UTC")),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    REVIEW_TABLE,
)


# Foreground maskers (U-Nets): one row per trained version; its weights live in a file beside the database.
MASKERS_SCHEMA = _with_metadata(
    pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("architecture", pa.string(), nullable=False),  # smp architecture, e.g. Unet
            pa.field("encoder", pa.string(), nullable=False),  # encoder registry name or timm architecture
            pa.field("encoder_weights_sha256", pa.string(), nullable=False),  # the weights its encoder started from
            pa.field("weights_path", pa.string(), nullable=False),
            pa.field("weights_sha256", pa.string(), nullable=False),
            pa.field("image_size", pa.int32(), nullable=False),
            pa.field("threshold", pa.float64(), nullable=False),
            pa.field("val_iou", pa.float64()),  # mean IoU on the held-out masks; null without a holdout
            pa.field("train_images", pa.int32(), nullable=False),
            pa.field("val_images", pa.int32(), nullable=False),
            pa.field("details", pa.string(), nullable=False),  # JSON: config, data source, history
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    MASKERS_TABLE,
)

# Foreground fraction of each image embedded by a masked model version, keyed by (image_id, model_id).
FOREGROUND_SCHEMA = _with_metadata(
    pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("masker_id", pa.string(), nullable=False),
            pa.field("mode", pa.string(), nullable=False),  # zero | blur | crop
            pa.field("fraction", pa.float64(), nullable=False),  # foreground pixels / all pixels
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    FOREGROUND_TABLE,
)


def embeddings_table_name(model_id: str) -> str:
    """Name of the embeddings table of one model version."""
    safe = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in model_id)
    return f"{EMBEDDINGS_PREFIX}{safe}"


REGION_FIELDS = [
    pa.field("region_id", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # annotations | masker | detector | grid
    pa.field("x", pa.int32(), nullable=False),  # the box in the decoded image's pixels: left, top, width, height
    pa.field("y", pa.int32(), nullable=False),
    pa.field("w", pa.int32(), nullable=False),
    pa.field("h", pa.int32(), nullable=False),
    pa.field("area_share", pa.float64(), nullable=False),  # box area / image area
    pa.field("score", pa.float64()),  # the detector's confidence, the component's foreground share; null for boxes given
    pa.field("label", pa.string()),  # the object's class when the source knows it
]

REGIONS_SCHEMA = _with_metadata(pa.schema([*REGION_FIELDS, pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False)]), REGIONS_TABLE)


def region_embeddings_schema(dim: int, model_id: str) -> pa.Schema:
    """Region vectors of one model version: the region's fields and its crop's vector."""
    schema = pa.schema([*REGION_FIELDS, pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)])
    return _with_metadata(schema, "region_embeddings", {MODEL_ID_KEY: model_id.encode()})


def region_embeddings_table_name(model_id: str) -> str:
    """Name of the region embeddings table of one model version."""
    return REGION_EMBEDDINGS_PREFIX + embeddings_table_name(model_id).removeprefix(EMBEDDINGS_PREFIX)


COVERAGE_SCHEMA = _with_metadata(
    pa.schema(
        [
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("images_version", pa.int64(), nullable=False),  # the images table's version it was checked against
            pa.field("table_version", pa.int64(), nullable=False),  # ...and its own embeddings table's
            pa.field("catalogue_rows", pa.int64(), nullable=False),
            pa.field("rows", pa.int64(), nullable=False),
            pa.field("missing", pa.int64(), nullable=False),  # catalogue images without a vector here
            pa.field("extra", pa.int64(), nullable=False),  # vectors of images no longer in the catalogue
            pa.field("changed", pa.int64(), nullable=False),  # rows whose metadata differs from the catalogue's
            pa.field("status", pa.string(), nullable=False),  # in step | stale | cannot embed
            pa.field("reason", pa.string()),  # why it is not in step, and what would fix it
            pa.field("checked_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    COVERAGE_TABLE,
)


def embeddings_schema(dim: int, model_id: str, fingerprint: str, user_fields: list[pa.Field] | tuple = ()) -> pa.Schema:
    """Schema of the embeddings table of one model version, with its dimension fixed (and the database's user
    metadata columns after the fixed ones)."""
    if dim <= 0:
        raise InvalidRequestError(f"embedding dimension must be positive, got {dim}")
    schema = pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
            *IMAGE_METADATA_FIELDS,
            *user_fields,
        ]
    )
    return _with_metadata(
        schema,
        "embeddings",
        {MODEL_ID_KEY: model_id.encode(), ENCODER_FINGERPRINT_KEY: fingerprint.encode()},
    )


def check_compatible(table_name: str, on_disk: pa.Schema, expected: pa.Schema) -> None:
    """Raise :class:`SchemaMismatchError` unless ``on_disk`` can be read as ``expected``."""
    metadata = on_disk.metadata or {}
    version = metadata.get(SCHEMA_VERSION_KEY, b"<none>").decode()
    if version != SCHEMA_VERSION:
        raise SchemaMismatchError(
            f"table {table_name!r} has schema version {version}, this Lookalike reads version "
            f"{SCHEMA_VERSION}; re-ingest into a new database or use a matching Lookalike release"
        )
    missing = [f.name for f in expected if f.name not in on_disk.names]
    changed = [
        f.name for f in expected if f.name in on_disk.names and not on_disk.field(f.name).type.equals(f.type)
    ]
    if missing or changed:
        raise SchemaMismatchError(
            f"table {table_name!r} does not match schema version {SCHEMA_VERSION}: "
            f"missing columns {missing}, columns of another type {changed}"
        )


AUDIT_STATUSES = ("open", "kept", "relabelled", "deleted", "moved")

AUDIT_SCHEMA = _with_metadata(
    pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),  # hash of kind, images (and the questioned label)
            pa.field("kind", pa.string(), nullable=False),  # label-mistake | near-duplicate | outlier | split-skew
            pa.field("model_id", pa.string(), nullable=False),  # the version whose features found it
            pa.field("scope", pa.string(), nullable=False),  # the audit's --where ("" for the whole catalogue)
            pa.field("image_ids", pa.list_(pa.string()), nullable=False),  # the images involved, most central first
            pa.field("score", pa.float64(), nullable=False),  # higher: more certainly a problem (per kind)
            pa.field("label", pa.string()),  # the label a label-mistake questions
            pa.field("suggested", pa.string()),  # the label the evidence suggests instead
            pa.field("message", pa.string(), nullable=False),  # one line a person reads
            pa.field("evidence", pa.string(), nullable=False),  # JSON: neighbours, votes, similarities, flags
            pa.field("status", pa.string(), nullable=False),  # one of AUDIT_STATUSES
            pa.field("decision", pa.string()),  # JSON: what was done and the values it replaced (for undo)
            pa.field("decided_by", pa.string()),
            pa.field("decided_at", pa.timestamp("us", tz="UTC")),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    AUDIT_TABLE,
)
