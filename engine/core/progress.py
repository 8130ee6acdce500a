"""One progress event for all long work (ingest, training, publishing, refreshing, reports).

Library code reports through a :data:`ProgressCallback`; the CLI renders events with rich, the console
with Textual's ``ProgressBar``. ``done``/``total`` count the task's own unit (files, epochs, rows);
``total`` is None while unknown. ``metrics`` carries the task's figures (loss, images per second, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Progress:
    """How far one task has come."""

    task: str  # what is running: "ingest", "train", "refresh", "publish", "masker" ...
    done: int
    total: int | None = None
    unit: str = "items"
    detail: str = ""  # one human line: "12 new, 3 known, 0 errors, 4.1 img/s"
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


def report(callback: ProgressCallback | None, event: Progress) -> None:
    """Send ``event`` to ``callback`` when there is one."""
    if callback is not None:
        callback(event)
