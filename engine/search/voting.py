"""k-NN class voting: the likely classes of a query from its neighbours' labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def vote_classes(neighbour_labels: Sequence[str | None], distances: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
    """Classes ranked by summed similarity (1 - cosine distance) of the neighbours that carry them.

    Scores are normalised to sum to 1; ties go to the class whose best neighbour ranks higher.
    Unlabelled neighbours do not vote.
    """
    similarity = np.clip(1.0 - np.asarray(distances, dtype=np.float64), 0.0, None)
    totals: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for position, (label, weight) in enumerate(zip(neighbour_labels, similarity)):
        if label is None:
            continue
        totals[label] = totals.get(label, 0.0) + float(weight)
        first_seen.setdefault(label, position)
    norm = sum(totals.values()) or 1.0
    ranked = sorted(totals, key=lambda c: (-totals[c], first_seen[c]))
    return [(label, totals[label] / norm) for label in ranked[:top]]
