"""User metadata columns: ``file name -> any columns`` read from a CSV, typed, and looked up per ingested file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

import schemas
from engine.core.errors import DataError, InvalidRequestError

logger = logging.getLogger(__name__)

KEY_COLUMNS = ("file", "filename", "image", "path", "name")  # the CSV column naming the file (else the first)
POLARS_TO_USER = {pl.Int64: "int", pl.Int32: "int", pl.Float64: "float", pl.Float32: "float", pl.Boolean: "bool", pl.String: "string"}
MAX_METADATA_COLUMNS = 64


def parse_types(text: str | None) -> dict[str, str]:
    """``price=float,site=string`` as a dict (the types ``--metadata-types`` takes: int, float, bool, string)."""
    given: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, kind = part.partition("=")
        name, kind = name.strip(), kind.strip().lower()
        if kind not in schemas.USER_COLUMN_TYPES:
            raise InvalidRequestError(f"--metadata-types {part.strip()!r}: give NAME=TYPE with TYPE one of {', '.join(schemas.USER_COLUMN_TYPES)}")
        given[name] = kind
    return given


@dataclass(frozen=True)
class MetadataTable:
    """User metadata of files by key (a relative path, a file name or a stem), with each column's Arrow field."""

    fields: tuple[pa.Field, ...]
    rows: dict[str, dict[str, Any]]

    def values_for(self, path: Path, root: Path) -> dict[str, Any] | None:
        """The row of the file at ``path`` (under ``root``): by relative path, then name, then stem; None if absent."""
        relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        for key in (relative, path.name, path.stem):
            if key in self.rows:
                return self.rows[key]
        return None


def read_metadata_csv(path: Path, types: dict[str, str] | None = None) -> MetadataTable:
    """Read a metadata CSV: one column names the file (``file``/``path``/``image``/... or the first), every other
    column becomes a filterable column, its type inferred (int, float, bool, string) or given in ``types``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metadata CSV {path} not found; give a CSV with a file-name column and one column per field")
    types = types or {}
    try:
        frame = pl.read_csv(path, infer_schema_length=None, schema_overrides={n: pl.String for n in types}, encoding="utf8")
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as error:
        raise DataError(f"metadata CSV {path} cannot be read as UTF-8 CSV with a header row ({str(error).splitlines()[0][:120]})") from error
    if frame.width < 2 or frame.height == 0:
        raise DataError(f"metadata CSV {path} needs a header, a file-name column and at least one more column and row")
    key = next((c for c in frame.columns if c.strip().lower() in KEY_COLUMNS), frame.columns[0])
    columns = [c for c in frame.columns if c != key]
    if len(columns) > MAX_METADATA_COLUMNS:
        raise DataError(f"metadata CSV {path} has {len(columns)} columns; at most {MAX_METADATA_COLUMNS} become filterable columns")
    unknown = sorted(set(types) - set(columns))
    if unknown:
        raise InvalidRequestError(f"--metadata-types names {unknown}, which are not columns of {path} ({', '.join(columns)})")
    fields = []
    for name in columns:
        schemas.check_user_column_name(name)
        kind = types.get(name) or POLARS_TO_USER.get(frame.schema[name], "string")
        target = schemas.USER_COLUMN_TYPES[kind]
        try:
            frame = frame.with_columns(_cast(frame[name], kind).alias(name))
        except (pl.exceptions.PolarsError, ValueError) as error:
            raise DataError(f"metadata column {name!r} of {path} is not all {kind} ({str(error).splitlines()[0][:120]}); "
                            f"fix the values or give --metadata-types {name}=string") from error
        fields.append(pa.field(name, target))
    keys = frame[key].cast(pl.String)
    if keys.null_count() or keys.is_duplicated().any():
        raise DataError(f"metadata CSV {path}: the file column {key!r} has empty or repeated names; give each file once")
    rows = {k: {c: v for c, v in row.items() if c != key} for k, row in zip(keys.to_list(), frame.iter_rows(named=True))}
    logger.info("metadata CSV %s: %d files, columns %s", path, len(rows), [f"{f.name}:{f.type}" for f in fields])
    return MetadataTable(tuple(fields), rows)


def _cast(column: pl.Series, kind: str) -> pl.Series:
    if kind == "bool" and column.dtype == pl.String:
        lowered = column.str.strip_chars().str.to_lowercase()
        bad = column.filter(~lowered.is_in(["true", "false", "1", "0", "yes", "no"]) & column.is_not_null())
        if bad.len():
            raise ValueError(f"{bad[0]!r} is not a boolean")
        return pl.Series(column.name, [None if v is None else v in ("true", "1", "yes") for v in lowered.to_list()], pl.Boolean)
    polars_type = {"int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean, "string": pl.String}[kind]
    return column.cast(polars_type, strict=True)
