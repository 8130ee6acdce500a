"""One self-contained HTML page: figures embedded as base64 images, tables and warnings inline."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import polars as pl
from PIL import Image as PILImage

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1500px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } th { background: #f0f0f0; }
td.text { text-align: left; } .warning { color: #8a1f11; } .note { color: #555; font-style: italic; }
nav a { margin-right: 1em; }
"""


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return html.escape(str(value))


def frame_html(frame: pl.DataFrame, max_rows: int = 200) -> str:
    """A polars frame as an HTML table (the first ``max_rows`` rows)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.head(max_rows).iter_rows():
        cells = "".join(f'<td class="{"text" if isinstance(v, str) else "num"}">{_cell(v)}</td>' for v in row)
        body.append(f"<tr>{cells}</tr>")
    more = f"<p class='note'>{frame.height - max_rows} more rows not shown</p>" if frame.height > max_rows else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


JPEG_QUALITY = 85
JPEG_WORTH = 0.5  # a figure is embedded as JPEG when that halves it (photo galleries); line plots stay crisp PNG


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` holding the figure: as JPEG where photographs make JPEG much smaller, else the PNG itself."""
    kind, data = "png", png
    with PILImage.open(io.BytesIO(png)) as picture:
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    if buffer.tell() < JPEG_WORTH * len(png):
        kind, data = "jpeg", buffer.getvalue()
    return f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{base64.b64encode(data).decode()}">'


def render_page(title: str, subtitle: str, sections: Sequence, pngs: Mapping[str, bytes]) -> str:
    """The report page; ``pngs`` maps '<section key>/<figure name>' to PNG bytes."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>",
             "<nav>" + "".join(f"<a href='#{s.key}'>{html.escape(s.title)}</a>" for s in sections) + "</nav>"]
    for section in sections:
        parts.append(f"<h2 id='{section.key}'>{html.escape(section.title)}</h2>")
        if section.warnings:
            parts.append("<ul>" + "".join(f"<li class='warning'>{html.escape(w.message)}</li>" for w in section.warnings) + "</ul>")
        parts.extend(f"<p class='note'>{html.escape(note)}</p>" for note in section.notes)
        for name, _ in section.figures:
            parts.append(png_img(pngs[f"{section.key}/{name}"], f"{section.title}: {name}"))
        for caption, frame in section.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>{frame_html(frame)}")
    parts.append("</body></html>")
    return "\n".join(parts)
