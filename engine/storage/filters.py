"""``where`` filters from users: checked before LanceDB sees them.

A filter is one SQL condition on the columns of the table it filters (LanceDB hands it to DataFusion).
Users type them (CLI, console), so this module makes two promises the SQL engine alone does not:

* a malformed filter gets a one-line :class:`WhereFilterError` naming the problem (unknown column with the
  valid ones, unbalanced quote or bracket, a character that has no place in a filter), never a traceback;
* a filter cannot reach beyond its table: no second statement (DataFusion silently ignored everything after
  a ``;``), no comments (which hid the rest of the condition), no sub-queries or statement keywords, no
  qualified names, and only functions from :data:`ALLOWED_FUNCTIONS` (so no table functions that read files).

The check is lexical (a tokenizer and a bracket count), not a full parser: DataFusion still parses the
condition and its type errors are passed on as one line by :func:`one_line`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pyarrow as pa

from engine.core.errors import FilterError

MAX_FILTER_CHARS = 10_000
# DataFusion parses expressions recursively: about a thousand chained operators overflow its stack and kill the
# process (SIGSEGV), so a filter is refused long before that. A person's condition needs far fewer.
MAX_FILTER_OPERATORS = 256  # arithmetic, comparison, concatenation and AND / OR / NOT
MAX_FILTER_NESTING = 32  # brackets inside brackets
LOGICAL_WORDS = frozenset({"AND", "OR", "NOT"})

KEYWORDS = frozenset({
    "AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "ILIKE", "BETWEEN", "TRUE", "FALSE", "CAST", "AS", "ESCAPE",
    "CASE", "WHEN", "THEN", "ELSE", "END", "DISTINCT",  # IS [NOT] DISTINCT FROM is refused with FROM below
    "DATE", "TIMESTAMP", "INTERVAL", "BOOLEAN", "INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "FLOAT", "REAL",
    "DOUBLE", "DECIMAL", "VARCHAR", "STRING", "TEXT",
})
STATEMENT_WORDS = frozenset({
    "SELECT", "FROM", "WHERE", "INSERT", "UPDATE", "DELETE", "DROP", "CREATE", "ALTER", "UNION", "INTERSECT", "EXCEPT",
    "WITH", "JOIN", "INTO", "VALUES", "TABLE", "TRUNCATE", "COPY", "ATTACH", "DETACH", "PRAGMA", "GRANT", "EXEC", "EXECUTE",
    "EXISTS", "LIMIT", "OFFSET", "ORDER", "GROUP", "HAVING", "EXPLAIN", "SET", "USE", "LOAD", "INSTALL", "CALL",
})
# Each is tested against a reference answer (tests/storage/test_filters.py). Left out because LanceDB cannot answer
# them correctly: regexp_match (coerced to a boolean that is always true: use regexp_like), and trim, substr,
# substring, floor and ceil ("not supported SQL in lance").
ALLOWED_FUNCTIONS = frozenset({
    "lower", "upper", "length", "char_length", "ltrim", "rtrim", "starts_with", "ends_with", "strpos", "concat", "regexp_like",
    "abs", "round", "coalesce", "nullif",
    "array_has", "array_has_any", "array_has_all", "array_contains", "array_length", "cardinality", "make_array",
})
# columns that are never filter material (a 1280-float vector compared in SQL is a mistake, not a filter)
UNFILTERABLE = frozenset({"vector"})

_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<string>'(?:[^']|'')*')
    |(?P<open_string>')
    |(?P<quoted>"(?:[^"]|"")*")
    |(?P<open_quoted>")
    |(?P<comment>--|/\*|\*/)
    |(?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
    |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<operator><=|>=|<>|!=|\|\||[=<>+\-*/%(),\[\]])
    """,
    re.VERBOSE,
)
_CLOSING = {")": "(", "]": "["}


class WhereFilterError(FilterError):
    """A ``where`` filter that is malformed or reaches beyond its table; the message is one line."""


ERROR_TEXT_CHARS = 300  # DataFusion echoes the whole filter in some messages (10,000 characters of it)


