"""``lookalike regions``: extract and embed the objects inside catalogue images; ``search --regions`` searches them.
Thin layer over ``console.service.regions``."""

from __future__ import annotations

import argparse

from console.cli.arguments import non_negative_float, unit_fraction
from console.cli.options import registered
from console.cli.output import progress_bar, show_rows
from engine.core.errors import InvalidRequestError


def region_config(args: argparse.Namespace, source: str):  # noqa: ANN201 - engine.regions.sources.RegionConfig
    from engine.regions.config import RegionConfig

    shares = tuple(float(s) for s in args.window_shares.split(",")) if getattr(args, "window_shares", None) else RegionConfig.window_shares
    return RegionConfig(source=source, annotations=getattr(args, "annotations", None), masker=getattr(args, "masker", None),
                        detector=getattr(args, "detector", RegionConfig.detector), weights=getattr(args, "weights", None),
                        window_shares=shares, min_area_share=getattr(args, "min_area", RegionConfig.min_area_share),
                        min_score=getattr(args, "min_score", RegionConfig.min_score))


def cmd_regions(args: argparse.Namespace) -> int:
    from console.service.regions import regions_of_catalogue
    from engine.storage.database import Database

    db = Database(args.db)
    with progress_bar() as show:
        report = regions_of_catalogue(db, args.model, region_config(args, args.source), args.where, args.folder, progress=show)
    per_image = 1000 * report.seconds / max(report.images, 1)
    print(f"{report.regions} regions from {args.source} in {report.images} images ({report.without_regions} without any, "
          f"{report.unreadable} unreadable) in {report.seconds:.1f} s ({per_image:.0f} ms an image, {report.embed_seconds:.1f} s embedding)")
    return 0


def run_region_search(args: argparse.Namespace) -> int:
    """``search --regions``: regions nearest to each query (the whole image, --box, or --query-regions as a set)."""
    from console.service.regions import search_by_regions
    from console.service.search import query_paths
    from engine.regions.boxes import parse_box
    from engine.storage.database import Database

    if args.id:
        raise InvalidRequestError("--regions searches with query files (a crop with --box); --id is not supported with it")
    if not args.queries:
        raise InvalidRequestError("give query image files (and --box x,y,w,h for a crop)")
    try:
        box = parse_box(args.box) if args.box else None
    except ValueError as error:
        raise InvalidRequestError(str(error)) from None
    query_source = region_config(args, args.query_regions) if args.query_regions else None
    found = search_by_regions(Database(args.db, read_only=True), args.model, query_paths(args.queries), k=args.k, all_regions=args.all_regions,
                              box=box, query_source=query_source, source=args.region_source, where=args.where)
    show_rows(args, {"regions": found}, empty="no regions found",
              views={"regions": [c for c in ("query", "rank", "path", "x", "y", "w", "h", "label", "distance") if c in found.columns]})
    return 0


def run_region_eval(args: argparse.Namespace) -> int:
    """``eval --regions``: region-level P@1 / P@5 / mAP@5 / mAP by object label, and image-level label-IoU@5."""
    from engine.core.splits import split_where
    from engine.evaluation.regions import evaluate_regions
    from engine.storage.database import Database

    db = Database(args.db, read_only=True)
    model = db.resolve_model(args.model)
    found = evaluate_regions(db, model, args.region_source, db.catalogue_where(split_where(args.catalogue_split)), split_where(args.query_split))
    print(f"model {model.id}: {found.objects.queries} query regions against {found.objects.catalogue} catalogue regions; "
          f"{found.query_images} query images against {found.catalogue_images} catalogue images by their regions: label-IoU@{found.k} {found.label_iou:.3f}")
    show_rows(args, {"metrics": found.objects.as_frame()} | ({"per_class": found.objects.per_class} if args.per_class else {}), empty="no regions")
    return 0


def add_search_options(search: argparse.ArgumentParser) -> None:
    regions = search.add_argument_group("regions")
    regions.add_argument("--regions", action="store_true", help="search the regions of catalogue images (lookalike regions) instead of whole images")
    regions.add_argument("--all-regions", action="store_true", help="with --regions: every region, not the best one of each image")
    regions.add_argument("--box", help="with --regions: query with this crop of the query image, x,y,w,h in pixels")
    regions.add_argument("--query-regions", type=registered("region-sources"), help="with --regions: the query's own regions from this source, as a set "
                         "(images holding every one of them rank first)")
    regions.add_argument("--region-source", type=registered("region-sources"), help="with --regions: only catalogue regions from this source")


def add_commands(sub: argparse._SubParsersAction, *, common: argparse.ArgumentParser, search_opts: argparse.ArgumentParser) -> None:
    from engine.regions.config import RegionConfig

    regions = sub.add_parser("regions", parents=[common], help="find the objects inside catalogue images and embed them, for search --regions")
    regions.add_argument("folder", nargs="?", help="only catalogue images under this folder (ingest it first)")
    regions.add_argument("--source", type=registered("region-sources"), default=RegionConfig.source, help="where boxes come from (default: a grid of windows, needs nothing)")
    regions.add_argument("--where", help="only catalogue images matching this filter")
    regions.add_argument("--model", help="model version whose encoder embeds the crops (default: the active one)")
    regions.add_argument("--annotations", help="annotations source: a COCO JSON file, or a mask set (RLE CSV or folder) whose components become boxes")
    regions.add_argument("--masker", help="masker source: a stored masker id (default: the newest)")
    regions.add_argument("--detector", default=RegionConfig.detector, help="detector source: a torchvision detection model")
    regions.add_argument("--weights", help="detector source: its local state-dict file (nothing is downloaded)")
    regions.add_argument("--window-shares", help="grid source: window sizes as shares of the image's sides, comma-separated (default 0.5)")
    regions.add_argument("--min-area", type=unit_fraction, default=RegionConfig.min_area_share, help="masker and mask components: the smallest share of the image kept")
    regions.add_argument("--min-score", type=non_negative_float, default=RegionConfig.min_score, help="detector source: the lowest confidence kept")
    regions.set_defaults(func=cmd_regions)
