"""The conventional splits of a catalogue and the ``where`` filters that select them, spelled once."""

from __future__ import annotations

CATALOGUE_SPLIT = "train"  # the labelled images searches are answered from
QUERY_SPLIT = "val"  # held-out images evaluation queries with


def sql_quote(value: str) -> str:
    """A string literal for a LanceDB filter."""
    return "'" + value.replace("'", "''") + "'"


def split_where(split: str) -> str:
    """The filter selecting one split."""
    return f"split = {sql_quote(split)}"


CATALOGUE_WHERE = split_where(CATALOGUE_SPLIT)
QUERY_WHERE = split_where(QUERY_SPLIT)
UNSPLIT_CATALOGUE_WHERE = "label IS NOT NULL"  # the catalogue of a database without splits: every labelled image
