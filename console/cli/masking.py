"""``lookalike train-masker``, ``maskers`` and ``mask-preview``: foreground maskers from the command line.

Masked ingest and search are options of ``ingest``/``search`` (``--mask MASKER --mask-mode MODE``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from console.cli.arguments import open_fraction, positive_float, positive_int
from console.cli.options import registered
from console.cli.output import add_output_options, progress_bar, show_rows
from engine.core.errors import InvalidRequestError


def add_mask_options(parser: argparse.ArgumentParser, help_mask: str) -> None:
    """``--mask`` and ``--mask-mode`` of ingest and search."""
    parser.add_argument("--mask", metavar="MASKER", help=help_mask)
    parser.add_argument("--mask-mode", type=registered("mask-modes"), help="how the background is removed (default zero, or the catalogue's; lookalike list mask-modes)")


def cmd_train_masker(args: argparse.Namespace) -> int:
    from engine.masking.masks import pair_images_with_masks, read_masks
    from engine.masking.unet import MaskerConfig
    from engine.storage.database import Database
    from engine.training.masker import MaskerTrainConfig, train_masker

    db = Database(args.db)
    masks = read_masks(args.masks, args.format)
    paths = pair_images_with_masks(args.images, masks)
    if args.limit:
        paths = paths[: args.limit]
    masker = MaskerConfig(encoder=args.encoder, encoder_weights=args.weights, image_size=args.size)
    config = MaskerTrainConfig(masker=masker, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               holdout=args.holdout, seed=args.seed, device=args.device)
    print(f"training a U-Net ({args.encoder}) on {len(paths)} images with {masks.kind} masks from {args.masks}", flush=True)

    with progress_bar(lines=True) as show:
        record = train_masker(db, paths, masks, config, progress=show)
    iou = f"{record.val_iou:.4f}" if record.val_iou is not None else "n/a (no holdout)"
    print(f"stored masker {record.id}: held-out IoU {iou} on {record.val_images} images, trained on {record.train_images}")
    return 0


def cmd_maskers(args: argparse.Namespace) -> int:
    from engine.masking.store import maskers_frame
    from engine.storage.database import Database

    db = Database(args.db, read_only=True)
    if args.foreground:
        return _show_foreground(args, db, args.foreground)
    import polars as pl

    frame = maskers_frame(db)
    epochs = [json.loads(d).get("best_epoch") for d in frame["details"]]
    show_rows(args, {"maskers": frame.with_columns(pl.Series("best_epoch", epochs, pl.Int64))
                     .select("id", "encoder", "image_size", "val_iou", "train_images", "val_images", "best_epoch", "created_at")},
              empty="no maskers yet: run lookalike train-masker")
    return 0


def _show_foreground(args: argparse.Namespace, db, model_name: str) -> int:  # noqa: ANN001 - a Database
    """Foreground fractions stored by a masked ingest: summary, then the images with the least foreground."""
    import polars as pl

    from engine.masking.store import foreground_frame

    model = db.resolve_model(model_name)
    frame = foreground_frame(db, model.id)
    if not frame.height:
        print(f"model {model.id} has no foreground fractions (it was not ingested with --mask)")
        return 0
    paths = db.images_frame(columns=["id", "path"]).rename({"id": "image_id"})
    summary = frame.group_by("masker_id", "mode").agg(pl.len().alias("images"), pl.col("fraction").mean().alias("mean"),
                                                      pl.col("fraction").min().alias("min"), pl.col("fraction").max().alias("max"))
    least = frame.sort("fraction").head(10).join(paths, on="image_id", how="left").select("image_id", "path", "fraction")
    show_rows(args, {"summary": summary, "least_foreground": least}, empty="", titles={"least_foreground": "the images with the least foreground"})
    return 0


def cmd_mask_preview(args: argparse.Namespace) -> int:
    from engine.masking.masks import foreground_fraction, read_masks
    from engine.masking.modes import mask_preview
    from engine.masking.store import load_masker
    from engine.media.decode import decode_image
    from engine.media.scan import iter_image_files
    from engine.storage.database import Database

    paths = [p for given in args.images for p in (sorted(iter_image_files(Path(given))) if Path(given).is_dir() else [Path(given)])]
    if not paths:
        raise InvalidRequestError("give image files or folders to preview")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = [decode_image(p.read_bytes()).image for p in paths]
    if args.masks:
        truth = read_masks(args.masks, args.format)
        masks, source = [truth.mask(p.name) for p in paths], str(args.masks)
    else:
        masker = load_masker(Database(args.db, read_only=True), args.masker, args.device)
        masks, source = masker.predict(images), masker.id
    for path, image, mask in zip(paths, images, masks):
        target = out / f"{path.stem}.mask.png"
        mask_preview(image, mask, args.mode).save(target)
        print(f"{target}  foreground {foreground_fraction(mask):.3f}  ({source})")
    return 0


def add_commands(sub, *, common: argparse.ArgumentParser, search_opts: argparse.ArgumentParser) -> None:
    train = sub.add_parser("train-masker", parents=[common], help="train a U-Net foreground masker from masks (RLE CSV or mask folder)")
    train.add_argument("images", type=Path, help="folder of the images the masks belong to")
    train.add_argument("--masks", type=Path, required=True, help="RLE CSV (ImageId, EncodedPixels, Height, Width, ClassId) or folder of mask PNGs")
    train.add_argument("--format", default="auto", help="auto, rle-csv or png-folder")
    train.add_argument("--encoder", default="efficientnet_lite0", help="encoder whose offline weights start the U-Net")
    train.add_argument("--weights", help="local weights file for --encoder")
    train.add_argument("--size", type=positive_int, default=128, help="side the masker resizes images to (multiple of 32)")
    train.add_argument("--epochs", type=positive_int, default=8)
    train.add_argument("--batch-size", type=positive_int, default=16)
    train.add_argument("--lr", type=positive_float, default=1e-3)
    train.add_argument("--holdout", type=open_fraction, default=0.2, help="share of the masks held out to measure IoU")
    train.add_argument("--limit", type=positive_int, help="train on the first N paired images only")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device")
    train.set_defaults(func=cmd_train_masker)

    maskers = sub.add_parser("maskers", parents=[common], help="stored foreground maskers, newest first")
    maskers.add_argument("--foreground", metavar="MODEL", help="instead: the foreground fractions a masked model version stored")
    add_output_options(maskers)
    maskers.set_defaults(func=cmd_maskers)

    preview = sub.add_parser("mask-preview", parents=[common], help="write PNGs of images with their mask overlaid")
    preview.add_argument("images", nargs="+", help="image files or folders")
    preview.add_argument("--masker", help="stored masker id (default: the newest)")
    preview.add_argument("--masks", type=Path, help="show these given masks (RLE CSV or folder) instead of a masker's")
    preview.add_argument("--format", default="auto")
    preview.add_argument("--mode", type=registered("mask-modes"), help="also show the image masked in this mode, side by side")
    preview.add_argument("--out", default="mask-previews", help="folder for the PNGs")
    preview.add_argument("--device")
    preview.set_defaults(func=cmd_mask_preview)