def one_line(error: BaseException) -> str:
    """The first line of an error from LanceDB/DataFusion, without its generic prefix, cut to a readable length."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^(Invalid input, )+", "", text)
    return text if len(text) <= ERROR_TEXT_CHARS else text[: ERROR_TEXT_CHARS - 1] + "…"


def filterable_columns(schema: pa.Schema) -> list[str]:
    """The columns of a table a filter may name."""
    return [name for name in schema.names if name not in UNFILTERABLE]


def check_where(where: str | None, columns: Iterable[str]) -> str | None:
    """``where`` stripped and checked against ``columns``; None for an empty filter.

    Raises :class:`WhereFilterError` (a ``ValueError``) with a one-line message naming the problem.
    """
    if where is None or not where.strip():
        return None
    where = where.strip()
    try:
        _check(where, list(columns))
    except WhereFilterError as problem:
        raise WhereFilterError(f"bad where filter {shown(where)}: {problem}") from None
    return where


def shown(where: str, limit: int = 80) -> str:
    """A filter quoted for a message, cut short when long."""
    return repr(where if len(where) <= limit else where[:limit] + "...")


def _check(where: str, known: list[str]) -> None:
    if len(where) > MAX_FILTER_CHARS:
        raise WhereFilterError(f"it is {len(where):,} characters long; the limit is {MAX_FILTER_CHARS:,}")
    tokens = _tokens(where)
    _check_brackets(tokens)
    _check_size(tokens)
    for index, (kind, text, position) in enumerate(tokens):
        if kind == "word":
            following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
            _check_word(text, position, following == "(", known)
        elif kind == "quoted":
            name = text[1:-1].replace('""', '"')
            if name not in known:
                raise WhereFilterError(f"unknown column {text} at position {position}; columns: {', '.join(known)} "
                                       f"(text values take single quotes: '{name}')")


def checked_where_for(table, where: str | None) -> str | None:  # noqa: ANN001 - a LanceDB table
    """:func:`check_where` against the columns of a LanceDB ``table``."""
    if where is None or not where.strip():
        return None
    return check_where(where, filterable_columns(table.schema))


def _tokens(where: str) -> list[tuple[str, str, int]]:
    tokens = []
    position = 0
    while position < len(where):
        match = _TOKEN.match(where, position)
        if match is None:
            character = where[position]
            if character == ";":
                raise WhereFilterError(f"';' at position {position}: a where filter is one condition, not several statements")
            if character == ".":
                raise WhereFilterError(f"'.' at position {position}: qualified names (table.column) are not allowed; name a column of this table")
            raise WhereFilterError(f"unexpected character {character!r} at position {position} in the where filter")
        kind = match.lastgroup
        if kind == "open_string":
            raise WhereFilterError(f"unterminated text value: the quote at position {position} is never closed")
        if kind == "open_quoted":
            raise WhereFilterError(f"unterminated quoted column name: the double quote at position {position} is never closed")
        if kind == "comment":
            raise WhereFilterError(f"comments ({match.group()!r} at position {position}) are not allowed in a where filter")
        if kind != "space":
            tokens.append((kind, match.group(), position))
        position = match.end()
    return tokens


def _check_size(tokens: list[tuple[str, str, int]]) -> None:
    """Refuse expressions too long or too deep for the SQL parser underneath (it recurses per operator)."""
    operators = sum(1 for kind, text, _ in tokens if (kind == "operator" and text not in "()[],") or (kind == "word" and text.upper() in LOGICAL_WORDS))
    if operators > MAX_FILTER_OPERATORS:
        raise WhereFilterError(f"it has {operators:,} operators; the limit is {MAX_FILTER_OPERATORS} (split the condition, or use IN (...) for many values)")
    depth = 0
    for kind, text, position in tokens:
        if kind == "operator" and text in "([":
            depth += 1
            if depth > MAX_FILTER_NESTING:
                raise WhereFilterError(f"brackets nest deeper than {MAX_FILTER_NESTING} at position {position}")
        elif kind == "operator" and text in ")]":
            depth -= 1


def _check_brackets(tokens: list[tuple[str, str, int]]) -> None:
    open_ones: list[tuple[str, int]] = []
    for kind, text, position in tokens:
        if kind != "operator":
            continue
        if text in "([":
            open_ones.append((text, position))
        elif text in _CLOSING:
            if not open_ones or open_ones[-1][0] != _CLOSING[text]:
                raise WhereFilterError(f"unbalanced {text!r} at position {position} in the where filter")
            open_ones.pop()
    if open_ones:
        text, position = open_ones[-1]
        raise WhereFilterError(f"unbalanced {text!r} at position {position}: it is never closed")


def _check_word(word: str, position: int, called: bool, columns: list[str]) -> None:
    upper = word.upper()
    if upper in STATEMENT_WORDS:
        raise WhereFilterError(f"{upper} at position {position}: sub-queries and statements are not allowed; "
                               "a where filter is one condition on this table's columns")
    if upper in KEYWORDS:  # also before '(': NOT (...), IN (...), CAST(... AS ...)
        return
    if called:
        if word.lower() in ALLOWED_FUNCTIONS:
            return
        raise WhereFilterError(f"function {word!r} is not allowed in a where filter; allowed: {', '.join(sorted(ALLOWED_FUNCTIONS))}")
    if word in columns or word.lower() in columns:
        return
    raise WhereFilterError(f"unknown column {word!r} at position {position}; columns: {', '.join(columns)}")


def combine_where(table, where: str | None, *internal: str) -> str | None:  # noqa: ANN001 - a LanceDB table
    """The user's ``where`` (checked against ``table``'s columns) AND Lookalike's own ``internal`` conditions."""
    user = checked_where_for(table, where)
    return " AND ".join(([f"({user})"] if user else []) + list(internal)) or None


def read_filtered(query, where: str | None) -> pa.Table:  # noqa: ANN001 - a LanceDB query builder
    """``query.to_arrow()``; a failure under a user's filter becomes a one-line :class:`WhereFilterError`."""
    try:
        return query.to_arrow()
    except (ValueError, RuntimeError, OSError) as exc:
        if not where:
            raise
        raise WhereFilterError(f"bad where filter {shown(where)}: {one_line(exc)}") from exc
