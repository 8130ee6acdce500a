"""Visual reports: the EDA warnings and duplicate groups on planted data, the PR maths, the map cache,
and the whole report (every figure, the HTML page, the CLI) on the shipped sample images."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import polars as pl
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from console.cli.main import main
from engine.encoders.config import HeadConfig
from engine.evaluation.config import CalibrationConfig
from engine.evaluation.detect import calibrate_model, latest_calibration
from engine.evaluation.distractors import roc_auc
from engine.evaluation.metrics import average_precision, evaluate, load_split
from engine.reports import MapConfig, ReportConfig, ReportContext, build_report, build_section, plot_pngs, write_report
from engine.reports.curves import calibration_scores
from engine.reports.data import EmbeddingSet, load_embeddings
from engine.reports.eda import SkewConfig, duplicate_warnings, near_duplicate_groups, skew_summary, split_skew_warnings
from engine.reports.embedding_map import ProjectionCache, embedding_map, project
from engine.reports.retrieval import RECALL_GRID, interpolated_precision
from engine.storage.database import Database
from engine.training.config import TrainConfig
from engine.training.head import train_head
from ingest.pipeline import IngestConfig, ingest_folder
from tests.support.paths import SAMPLES
from tests.support.synthetic import clustered_vectors, synthetic_rows

LABELS = ["coast", "forest", "street", "mountain"]


def image_rows(n: int, split: str, size=(256, 256), seed: int = 0) -> list[dict]:
    rows = synthetic_rows(n, LABELS, seed)
    for row in rows:
        row.update(split=split, width=size[0], height=size[1])
    return rows


# ---- EDA warnings --------------------------------------------------------------------------------


def test_planted_size_skew_fires_with_the_numbers_behind_it():
    # the test split ends with a block of 512x512 images (the distractors) that the train split barely has
    rows = image_rows(400, "train") + image_rows(4, "train", (512, 512)) + image_rows(150, "test") + image_rows(50, "test", (512, 512))
    warnings = split_skew_warnings(pl.DataFrame(rows))
    assert [w.details["feature"] for w in warnings] == ["size"]
    cells = warnings[0].details["cells"]
    assert len(cells) == 1
    found = cells[0]
    assert (found["value"], found["split"], found["count"], found["total"], found["other_split"], found["other_count"], found["other_total"]) == ("512x512", "test", 50, 200, "train", 4, 404)
    assert found["share"] == pytest.approx(0.25) and found["p_value"] < 1e-10
    assert "512x512 is 25.0% of 'test' (50/200) but 1.0% of 'train' (4/404)" in warnings[0].message


def test_a_leak_into_one_split_is_one_warning_per_property():
    rows = image_rows(300, "train") + image_rows(100, "val") + image_rows(60, "test", (28, 28))
    for row in rows[400:]:
        row.update(mode="L", channels=1)
    warnings = split_skew_warnings(pl.DataFrame(rows))
    assert sorted(w.details["feature"] for w in warnings) == ["channels", "mode", "size"]
    size = next(w for w in warnings if w.details["feature"] == "size")
    assert "28x28 is 100.0% of 'test' (60/60) but 0.0% of 'train' (0/300), 0.0% of 'val' (0/100)" in size.message
    assert skew_summary(warnings).height == sum(len(w.details["cells"]) for w in warnings)


def test_clean_splits_raise_no_warning():
    rng = np.random.default_rng(1)
    sizes = [(256, 256), (512, 512), (640, 480), (480, 640)]
    rows = []
    for split, n in (("train", 800), ("val", 200)):
        for _i, row in enumerate(synthetic_rows(n, LABELS, seed=n)):
            width, height = sizes[rng.integers(len(sizes))]
            row.update(split=split, width=width, height=height, mode=["RGB", "L"][int(rng.random() < 0.1)])
            rows.append(row)
    assert split_skew_warnings(pl.DataFrame(rows)) == []


def test_small_splits_need_evidence_not_just_a_ratio():
    # 5 of 50 train images are 512x512, the 10 val images have none: a ratio of infinity, but 10 draws at 10% say nothing
    rows = image_rows(45, "train") + image_rows(5, "train", (512, 512)) + image_rows(10, "val")
    assert split_skew_warnings(pl.DataFrame(rows)) == []
    assert split_skew_warnings(pl.DataFrame(rows), SkewConfig(max_p_value=0.5))  # the evidence threshold is what holds it back


def test_a_class_missing_from_one_split_is_flagged():
    rows = synthetic_rows(300, LABELS, seed=3)
    for row in rows:
        row["split"] = "val" if row["label"] != "street" and row["id"] < "img000100" else "train"
    cells = skew_summary(split_skew_warnings(pl.DataFrame(rows))).filter(pl.col("feature") == "label")
    assert cells.filter((pl.col("value") == "street") & (pl.col("other_split") == "val"))["other_count"].to_list() == [0]


# ---- duplicates ----------------------------------------------------------------------------------


def test_near_duplicate_groups_find_planted_copies_only():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 64))
    vectors[10] = vectors[3] + 0.01 * rng.normal(size=64)  # a near copy of 3
    vectors[20] = vectors[3] + 0.01 * rng.normal(size=64)  # and another: one group of three
    vectors[40] = vectors[7]  # an exact copy
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = near_duplicate_groups(vectors.astype(np.float32), threshold=0.95)
    assert [g.rows for g in groups] == [(3, 10, 20), (7, 40)]
    assert groups[1].min_similarity == pytest.approx(1.0, abs=1e-5)
    splits = np.array(["train"] * 300, dtype=object)
    splits[20] = "val"
    labels = np.array(["a"] * 300, dtype=object)
    labels[40] = "b"
    kinds = sorted(w.kind for w in duplicate_warnings(groups, splits, labels, np.array([f"{i}.png" for i in range(300)], dtype=object)))
    assert kinds == ["cross-split-duplicates", "label-conflict"]


# ---- precision-recall ----------------------------------------------------------------------------


def test_interpolated_precision_matches_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(20):
        relevant = rng.random(40) < 0.3
        if not relevant.any():
            continue
        curve = interpolated_precision(relevant)
        hits = np.cumsum(relevant)
        precision, recall = hits / np.arange(1, 41), hits / relevant.sum()
        expected = [max(precision[recall >= r]) for r in RECALL_GRID]
        np.testing.assert_allclose(curve, expected)
        # the area under the interpolated curve bounds the (non-interpolated) AP from above
        assert np.trapezoid(curve, RECALL_GRID) >= average_precision(relevant) - 0.02


# ---- embedding maps ------------------------------------------------------------------------------


def embedding_set(vectors: np.ndarray, labels: np.ndarray, split: str) -> EmbeddingSet:
    ids = np.array([f"{split}{i:04d}" for i in range(len(vectors))], dtype=object)
    return EmbeddingSet(ids, ids, labels, np.array([split] * len(vectors), dtype=object), vectors)


def test_map_is_fitted_once_then_read_from_the_cache(tmp_path):
    vectors = clustered_vectors(80, 16, clusters=4)
    labels = np.array([str(i % 4) for i in range(80)], dtype=object)
    catalogue, queries = embedding_set(vectors[:60], labels[:60], "train"), embedding_set(vectors[60:], labels[60:], "val")
    cache = ProjectionCache(tmp_path / "maps")
    config = MapConfig(method="pca", catalogue_sample=50, query_sample=10)
    first = embedding_map("m1", catalogue, queries, config, cache)
    second = embedding_map("m1", catalogue, queries, config, cache)
    assert not first.from_cache and second.from_cache
    np.testing.assert_array_equal(first.coordinates, second.coordinates)
    assert first.coordinates.shape == (60, 2) and first.is_query.sum() == 10
    assert not embedding_map("m2", catalogue, queries, config, cache).from_cache  # another model, another key
    with pytest.raises(ValueError, match="choose one of"):
        project(vectors, MapConfig(method="nope"))


@pytest.mark.slow
@pytest.mark.parametrize("method, points", [("umap", 200), ("tsne", 60)])
def test_projections_keep_clusters_apart(method, points):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32)) * 3
    labels = rng.integers(0, 4, points)
    vectors = centres[labels] + rng.normal(size=(points, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    coordinates = project(vectors, MapConfig(method=method, neighbours=10, perplexity=10))
    distances = ((coordinates[:, None] - coordinates[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(axis=1)] == labels).mean() > 0.95  # 2-D nearest neighbour keeps the class


# ---- the whole report on real images ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory, tiny_encoder):
    """The 120 shipped Fashion-MNIST samples (90 train / 30 val), one trained head; calibrated after a first look."""
    db = Database(tmp_path_factory.mktemp("reports") / "db")
    ingest_folder(db, SAMPLES, IngestConfig(split="train", holdout=0.25, seed=0), encoder=tiny_encoder)
    base = db.resolve_model()
    trained = train_head(db, base, TrainConfig(epochs=3, patience=10, head=HeadConfig(out_dim=16, hidden_dim=32)))
    uncalibrated = build_section(ReportContext(db, base, ReportConfig()), "distractors")
    calibrate_model(db, base, CalibrationConfig(folds=2))
    return db, base, trained, uncalibrated


def test_missing_calibration_is_a_note_not_a_failure(sample_db):
    _, base, _, uncalibrated = sample_db
    assert not uncalibrated.figures and f"lookalike calibrate --model {base.id}" in uncalibrated.notes[0]


def test_report_draws_every_figure_from_real_data(sample_db, tmp_path):
    db, base, trained, _ = sample_db
    config = ReportConfig(map=MapConfig(method="pca"), gallery_queries=4, worst_queries=3, k=4)
    report = build_report(db, base, config)
    sections = {s.key: s for s in report.sections}
    assert list(sections) == ["eda", "umap", "gallery", "pr", "curves", "distractors"]
    for section in report.sections:
        assert section.figures, f"{section.key}: {section.notes}"
        assert all(isinstance(figure.canvas, FigureCanvasAgg) for _, figure in section.figures)

    # the per-class table is the evaluation of the same splits
    catalogue = load_embeddings(db, base, "split = 'train'")
    queries = load_embeddings(db, base, "split = 'val'")
    expected = evaluate(queries.vectors, queries.labels, catalogue.vectors, catalogue.labels)
    per_class = dict(sections["pr"].tables)["per class"].sort("label")
    assert per_class["label"].to_list() == expected.per_class["label"].to_list() and per_class["queries"].sum() == 30
    for column in ("P@1", "P@5", "mAP@5", "mAP"):
        np.testing.assert_allclose(per_class[column].to_numpy(), expected.per_class[column].to_numpy(), err_msg=column)
    overall = dict(sections["pr"].tables)["overall"].row(0, named=True)
    assert overall["mAP@5"] == pytest.approx(expected.map_at_5) and overall["P@1"] == pytest.approx(expected.p_at_1)

    # the gallery shows k results per query, worst first by AP
    worst = dict(sections["gallery"].tables)["worst queries"]
    assert worst.height == 3 and all(len(r.split()) == 4 for r in worst["results"])
    assert worst["AP"].to_list() == sorted(worst["AP"].to_list())

    # the trained head's curves come from its stored history
    versions = dict(sections["curves"].tables)["trained versions"]
    assert versions.filter(pl.col("model") == trained.model.id)["epochs"].item() == trained.epochs_run

    # recomputed calibration scores are the ones the stored threshold was chosen on
    calibration = latest_calibration(db, base)
    scores = calibration_scores(*load_split(db.embeddings(base), calibration.catalogue_where), calibration)
    assert roc_auc(scores.scores, scores.is_distractor) == pytest.approx(calibration.auroc)

    files = write_report(report, tmp_path / "out")
    pngs = [f for f in files if f.suffix == ".png"]
    assert len(pngs) == sum(len(s.figures) for s in report.sections)
    for path in pngs:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 100
    page = (tmp_path / "out" / "index.html").read_text()
    embedded = re.findall(r'src="data:image/(png|jpeg);base64,([^"]+)"', page)
    assert len(embedded) == len(pngs)
    for kind, data in embedded:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format.lower() == kind  # JPEG only where it halves a photo gallery; line plots stay PNG
    assert len(page) < sum(path.stat().st_size for path in pngs) * 4 / 3 + len(page.split("<img")[0]) + 100_000
    assert "per class" in page and base.id in page


def test_one_plot_as_png_bytes_for_the_console(sample_db):
    db, base, _, _ = sample_db
    section, pngs = plot_pngs(db, "pr", base.id)
    assert sorted(pngs) == ["confusion", "metrics", "pr_curves"]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs.values())
    assert dict(section.tables)["overall"]["queries"].item() == 30
    with pytest.raises(ValueError, match="choose one of"):
        plot_pngs(db, "histogram", base.id)


def test_cli_report_and_plot(sample_db, tmp_path, capsys):
    db = sample_db[0]
    assert main(["report", "--db", db.uri, "--out", str(tmp_path / "r"), "--map-method", "pca", "--gallery", "2", "--worst", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 10 figures" in out and (tmp_path / "r" / "index.html").is_file()
    assert main(["plot", "eda", "--db", db.uri, "--out", str(tmp_path / "p")]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["eda-distributions.png", "eda-near_duplicates.png"]
    assert main(["plot", "nonsense", "--db", db.uri]) == 2
    assert "choose one of ['eda', 'umap'" in capsys.readouterr().err
