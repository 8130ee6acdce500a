"""Where regions come from, behind one registry: ``annotations`` (COCO boxes, or mask sets -> boxes), ``masker``
(components of the trained U-Net's foreground), ``detector`` (a torchvision detector with a local weights file)
and ``grid`` (overlapping windows: needs nothing). ``create_region_source(name, config, db)`` builds one;
unknown names are answered with the valid ones."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from engine.core.errors import InvalidRequestError, MissingFileError
from engine.core.registry import Registry
from engine.regions.boxes import Box, component_boxes, grid_boxes
from engine.regions.config import RegionConfig
from engine.storage.database import Database

logger = logging.getLogger(__name__)


class RegionSource(Protocol):
    name: str

    def boxes(self, path: str, image: Image.Image) -> list[Box]:
        """The regions of one decoded image (``path`` as the catalogue stores it)."""


Factory = Callable[[RegionConfig, Database], RegionSource]
REGION_SOURCES: Registry[Factory] = Registry("region source")


def register_region_source(name: str, description: str) -> Callable[[Factory], Factory]:
    return REGION_SOURCES.register(name, description)


def list_region_sources() -> dict[str, str]:
    return REGION_SOURCES.describe()


def create_region_source(config: RegionConfig, db: Database) -> RegionSource:
    """The source ``config.source`` names (the error lists the valid ones)."""
    return REGION_SOURCES.get(config.source)(config, db)


@register_region_source("grid", "overlapping windows (RegionConfig.window_shares, overlap): needs nothing")
@dataclass
class GridSource:
    config: RegionConfig
    db: Database
    name: str = "grid"

    def boxes(self, path: str, image: Image.Image) -> list[Box]:
        return grid_boxes(image.width, image.height, self.config.window_shares, self.config.overlap)


@register_region_source("annotations", "boxes given: a COCO JSON file (categories as labels), or a mask set whose components become boxes")
class AnnotationSource:
    name = "annotations"

    def __init__(self, config: RegionConfig, db: Database) -> None:
        if not config.annotations:
            raise InvalidRequestError("the annotations source needs a file: give --annotations COCO.json (or a mask CSV / folder)")
        location = Path(config.annotations)
        if not location.exists():
            raise MissingFileError(f"annotations not found: {location}; give a COCO JSON file, an RLE mask CSV or a folder of masks")
        self.config = config
        self.by_name: dict[str, list[Box]] = {}
        self.masks = None
        if location.suffix.lower() == ".json":
            self.by_name = read_coco(location)
        else:
            from engine.masking.masks import read_masks

            self.masks = read_masks(location)

    def boxes(self, path: str, image: Image.Image) -> list[Box]:
        name = Path(path).name
        if self.masks is not None:
            if not self.masks.has(name):
                return []
            return component_boxes(self.masks.mask(name), self.config.min_area_share, self.config.padding)
        for key in (path, name):
            if key in self.by_name:
                return self.by_name[key]
        return []


def read_coco(path: Path) -> dict[str, list[Box]]:
    """Boxes by image file name (and by the name as written) from a COCO detection file; category names as labels."""
    try:
        data = json.loads(path.read_text())
        categories = {c["id"]: c["name"] for c in data.get("categories", [])}
        names = {image["id"]: image["file_name"] for image in data["images"]}
        found: dict[str, list[Box]] = {}
        for annotation in data["annotations"]:
            x, y, w, h = (round(float(v)) for v in annotation["bbox"])
            file_name = names[annotation["image_id"]]
            box = Box(x, y, w, h, annotation.get("score"), categories.get(annotation.get("category_id")))
            found.setdefault(file_name, []).append(box)
            if Path(file_name).name != file_name:
                found.setdefault(Path(file_name).name, []).append(box)
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidRequestError(f"{path} is not a COCO detection file ({type(error).__name__}: {error}); it needs 'images' "
                                  "with 'id' and 'file_name', and 'annotations' with 'image_id' and 'bbox' [x, y, w, h]") from None
    return found


@register_region_source("masker", "connected components of a trained masker's foreground (lookalike train-masker)")
class MaskerSource:
    name = "masker"

    def __init__(self, config: RegionConfig, db: Database) -> None:
        from engine.masking.store import load_masker

        self.config = config
        self.masker = load_masker(db, config.masker, config.device)

    def boxes(self, path: str, image: Image.Image) -> list[Box]:
        mask = self.masker.predict([image])[0]
        return component_boxes(np.asarray(mask, bool), self.config.min_area_share, self.config.padding)


@register_region_source("detector", "a torchvision detector (--detector NAME) with a local weights file (--weights FILE)")
class DetectorSource:
    name = "detector"

    def __init__(self, config: RegionConfig, db: Database) -> None:
        import torch
        import torchvision

        if not config.weights:
            raise InvalidRequestError(f"the detector source needs a local weights file: give --weights FILE (a state dict of "
                                      f"torchvision's {config.detector}); nothing is downloaded")
        path = Path(config.weights)
        if not path.is_file():
            raise MissingFileError(f"detector weights not found: {path}; give a state-dict file saved from torchvision's {config.detector}")
        available = torchvision.models.list_models(module=torchvision.models.detection)
        if config.detector not in available:
            raise InvalidRequestError(f"unknown detector {config.detector!r}; choose one of {sorted(available)}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) if "roi_heads.box_predictor.cls_score.weight" in state else 91
        self.model = torchvision.models.get_model(config.detector, weights=None, weights_backbone=None, num_classes=classes)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise InvalidRequestError(f"{path} is not a state dict of {config.detector} with {classes} classes: "
                                      f"{str(error).splitlines()[0]}") from None
        self.model.eval()
        weights_enum = torchvision.models.get_model_weights(config.detector)
        categories = next(iter(weights_enum)).meta.get("categories", []) if weights_enum else []
        self.categories = categories if len(categories) == classes else []
        self.config = config
        self.to_tensor = torchvision.transforms.functional.pil_to_tensor

    def boxes(self, path: str, image: Image.Image) -> list[Box]:
        import torch

        with torch.inference_mode():
            found = self.model([self.to_tensor(image).float() / 255.0])[0]
        boxes = []
        for (left, top, right, bottom), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist()):
            if score < self.config.min_score:
                continue
            name = self.categories[label] if self.categories else str(label)
            box = Box(round(left), round(top), max(1, round(right - left)), max(1, round(bottom - top)), float(score), name).clipped(image.width, image.height)
            if box is not None:
                boxes.append(box)
        return boxes
