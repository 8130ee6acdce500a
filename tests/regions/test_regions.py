"""Regions: boxes, sources, extraction into every view, search by a crop / a set, deletes, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from console.cli.main import main
from console.service.regions import regions_of_catalogue, search_by_regions
from engine.core.errors import InvalidRequestError, NotFoundError
from engine.evaluation.regions import object_retrieval, rank_images_by_regions
from engine.regions.boxes import Box, component_boxes, grid_boxes, parse_box, region_id
from engine.regions.config import RegionConfig
from engine.regions.extract import purge_orphans
from engine.regions.query import load_region_index
from engine.regions.sources import create_region_source, read_coco
from ingest import IngestConfig, scan_folder
from ingest.pipeline import ingest_files
from tests.support.paths import SAMPLES

SIDE = 96
CLASSES = ["bag", "sneaker", "trouser", "coat"]


def make_region_set(root: Path, images: int, seed: int) -> Path:
    """Shipped garments (28 px, scaled to 32) pasted at two fixed slots of seeded noise backgrounds; COCO boxes."""
    rng = np.random.default_rng(seed)
    garments = {c: sorted((SAMPLES / c).glob("*.png")) for c in CLASSES}
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": c} for i, c in enumerate(CLASSES)]}
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for n in range(images):
        canvas = rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
        foreground = np.zeros((SIDE, SIDE), bool)
        name = f"img{n:03d}.png"
        coco["images"].append({"id": n, "file_name": name})
        for slot, c in enumerate(rng.choice(len(CLASSES), 2, replace=False)):
            garment = np.asarray(Image.open(garments[CLASSES[c]][n % len(garments[CLASSES[c]])]).resize((32, 32)))
            left, top = 8 + 48 * slot, 30
            mask = garment > 0
            canvas[top : top + 32, left : left + 32][mask] = np.repeat(garment[..., None], 3, axis=2)[mask]
            foreground[top : top + 32, left : left + 32] |= mask
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": n, "category_id": int(c), "bbox": [left, top, 32, 32]})
        Image.fromarray(canvas).save(root / name)
        Image.fromarray(foreground.astype(np.uint8) * 255).save(root / "masks" / name)
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def region_db(tmp_path_factory, tiny_encoder):
    from engine.storage.database import Database

    root = make_region_set(tmp_path_factory.mktemp("regionset"), 10, seed=1)
    db = Database(root / "db")
    ingest_files(db, [f for f in scan_folder(root, None) if f.path.suffix == ".png" and f.path.parent == root], root, IngestConfig(), encoder=tiny_encoder)
    return db, root


# ---- pure functions ------------------------------------------------------------------------------------


def test_grid_windows_cover_the_image_edge_to_edge_with_the_overlap_asked():
    boxes = grid_boxes(100, 60, (0.5,), 0.5)
    assert {(b.w, b.h) for b in boxes} == {(50, 30)}
    assert {b.x for b in boxes} == {0, 25, 50} and {b.y for b in boxes} == {0, 15, 30}  # the last windows touch the edges
    odd = grid_boxes(101, 61, (0.5,), 0.5)
    assert max(b.x + b.w for b in odd) == 101 and max(b.y + b.h for b in odd) == 61


def test_component_boxes_match_a_flood_fill_and_drop_small_specks():
    mask = np.zeros((40, 40), bool)
    mask[5:15, 3:9] = True  # 60 px
    mask[20:30, 20:35] = True  # 150 px
    mask[20, 35] = True  # touching diagonally? no: the same row, adjacent: joins the second
    mask[0, 39] = True  # a speck: 1 px
    boxes = component_boxes(mask, min_area_share=10 / 1600)
    assert sorted((b.x, b.y, b.w, b.h) for b in boxes) == [(3, 5, 6, 10), (20, 20, 16, 10)]
    assert all(0 < b.score <= 1 for b in boxes)


def test_boxes_parse_clip_and_key():
    assert parse_box("1,2,30,40") == Box(1, 2, 30, 40)
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,5"):
        with pytest.raises(ValueError, match="x,y,w,h|positive"):
            parse_box(bad)
    assert Box(-5, 90, 20, 20).clipped(96, 96) == Box(0, 90, 15, 6)
    assert Box(100, 0, 5, 5).clipped(96, 96) is None
    assert region_id("a", "grid", Box(1, 2, 3, 4)) == region_id("a", "grid", Box(1, 2, 3, 4)) != region_id("a", "annotations", Box(1, 2, 3, 4))


def test_object_retrieval_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    queries, regions = rng.normal(size=(6, 8)), rng.normal(size=(20, 8))
    region_images = rng.integers(0, 7, 20)
    rankings = rank_images_by_regions(queries, regions, region_images, 7)
    for q in range(6):  # by hand: each image's best region
        best = [max([queries[q] @ regions[r] for r in range(20) if region_images[r] == i], default=-np.inf) for i in range(7)]
        assert list(rankings[q]) == list(np.argsort(-np.asarray(best), kind="stable"))
    labels = [{"a"}, {"b"}, {"a", "b"}, set(), {"c"}, {"a"}, {"b", "c"}]
    query_labels = ["a", "b", "c", "a", "b", "c"]
    result = object_retrieval(rankings, query_labels, labels)
    relevant = [[query_labels[q] in labels[i] for i in rankings[q]] for q in range(6)]
    aps = [np.mean([sum(row[: k + 1]) / (k + 1) for k in range(7) if row[k]]) for row in relevant]
    assert result.p_at_1 == pytest.approx(np.mean([row[0] for row in relevant]))
    assert result.p_at_5 == pytest.approx(np.mean([sum(row[:5]) / 5 for row in relevant]))
    assert result.mean_ap == pytest.approx(np.mean(aps)) and set(result.per_class["class"]) == {"a", "b", "c"}


def test_a_malformed_coco_file_gives_one_clear_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": [{"file_name": "x.png"}], "annotations": []}))
    with pytest.raises(InvalidRequestError, match="not a COCO detection file"):
        read_coco(path)


# ---- extraction and search -----------------------------------------------------------------------------


def test_annotation_regions_reach_both_views_and_a_crop_finds_its_own_region(region_db):
    db, root = region_db
    report = regions_of_catalogue(db, None, RegionConfig(source="annotations", annotations=str(root / "annotations.json")))
    assert report.images == 10 and report.regions == 20 and report.without_regions == 0
    model = db.resolve_model(None)
    assert db.regions.count_rows() == 20 and db.region_embeddings(model).count_rows() == 20
    labels = set(db.regions.search().select(["label"]).limit(None).to_arrow().column("label").to_pylist())
    assert labels <= set(CLASSES) and len(labels) >= 2
    # the exact crop of a stored region is that region, at distance ~0
    found = search_by_regions(db, None, [root / "img003.png"], k=3, box=Box(56, 30, 32, 32))
    first = found.row(0, named=True)
    assert Path(first["path"]).name == "img003.png" and (first["x"], first["y"], first["w"], first["h"]) == (56, 30, 32, 32)
    assert first["distance"] == pytest.approx(0.0, abs=1e-4)
    assert found["image_id"].n_unique() == found.height  # the best region of each image
    every = search_by_regions(db, None, [root / "img003.png"], k=5, box=Box(56, 30, 32, 32), all_regions=True)
    assert every.height == 5 and (every["distance"].diff().drop_nulls() >= -1e-6).all()
    again = regions_of_catalogue(db, None, RegionConfig(source="annotations", annotations=str(root / "annotations.json")))
    assert again.regions == 20 and db.regions.count_rows() == 20  # a re-run adds nothing


def test_a_where_filter_keeps_region_answers_to_the_images_it_matches(region_db):
    from engine.core.errors import NotFoundError
    from engine.storage.filters import WhereFilterError

    db, root = region_db
    regions_of_catalogue(db, None, RegionConfig(source="annotations", annotations=str(root / "annotations.json")))  # a re-run adds nothing
    crop = Box(56, 30, 32, 32)
    unfiltered = search_by_regions(db, None, [root / "img003.png"], k=3, box=crop)
    found = search_by_regions(db, None, [root / "img003.png"], k=3, box=crop, where="path NOT LIKE '%img003.png'")
    assert Path(unfiltered["path"][0]).name == "img003.png"
    assert found.height == 3 and not any(Path(p).name == "img003.png" for p in found["path"])
    assert found["distance"].min() > unfiltered["distance"].min()
    every = search_by_regions(db, None, [root / "img003.png"], k=20, box=crop, all_regions=True, where="path LIKE '%img00_.png' AND path NOT LIKE '%img003.png'")
    assert set(every["path"].map_elements(lambda p: Path(p).name, return_dtype=str)) <= {f"img00{i}.png" for i in range(10)} - {"img003.png"}
    with pytest.raises(WhereFilterError, match="nope"):
        search_by_regions(db, None, [root / "img003.png"], k=3, box=crop, where="nope = 1")
    with pytest.raises(NotFoundError, match="no image matching"):
        search_by_regions(db, None, [root / "img003.png"], k=3, box=crop, where="path = 'elsewhere'")


def test_a_query_set_ranks_the_image_holding_both_objects_first(region_db):
    db, root = region_db
    regions_of_catalogue(db, None, RegionConfig(source="annotations", annotations=str(root / "annotations.json")))
    found = search_by_regions(db, None, [root / "img005.png"], k=3, query_source=RegionConfig(source="annotations", annotations=str(root / "annotations.json")),
                              source="annotations")
    assert Path(found.row(0, named=True)["path"]).name == "img005.png" and found.row(0, named=True)["distance"] == pytest.approx(0.0, abs=1e-4)


def test_grid_and_mask_set_sources_need_nothing_else(region_db):
    db, root = region_db
    grid = regions_of_catalogue(db, None, RegionConfig(source="grid", window_shares=(0.5,), overlap=0.5))
    assert grid.regions == 10 * 9  # 3 x 3 windows of half the side
    masks = regions_of_catalogue(db, None, RegionConfig(source="annotations", annotations=str(root / "masks"), min_area_share=0.02, padding=0.0))
    assert masks.regions >= 10  # the garments' components (a garment's pixels may split into parts)
    index = load_region_index(db, db.resolve_model(None), "grid")
    assert index.size == 90 and set(index.boxes["source"]) == {"grid"}


def test_a_deleted_image_loses_its_regions_in_every_view_even_after_an_interrupted_delete(region_db, tmp_path):
    import shutil

    from engine.storage.database import Database

    db_source, root = region_db
    shutil.copytree(db_source.uri, tmp_path / "db")
    db = Database(tmp_path / "db")
    regions_of_catalogue(db, None, RegionConfig(source="annotations", annotations=str(root / "annotations.json")))
    model = db.resolve_model(None)
    victim = db.images_frame(columns=["id", "path"]).filter(db.images_frame(columns=["path"])["path"].str.ends_with("img003.png"))["id"][0]
    db.delete_images([victim])
    for table in (db.regions, db.region_embeddings(model)):
        assert table.count_rows(f"image_id = '{victim}'") == 0
    # a delete killed after its commit point: the image is gone, its regions are not yet
    other = db.images_frame(columns=["id", "path"]).filter(db.images_frame(columns=["path"])["path"].str.ends_with("img004.png"))["id"][0]
    db.images.delete(f"id = '{other}'")
    assert other not in set(load_region_index(db, model).boxes["image_id"])  # never answered
    assert purge_orphans(db) == 1 and db.regions.count_rows(f"image_id = '{other}'") == 0 and db.region_embeddings(model).count_rows(f"image_id = '{other}'") == 0
    db.drop_model(model)  # the version's region vectors go with it
    assert not any(name.startswith("regions__") for name in db.table_names())


def test_sources_answer_unknown_names_and_missing_files_in_one_line(region_db, tmp_path):
    db, _ = region_db
    with pytest.raises(Exception, match="grid"):  # the registry names the valid sources
        create_region_source(RegionConfig(source="nope"), db)
    with pytest.raises(InvalidRequestError, match="--annotations"):
        create_region_source(RegionConfig(source="annotations"), db)
    with pytest.raises(InvalidRequestError, match="--weights"):
        create_region_source(RegionConfig(source="detector"), db)
    bad = tmp_path / "bad.pt"
    import torch

    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(InvalidRequestError, match="not a state dict"):
        create_region_source(RegionConfig(source="detector", weights=str(bad)), db)
    with pytest.raises(NotFoundError, match="lookalike regions"):
        load_region_index(db, db.resolve_model(None), "detector")


def test_a_detector_with_a_local_weights_file_finds_boxes(region_db, tmp_path):
    import torch
    import torchvision

    db, root = region_db
    torch.manual_seed(0)
    detector = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None, num_classes=91)
    weights = tmp_path / "detector.pt"
    torch.save(detector.state_dict(), weights)  # random weights: no pretrained ones are reachable here
    source = create_region_source(RegionConfig(source="detector", weights=str(weights), min_score=0.0), db)
    boxes = source.boxes(str(root / "img000.png"), Image.open(root / "img000.png").convert("RGB"))
    assert all(0 <= b.x and b.x + b.w <= SIDE and 0 <= b.y and b.y + b.h <= SIDE for b in boxes)
    assert all(b.label in source.categories for b in boxes) and len(source.categories) == 91


def test_the_cli_extracts_and_searches_regions(region_db, tmp_path, capsys):
    import shutil

    db, root = region_db
    shutil.copytree(db.uri, tmp_path / "db")
    path = str(tmp_path / "db")
    assert main(["regions", "--db", path, "--source", "annotations", "--annotations", str(root / "annotations.json")]) == 0
    assert "20 regions from annotations in 10 images" in capsys.readouterr().out
    assert main(["search", str(root / "img003.png"), "--db", path, "--regions", "--box", "56,30,32,32", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "img003.png" in out and "56" in out
    assert main(["search", str(root / "img003.png"), "--db", path, "--regions", "--box", "56,30"]) == 2
    assert "x,y,w,h" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["regions", "--db", path, "--source", "nope"])
    assert stopped.value.code == 2 and "choose one of" in capsys.readouterr().err


def test_the_masker_source_boxes_the_components_of_the_masker_prediction(region_db, tiny_weights, tmp_path):
    import shutil

    from engine.masking.masks import pair_images_with_masks, read_masks
    from engine.masking.store import load_masker
    from engine.masking.unet import MaskerConfig
    from engine.storage.database import Database
    from engine.training.masker import MaskerTrainConfig, train_masker

    db_source, root = region_db
    shutil.copytree(db_source.uri, tmp_path / "db")
    db = Database(tmp_path / "db")
    masks = read_masks(root / "masks")
    config = MaskerTrainConfig(MaskerConfig(encoder="test_efficientnet", encoder_weights=str(tiny_weights), image_size=SIDE,
                                            decoder_channels=(32, 16, 16, 8, 8)), epochs=1, batch_size=5, holdout=0.0, device="cpu")
    train_masker(db, pair_images_with_masks(root, masks), masks, config)
    config = RegionConfig(source="masker", min_area_share=0.0, padding=0.0)
    source = create_region_source(config, db)
    image = Image.open(root / "img001.png").convert("RGB")
    expected = component_boxes(np.asarray(load_masker(db).predict([image])[0], bool), 0.0, 0.0)
    assert source.boxes(str(root / "img001.png"), image) == expected
    report = regions_of_catalogue(db, None, config)
    assert report.images == 10 and report.regions + report.without_regions >= 10


def test_eval_regions_measures_objects_with_the_eval_metrics_and_images_as_sets(region_db):
    from engine.evaluation.metrics import evaluate
    from engine.evaluation.regions import evaluate_regions

    db, root = region_db
    regions_of_catalogue(db, None, RegionConfig(source="annotations", annotations=str(root / "annotations.json")))
    model = db.resolve_model(None)
    queries = "path LIKE '%img008.png' OR path LIKE '%img009.png'"
    found = evaluate_regions(db, model, "annotations", f"NOT ({queries})", queries)
    assert (found.objects.queries, found.objects.catalogue, found.query_images, found.catalogue_images) == (4, 16, 2, 8)
    index = load_region_index(db, model, "annotations")
    is_query = index.boxes["path"].str.contains("img008|img009").to_numpy()
    labels = index.boxes["label"].to_list()
    direct = evaluate(index.vectors[is_query], [label for label, q in zip(labels, is_query) if q], index.vectors[~is_query],
                      [label for label, q in zip(labels, is_query) if not q])
    assert (found.objects.p_at_1, found.objects.mean_ap) == (direct.p_at_1, direct.mean_ap)
    assert 0.0 <= found.label_iou <= 1.0
