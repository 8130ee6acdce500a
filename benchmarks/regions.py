"""Object retrieval on composites of real photos: whole images vs regions from annotations, masker, grid.

The set (``benchmarks/tools/make_region_set.py``): several Fashion-MNIST garments of distinct classes pasted on
each MIT photo, catalogue and queries on disjoint photos. Every garment of a query image is a query (its
annotated crop, embedded by the default encoder); a catalogue image is relevant when it holds a garment of the
query's class. Catalogue images are ranked by their whole-image vector (the baseline) or by their nearest region
(each source in turn, the product's ``extract_regions``); P@1, P@5 and full mAP by garment class and overall.
Cost: regions an image, embedding ms an image, the region table on disk, ms per region query.

    python benchmarks/tools/make_region_set.py --backgrounds ../shared/datasets/mit_scenes/train --out /tmp/regionset
    python benchmarks/tools/make_mask_set.py --backgrounds ../shared/datasets/mit_scenes/train --out /tmp/maskset   # the masker's set
    python benchmarks/regions.py --set /tmp/regionset --masker-set /tmp/maskset/masker --work /tmp/regionbench
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.evaluation.regions import object_retrieval, rank_images, rank_images_by_regions  # noqa: E402
from engine.media.decode import decode_image  # noqa: E402
from engine.regions.config import RegionConfig  # noqa: E402
from engine.regions.extract import extract_regions  # noqa: E402
from engine.regions.query import load_region_index, search_regions  # noqa: E402
from engine.storage.database import Database, vectors_of  # noqa: E402
from engine.versions import encoder_for_model  # noqa: E402
from ingest import IngestConfig, scan_folder  # noqa: E402
from ingest.pipeline import ingest_files  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def train_masker_on(db: Database, masker_set: Path, images: int, epochs: int) -> str:
    from engine.masking.masks import pair_images_with_masks, read_masks
    from engine.masking.unet import MaskerConfig
    from engine.training.masker import MaskerTrainConfig, train_masker

    masks = read_masks(masker_set / "masks.csv")
    paths = pair_images_with_masks(masker_set / "images", masks)[:images]
    return train_masker(db, paths, masks, MaskerTrainConfig(MaskerConfig(), epochs=epochs, holdout=0.2)).id


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, required=True, help="a folder written by benchmarks/tools/make_region_set.py")
    parser.add_argument("--work", type=Path, required=True, help="the database is built here (kept for a re-run)")
    parser.add_argument("--masker-set", type=Path, help="make_mask_set.py's masker/ folder: a masker is trained on it for the masker source")
    parser.add_argument("--masker-images", type=int, default=400)
    parser.add_argument("--masker-epochs", type=int, default=6)
    parser.add_argument("--sources", default="annotations,masker,grid,grid-fine")
    parser.add_argument("--out", type=Path, default=RESULTS / "regions.csv")
    args = parser.parse_args(argv)
    coco = json.loads((args.set / "annotations.json").read_text())
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    objects = [(files[a["image_id"]], categories[a["category_id"]], a["bbox"]) for a in coco["annotations"]]

    db = Database(args.work / "db")
    if not db.find_models():
        started = time.perf_counter()
        ingest_files(db, scan_folder(args.set / "catalogue", None, "train"), args.set, IngestConfig())
        ingest_files(db, scan_folder(args.set / "queries", None, "val"), args.set, IngestConfig())
        print(f"ingested in {time.perf_counter() - started:.0f} s", flush=True)
    model = db.resolve_model(None)
    encoder = encoder_for_model(db, model)
    catalogue = db.embeddings(model).search().where("split = 'train'").select(["image_id", "path", "vector"]).limit(None).to_arrow()
    catalogue_ids = catalogue.column("image_id").to_pylist()
    position = {image_id: i for i, image_id in enumerate(catalogue_ids)}
    relative = [str(Path(p).relative_to(args.set.resolve())) for p in catalogue.column("path").to_pylist()]
    label_sets = [{label for name, label, _ in objects if name == r} for r in relative]

    queries = [(name, label, box) for name, label, box in objects if name.startswith("queries/")]
    crops = []
    for name, _, (x, y, w, h) in queries:
        image = decode_image((args.set / name).read_bytes()).image
        crops.append(image.crop((x, y, x + w, y + h)))
    query_vectors = encoder.encode_images(crops)
    query_labels = [label for _, label, _ in queries]
    print(f"{len(catalogue_ids)} catalogue images, {len(queries)} query objects ({len(set(query_labels))} classes)", flush=True)

    rows, per_class = [], []

    def record(mode: str, rankings: np.ndarray, cost: dict) -> None:
        result = object_retrieval(rankings, query_labels, label_sets)
        rows.append({"mode": mode, "P@1": round(result.p_at_1, 4), "P@5": round(result.p_at_5, 4), "mAP": round(result.mean_ap, 4), "queries": result.queries, **cost})
        per_class.append(result.per_class.with_columns(pl.lit(mode).alias("mode")))
        print(rows[-1], flush=True)

    record("whole image", rank_images(query_vectors, vectors_of(catalogue)), {"regions_per_image": 1.0})
    configs = {"annotations": RegionConfig(source="annotations", annotations=str(args.set / "annotations.json")),
               "masker": RegionConfig(source="masker"), "grid": RegionConfig(source="grid"),
               "grid-fine": RegionConfig(source="grid", window_shares=(0.5, 0.33))}
    for name in args.sources.split(","):
        config = configs[name]
        if config.source == "masker":
            if args.masker_set is None:
                print("masker: skipped (give --masker-set)")
                continue
            if db.table_names() and "maskers" not in db.table_names():
                started = time.perf_counter()
                print(f"training a masker: {train_masker_on(db, args.masker_set, args.masker_images, args.masker_epochs)} "
                      f"in {time.perf_counter() - started:.0f} s", flush=True)
        report = extract_regions(db, model, config, "split = 'train'")
        index = load_region_index(db, model, config.source)
        if config.source == "grid":  # two grids share the source name: keep this run's windows only
            sizes = sorted({round(s * 192) for s in config.window_shares})
            index_rows = np.flatnonzero(index.boxes["w"].is_in(sizes).to_numpy())
            boxes, vectors = index.boxes[index_rows.tolist()], index.vectors[index_rows]
        else:
            boxes, vectors = index.boxes, index.vectors
        boxes = boxes.with_row_index("r").filter(pl.col("image_id").is_in(catalogue_ids))
        region_images = np.array([position[i] for i in boxes["image_id"]])
        rankings = rank_images_by_regions(query_vectors, vectors[boxes["r"].to_numpy()], region_images, len(catalogue_ids))
        timings = []
        for vector in query_vectors[:50]:
            started = time.perf_counter()
            search_regions(index, vector[None], 10)
            timings.append(1000 * (time.perf_counter() - started))
        table = args.work / "db" / f"regions__{model.embeddings_table.removeprefix('embeddings__')}.lance"
        record(f"regions: {name}", rankings, {"regions_per_image": round(len(boxes) / len(catalogue_ids), 2),
                                               "embed_ms_per_image": round(1000 * report.embed_seconds / max(report.images, 1), 1),
                                               "extract_s": round(report.seconds, 1), "region_table_mb": round(folder_bytes(table) / 2**20, 2),
                                               "query_ms_p50": round(statistics.median(timings), 2)})
    frame = pl.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(args.out)
    pl.concat(per_class, how="diagonal").select("mode", "class", "queries", "P@1", "P@5", "mAP").write_csv(args.out.with_name(args.out.stem + "_per_class.csv"))
    print(frame)
    return frame


if __name__ == "__main__":
    main()
