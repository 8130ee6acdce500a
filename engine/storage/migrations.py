"""In-place upgrades of databases written by earlier releases; never refuse and never lose them.

Release 0.1 stored no explicit kind on a ``models`` row: the kind of a version was read off three places
(a ``derived`` key in the notes JSON, a ``mask`` key in the preprocessing JSON, the regime in the notes of a
trained version). :func:`legacy_kind` reads them, here and nowhere else, and :func:`upgrade_models` writes
the ``kind`` and ``config`` columns once. The upgrade is two commits (add the columns, fill them); a kill
between them leaves empty columns, which the next open fills, and readers infer the same values meanwhile.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import lancedb
import pyarrow as pa

import schemas

logger = logging.getLogger(__name__)

NEW_MODEL_COLUMNS = ("kind", "config")
LEGACY_DERIVED_KEY = "derived"  # notes JSON of a 0.1 derived version: {"derived": kind, "parents": [...], ...}
LEGACY_MASK_KEY = "mask"  # preprocessing JSON of a 0.1 masked version: {..., "mask": {"masker": id, "mode": m}}
LEGACY_FINETUNE_REGIME = "finetune"


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def legacy_kind(row: dict) -> tuple[str, dict]:
    """The kind and config of a ``models`` row written before kinds were stored."""
    notes = _json(row.get("notes"))
    notes = notes if isinstance(notes, dict) else {}
    preprocessing = _json(row.get("preprocessing"))
    masking = preprocessing.get(LEGACY_MASK_KEY) if isinstance(preprocessing, dict) else None
    if LEGACY_DERIVED_KEY in notes:
        return notes[LEGACY_DERIVED_KEY], {"parents": notes["parents"], "params": notes["config"], "artefact_sha256": notes["artefact_sha256"]}
    if row.get("parent") is None:
        config = {"name": row["encoder"], "weights": row["weights_source"]}
        return ("masked", {**config, **masking}) if masking else ("encoder", config)
    trained = {"method": notes.get("method"), "regime": notes.get("regime"), "run_id": notes.get("run_id")}
    return ("finetuned" if notes.get("regime") == LEGACY_FINETUNE_REGIME else "head"), trained


def with_kind(row: dict) -> dict:
    """``row`` with its kind and config, inferred when the row predates them."""
    if row.get("kind"):
        return row
    kind, config = legacy_kind(row)
    return {**row, "kind": kind, "config": json.dumps(config, sort_keys=True, default=str)}


def legacy_models_schema() -> pa.Schema:
    """The ``models`` schema of release 0.1: today's without the columns an upgrade adds."""
    fields = [field for field in schemas.MODELS_SCHEMA if field.name not in NEW_MODEL_COLUMNS]
    return pa.schema(fields).with_metadata(schemas.MODELS_SCHEMA.metadata)


def needs_upgrade(table: lancedb.table.Table) -> bool:
    names = table.schema.names
    if any(column not in names for column in NEW_MODEL_COLUMNS):
        return True
    return table.count_rows("kind IS NULL") > 0


def upgrade_models(table: lancedb.table.Table) -> int:
    """Add and fill the ``kind``/``config`` columns of a 0.1 ``models`` table; returns the rows filled."""
    missing = [schemas.MODELS_SCHEMA.field(c) for c in NEW_MODEL_COLUMNS if c not in table.schema.names]
    if missing:
        table.add_columns(missing)
    rows = [with_kind(row) for row in table.search().where("kind IS NULL").limit(None).to_arrow().to_pylist()]
    if rows:
        table.merge_insert("id").when_matched_update_all().execute(pa.Table.from_pylist(rows, schema=table.schema))
    logger.info("upgraded the models table: kind and config recorded for %d versions", len(rows))
    return len(rows)
