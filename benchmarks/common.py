"""What the benchmark scripts share: writing their results beside the others and printing them whole."""

from __future__ import annotations

from pathlib import Path

import polars as pl

TABLE_WIDTH_CHARS = 200


def write_and_show(frame: pl.DataFrame, out: Path | None, text_chars: int = 60) -> pl.DataFrame:
    """``frame`` written to ``out`` as CSV (unless None: a --quick run) and printed with every column."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.write_csv(out)
    with pl.Config(tbl_cols=-1, tbl_width_chars=TABLE_WIDTH_CHARS, fmt_str_lengths=text_chars):
        print(frame)
    return frame
