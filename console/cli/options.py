"""Options several commands share: names checked against a registry, loaded only when an option is parsed."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

from console.cli.arguments import positive_int
from engine.core.errors import InvalidRequestError, LookalikeError

# ``lookalike list FAMILY``: every registry, by (module, function) so that nothing loads before it is asked for.
REGISTRIES: dict[str, tuple[str, str]] = {
    "encoders": ("engine.encoders.config", "list_encoders"),
    "kinds": ("engine.versions", "list_kinds"),
    "derivations": ("engine.versions.derived", "list_derivations"),
    "methods": ("engine.training", "list_methods"),
    "regimes": ("engine.training", "list_regimes"),
    "augmentations": ("engine.training.augment", "list_augmentations"),
    "rerankers": ("engine.search.rerank", "list_rerankers"),
    "memory-indexes": ("engine.search.memory_index", "list_memory_indexes"),
    "scorers": ("engine.evaluation.distractors", "list_scorers"),
    "mask-modes": ("engine.masking.modes", "list_mask_modes"),
    "mask-formats": ("engine.masking.masks", "list_mask_readers"),
    "plots": ("engine.reports", "list_plots"),
    "projections": ("engine.reports", "list_projectors"),
    "ingest-engines": ("ingest.engines", "list_ingest_engines"),
    "audit-kinds": ("engine.audit", "list_finders"),
    "region-sources": ("engine.regions.sources", "list_region_sources"),
}


def registry_names(family: str) -> dict[str, str]:
    module, function = REGISTRIES[family]
    return getattr(importlib.import_module(module), function)()


def registered(family: str, chains: bool = False) -> Callable[[str], str]:
    """argparse type: a name of ``family`` (re-rankers also take chains such as ``qe+k-reciprocal``)."""

    def check(name: str) -> str:
        if chains:
            from engine.search.rerank import create_reranker

            try:
                create_reranker(name)
            except LookalikeError as error:
                raise argparse.ArgumentTypeError(str(error)) from error
            return name
        names = registry_names(family)
        if name not in names:
            raise argparse.ArgumentTypeError(f"unknown {family.rstrip('s')} {name!r}; choose one of {sorted(names)} (lookalike list {family})")
        return name

    check.__name__ = family
    return check


def label_depth(args: argparse.Namespace) -> int:
    """Which folder names a file's class: ``--label-depth N`` or ``--label-from top|parent``."""
    from engine.media.scan import LABEL_FROM

    if args.label_depth is not None and args.label_from is not None:
        raise InvalidRequestError("give --label-depth or --label-from, not both")
    return args.label_depth if args.label_depth is not None else LABEL_FROM[args.label_from or "top"]


def add_label_options(parser: argparse.ArgumentParser) -> None:
    """Where a file's class comes from: a CSV, or which of its folders."""
    parser.add_argument("--labels", type=Path, help="CSV of image file name and space-separated classes (columns by name: image,labels; or no header)")
    parser.add_argument("--label-from", choices=("top", "parent"), help="class from the top sub-folder (default: photos/cat/x/1.jpg -> cat) "
                        "or from the folder the file sits in (-> x); files directly in the folder get no class")
    parser.add_argument("--label-depth", type=positive_int, help="class from the N-th folder below the root (1 = --label-from top)")
