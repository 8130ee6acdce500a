"""Where the shipped data lives."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "corpus"  # good and hostile image files
SAMPLES = REPO / "data" / "samples"  # 120 Fashion-MNIST images, a folder per class
QUERIES = REPO / "data" / "queries"
