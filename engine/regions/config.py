"""How regions are found (:class:`RegionConfig`). Light on purpose: the front ends read their defaults here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegionConfig:
    """How regions are found: the source and its options."""

    source: str = "grid"
    annotations: str | None = None  # a COCO JSON file, or a mask set (RLE CSV / folder of mask images)
    masker: str | None = None  # a stored masker's id (default: the newest)
    detector: str = "fasterrcnn_mobilenet_v3_large_fpn"  # a torchvision detection model
    weights: str | None = None  # the detector's local state-dict file (no weights are downloaded)
    window_shares: tuple[float, ...] = (0.5,)  # grid windows, as shares of the image's sides
    overlap: float = 0.5  # grid windows overlap their neighbours by this share
    min_area_share: float = 0.01  # masker and mask-set components smaller than this share of the image are noise
    padding: float = 0.05  # components' boxes grow by this share of their size on each side
    min_score: float = 0.5  # detections below this confidence are dropped
    device: str | None = None
