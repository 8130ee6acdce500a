"""Retrieval quality: re-rankers, whitening, ensembles, TTA, DBA versions and multi-label metrics,
each against a naive implementation on seeded data, then wired through the database and the Searcher."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from engine.core.errors import EncoderMismatchError
from engine.encoders.ensembles import EnsembleConfig, concatenate_embeddings
from engine.encoders.tta import TTAConfig, TTAModel, crop_boxes
from engine.encoders.whitening import WhiteningConfig, fit_whitening
from engine.evaluation.compare import PipelineSpec, compare_pipelines, parse_pipelines, rank_catalogue
from engine.evaluation.metrics import evaluate, evaluate_ranking, exact_ranking
from engine.evaluation.multilabel import label_iou_at_k, vote_label_sets
from engine.search.config import SearchConfig
from engine.search.rerank import AugmentationConfig, Candidates, KReciprocalConfig, QueryExpansionConfig, create_reranker
from engine.search.searcher import Searcher
from engine.vectors.expansion import alpha_query_expansion, database_augmentation, k_reciprocal_distances
from engine.versions import encoder_for_model
from engine.versions.coverage import bring_in_step
from engine.versions.derived import DBAConfig, publish_derived, read_rows, vectors_of
from ingest import IngestConfig, scan_folder
from ingest.pipeline import ingest_files
from tests.support.paths import SAMPLES
from tests.support.synthetic import clustered_vectors, make_vector_model, synthetic_rows

LABELS = ["coast", "forest", "street", "mountain"]


# ---- naive references --------------------------------------------------------------------------------


def naive_alpha_qe(query, vectors, neighbours, alpha):
    similarities = [float(np.dot(query, v)) for v in vectors]
    nearest = sorted(range(len(vectors)), key=lambda i: (-similarities[i], i))[:neighbours]
    expanded = np.array(query, np.float64)
    for i in nearest:
        expanded += max(similarities[i], 0.0) ** alpha * vectors[i]
    return expanded / np.linalg.norm(expanded)


def naive_dba(vectors, neighbours, alpha):
    out = []
    for x in vectors:
        similarities = vectors @ x
        nearest = np.argsort(-similarities, kind="stable")[:neighbours]
        total = sum(max(similarities[j], 0.0) ** alpha * vectors[j].astype(np.float64) for j in nearest)
        out.append(total / np.linalg.norm(total))
    return np.array(out)


def naive_k_reciprocal(distance, k1, k2, lambda_value, probe=0):
    """Zhong et al. 2017 written with Python sets, one item at a time."""
    n = len(distance)
    ranks = [list(np.argsort(distance[i], kind="stable")) for i in range(n)]

    def reciprocal_set(i, k):
        return {j for j in ranks[i][: k + 1] if i in ranks[j][: k + 1]}

    weights = np.zeros((n, n))
    for i in range(n):
        base = reciprocal_set(i, k1)
        expanded = set(base)
        for c in base:
            half = reciprocal_set(c, int(round(k1 / 2)))
            if len(half & base) > 2 / 3 * len(half):
                expanded |= half
        for j in expanded:
            weights[i, j] = np.exp(-distance[i, j])
        weights[i] /= weights[i].sum()
    if k2 > 1:
        weights = np.array([weights[ranks[i][:k2]].mean(axis=0) for i in range(n)])
    final = np.zeros(n)
    for j in range(n):
        shared = sum(min(weights[probe, t], weights[j, t]) for t in range(n))
        union = sum(max(weights[probe, t], weights[j, t]) for t in range(n))
        final[j] = (1 - lambda_value) * (1 - shared / union) + lambda_value * distance[probe, j]
    return final


# ---- pure re-ranking functions --------------------------------------------------------------------


def test_alpha_query_expansion_matches_naive():
    vectors = clustered_vectors(80, 16, clusters=4, seed=1)
    query = clustered_vectors(1, 16, clusters=4, seed=2)[0]
    distances = 1 - vectors @ query
    for neighbours, alpha in [(1, 1.0), (5, 3.0), (20, 0.5)]:
        got = alpha_query_expansion(query, vectors, distances, neighbours, alpha)
        np.testing.assert_allclose(got, naive_alpha_qe(query, vectors, neighbours, alpha), atol=1e-5)


def test_database_augmentation_matches_naive_and_keeps_unit_norm():
    vectors = clustered_vectors(60, 12, clusters=3, seed=3)
    for neighbours, alpha in [(1, 3.0), (4, 3.0), (10, 1.0)]:
        got = database_augmentation(vectors, neighbours, alpha)
        np.testing.assert_allclose(got, naive_dba(vectors, neighbours, alpha), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(database_augmentation(vectors, 1, 3.0), vectors, atol=1e-6)  # only itself: unchanged


@pytest.mark.parametrize("k1,k2,lam", [(6, 3, 0.3), (10, 1, 0.0), (4, 4, 0.7)])
def test_k_reciprocal_matches_naive_sets(k1, k2, lam):
    items = clustered_vectors(40, 8, clusters=4, seed=k1)
    distance = np.clip(1 - items @ items.T, 0, None).astype(np.float64)
    np.testing.assert_allclose(k_reciprocal_distances(distance, k1, k2, lam), naive_k_reciprocal(distance, k1, k2, lam), atol=1e-9)
    np.testing.assert_allclose(k_reciprocal_distances(distance, k1, k2, lam, probe=7), naive_k_reciprocal(distance, k1, k2, lam, probe=7), atol=1e-9)


def test_stage_rerankers_equal_their_pure_functions_and_keep_the_tail_exact():
    vectors = clustered_vectors(300, 16, clusters=6, seed=4)
    query = clustered_vectors(1, 16, clusters=6, seed=5)[0]
    candidates = Candidates(np.arange(300) + 1000, vectors, np.zeros(300, np.float32))
    exact = 1 - vectors @ query
    order = np.argsort(exact, kind="stable")
    head = order[:50]

    qe = create_reranker("qe", QueryExpansionConfig(neighbours=5, alpha=3.0, depth=50))
    rows, distances = qe.rerank(query, candidates, 300)
    expanded = naive_alpha_qe(query, vectors[head], 5, 3.0)
    want = head[np.argsort(1 - vectors[head] @ expanded, kind="stable")]
    assert list(rows[:50]) == list(want + 1000)
    assert list(rows[50:]) == list(order[50:] + 1000)  # beyond the depth: exact order, exact distances
    np.testing.assert_allclose(distances[50:], exact[order[50:]], atol=1e-6)

    kr = create_reranker("k-reciprocal", KReciprocalConfig(k1=8, k2=3, lambda_value=0.3, depth=50))
    rows, distances = kr.rerank(query, candidates, 10)
    items = np.vstack([query, vectors[head]])
    matrix = np.clip(1 - items @ items.T, 0, None)
    final = naive_k_reciprocal(matrix, 8, 3, 0.3)[1:]
    assert list(rows) == list(head[np.argsort(final, kind="stable")][:10] + 1000)
    np.testing.assert_allclose(distances, np.sort(final)[:10], atol=1e-5)

    dba = create_reranker("dba", AugmentationConfig(neighbours=3, alpha=3.0, depth=50))
    rows, _ = dba.rerank(query, candidates, 10)
    augmented = naive_dba(vectors[head], 3, 3.0)
    assert list(rows) == list(head[np.argsort(1 - augmented @ query, kind="stable")][:10] + 1000)


def test_chained_stages_feed_each_other():
    vectors = clustered_vectors(200, 16, clusters=5, seed=6)
    query = clustered_vectors(1, 16, clusters=5, seed=7)[0]
    candidates = Candidates(np.arange(200), vectors, np.zeros(200, np.float32))
    configs = {"qe": QueryExpansionConfig(neighbours=4, depth=60), "k-reciprocal": KReciprocalConfig(k1=6, k2=2, depth=60)}
    chain = create_reranker("qe+k-reciprocal", configs=configs)
    assert chain.depth == 60
    rows, _ = chain.rerank(query, candidates, 10)
    head = np.argsort(1 - vectors @ query, kind="stable")[:60]
    expanded = naive_alpha_qe(query, vectors[head], 4, 3.0)
    items = np.vstack([query, vectors[head]])
    matrix = np.clip(1 - items @ items.T, 0, None)
    matrix[0, 1:] = matrix[1:, 0] = 1 - vectors[head] @ expanded  # k-reciprocal sees the expanded query's distances
    final = naive_k_reciprocal(matrix, 6, 2, 0.3)[1:]
    assert list(rows) == list(head[np.argsort(final, kind="stable")][:10])


def test_reranker_registry_errors_name_the_choices():
    with pytest.raises(ValueError, match="choose one of .*k-reciprocal"):
        create_reranker("rerank-harder")
    with pytest.raises(ValueError, match="only quality stages"):
        create_reranker("faiss+qe")
    with pytest.raises(TypeError, match="QueryExpansionConfig"):
        create_reranker("qe", KReciprocalConfig())
    with pytest.raises(ValueError, match="depth"):
        create_reranker("qe", QueryExpansionConfig(depth=0))


# ---- whitening, ensembles, TTA (pure) ----------------------------------------------------------------


def test_whitening_decorrelates_the_catalogue_and_matches_svd():
    rng = np.random.default_rng(8)
    vectors = rng.normal(size=(500, 10)) @ rng.normal(size=(10, 10)) + 3.0
    whitening = fit_whitening(vectors, WhiteningConfig(out_dim=6, power=0.5, epsilon=0.0))
    whitened = whitening.transform(vectors, normalise=False)
    np.testing.assert_allclose(np.cov(whitened.T, bias=True), np.eye(6), atol=1e-4)
    # the same subspace and scale as an SVD of the centred data
    centred = vectors - vectors.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:6].T / (singular[:6] / np.sqrt(len(vectors)))
    np.testing.assert_allclose(np.abs(whitened), np.abs(reference), atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(whitening.transform(vectors), axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        fit_whitening(vectors[:5], WhiteningConfig(out_dim=8))


def test_ensemble_similarity_is_the_weighted_mean_of_member_similarities():
    a, b = clustered_vectors(30, 8, 3, seed=9), clustered_vectors(30, 5, 3, seed=10)
    weights = np.array([2.0, 1.0])
    joined = concatenate_embeddings([a, b], weights)
    expected = (4 * (a @ a.T) + 1 * (b @ b.T)) / 5
    np.testing.assert_allclose(joined @ joined.T, expected, atol=1e-5)


def test_tta_model_averages_normalised_views():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    base.num_features = 4
    images = torch.randn(2, 3, 16, 16)
    norm = lambda x: torch.nn.functional.normalize(base(x), dim=1)  # noqa: E731
    got = TTAModel(base, TTAConfig(flip=True)).eval()(images)
    torch.testing.assert_close(got, (norm(images) + norm(torch.flip(images, dims=[3]))) / 2)
    scaled = TTAModel(base, TTAConfig(flip=False, scales=(1.0, 0.5)))(images)
    small = torch.nn.functional.interpolate(images, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(scaled, (norm(images) + norm(small)) / 2)
    assert crop_boxes(16, 16, 5, 0.5) == [(4, 4, 8, 8), (0, 0, 8, 8), (0, 8, 8, 8), (8, 0, 8, 8), (8, 8, 8, 8)]
    assert TTAConfig(flip=True, crops=5, scales=(1.0, 1.2)).views == 24
    with pytest.raises(ValueError, match="crops"):
        TTAConfig(crops=3)


# ---- multi-label ---------------------------------------------------------------------------------------


def _random_sets(rng, n, vocabulary):
    return [sorted(set(rng.choice(vocabulary, size=rng.integers(0, 4), replace=True).tolist())) for _ in range(n)]


def test_label_iou_at_k_matches_brute_force():
    rng = np.random.default_rng(11)
    vocabulary = ["coast", "forest", "dark", "bright", "blue", "green"]
    queries = _random_sets(rng, 25, vocabulary)
    retrieved = [_random_sets(rng, int(rng.integers(0, 8)), vocabulary) for _ in range(25)]
    for k in (1, 3, 5):
        scores = []
        for q, results in zip(queries, retrieved):
            per = [len(set(q) & set(r)) / len(set(q) | set(r)) if set(q) | set(r) else 0.0 for r in results[:k]]
            scores.append(sum(per) / len(per) if per else 0.0)
        assert label_iou_at_k(queries, retrieved, k) == pytest.approx(sum(scores) / len(scores))
    assert label_iou_at_k([["a", "b"]], [[["a", "b"], ["a"], ["c"]]], 3) == pytest.approx((1 + 0.5 + 0) / 3)


def test_vote_label_sets_matches_brute_force():
    rng = np.random.default_rng(12)
    vocabulary = ["coast", "forest", "dark", "bright"]
    for _ in range(20):
        sets = _random_sets(rng, 10, vocabulary)
        distances = rng.uniform(0, 1.2, size=10)
        weights = np.clip(1 - distances, 0, None)
        expected = {}
        for label in vocabulary:
            score = sum(w for w, s in zip(weights, sets) if label in s) / weights.sum()
            if score >= 0.4:
                expected[label] = score
        got = vote_label_sets(sets, distances, threshold=0.4)
        assert {label for label, _ in got} == set(expected)
        for label, score in got:
            assert score == pytest.approx(expected[label])
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


# ---- through the database --------------------------------------------------------------------------------


@pytest.fixture
def seeded(db):
    model = make_vector_model(db, dim=16)
    rows = synthetic_rows(400, LABELS)
    vectors = clustered_vectors(400, 16, clusters=8)
    db.write_embedded(model, rows, vectors)
    return db, model, rows, vectors


def test_searcher_with_quality_rerankers_matches_the_pure_path(seeded):
    db, model, rows, vectors = seeded
    queries = clustered_vectors(5, 16, clusters=8, seed=13)
    configs = {"k-reciprocal": KReciprocalConfig(k1=8, k2=3, depth=60)}
    searcher = Searcher(db, model, SearchConfig(k=10, reranker="k-reciprocal", reranker_configs=configs))
    result = searcher.search_vectors(queries)
    reranker = create_reranker("k-reciprocal", configs=configs)
    for q in range(5):
        positions, _ = reranker.rerank(queries[q], Candidates(np.arange(400), vectors, np.zeros(400, np.float32)), 10)
        assert result.filter(pl.col("query") == q)["image_id"].to_list() == [rows[i]["id"] for i in positions]


def test_evaluate_ranking_and_base_pipeline_equal_evaluate(seeded):
    db, model, rows, vectors = seeded
    is_val = np.array([r["split"] == "val" for r in rows])
    labels = np.array([r["label"] for r in rows], dtype=object)
    expected = evaluate(vectors[is_val], labels[is_val], vectors[~is_val], labels[~is_val])
    distances, indices = exact_ranking(vectors[is_val], vectors[~is_val])
    again = evaluate_ranking(distances, indices, labels[is_val], labels[~is_val])
    assert (again.p_at_1, again.p_at_5, again.map_at_5, again.mean_ap) == (expected.p_at_1, expected.p_at_5, expected.map_at_5, expected.mean_ap)
    _, ranked = rank_catalogue(create_reranker("faiss"), vectors[is_val], vectors[~is_val])
    assert (ranked[:, :5] == indices[:, :5]).mean() > 0.99  # ties aside, the same ranking
    frame = compare_pipelines(db, parse_pipelines("base,qe,k-reciprocal"), model.id)
    assert frame["pipeline"].to_list() == ["base", "qe", "k-reciprocal"]
    assert frame.row(0, named=True)["P@1"] == pytest.approx(expected.p_at_1)
    assert frame.row(0, named=True)["mAP"] == pytest.approx(expected.mean_ap, abs=1e-6)
    assert (frame["search_ms_per_query"] > 0).all()
    assert PipelineSpec.parse("qe+k-reciprocal@m+x-1") == PipelineSpec("qe+k-reciprocal@m+x-1", "qe+k-reciprocal", "m+x-1")


def test_whitening_and_dba_versions_are_stored_and_refreshed(seeded):
    db, model, rows, vectors = seeded
    train = np.array([r["split"] == "train" for r in rows])
    whitened = publish_derived(db, "whiten", [model], WhiteningConfig(out_dim=8))
    assert whitened.parent == model.id and whitened.dim == 8 and json.loads(whitened.notes)["derived"] == "whiten"
    stored = read_rows(db, whitened)
    position = {r["id"]: i for i, r in enumerate(rows)}
    order = [position[i] for i in stored.column("image_id").to_pylist()]
    expected = fit_whitening(vectors[train], WhiteningConfig(out_dim=8)).transform(vectors[order])
    np.testing.assert_allclose(vectors_of(stored), expected, atol=1e-5)
    assert publish_derived(db, "whiten", [model], WhiteningConfig(out_dim=8)).id == whitened.id  # idempotent

    dba = publish_derived(db, "dba", [model], DBAConfig(neighbours=4))
    stored = read_rows(db, dba)
    got = dict(zip(stored.column("image_id").to_pylist(), vectors_of(stored)))
    catalogue = vectors[train]
    augmented = database_augmentation(catalogue, 4, 3.0)
    train_ids = [r["id"] for r, t in zip(rows, train) if t]
    np.testing.assert_allclose(np.stack([got[i] for i in train_ids]), augmented, atol=1e-5)
    val_ids = [r["id"] for r, t in zip(rows, train) if not t]
    np.testing.assert_allclose(np.stack([got[i] for i in val_ids]), vectors[~train], atol=1e-6)  # queries stay raw

    more = synthetic_rows(420, LABELS)[400:]
    for r in more:
        r["id"] = r["id"].replace("img", "new")
    new_vectors = clustered_vectors(20, 16, clusters=8, seed=14)
    db.write_embedded(model, more, new_vectors)
    written = {c.model_id: c.written for c in bring_in_step(db)}
    assert written == {model.id: 0, whitened.id: 20, dba.id: 420}  # whitening: only the new rows; DBA: every row has new neighbours
    assert read_rows(db, whitened, with_vectors=False).num_rows == 420
    assert read_rows(db, dba, with_vectors=False).num_rows == 420


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory, tiny_encoder):
    from engine.storage.database import Database

    db = Database(tmp_path_factory.mktemp("quality") / "db")
    # three classes (36 images) keep the TTA re-encoding quick
    files = [f for f in scan_folder(SAMPLES, None, "train", 0.25, "val", 0) if f.labels[0] in {"ankle_boot", "bag", "coat"}]
    ingest_files(db, files, SAMPLES, IngestConfig(), encoder=tiny_encoder)
    return db


def _stored_vector(db, model, image_id):
    return Searcher(db, model).vectors_of([image_id])[0]


def test_derived_versions_embed_queries_exactly_like_the_catalogue(sample_db, tiny_encoder):
    db = sample_db
    base = db.resolve_model(tiny_encoder.model_id)
    image = db.images_frame(columns=["id", "path"]).sort("path").row(0, named=True)
    whitened = publish_derived(db, "whiten", [base], WhiteningConfig(out_dim=16, power=0.25))
    dba = publish_derived(db, "dba", [base], DBAConfig())
    tta = publish_derived(db, "tta", [base], TTAConfig(flip=True))
    ensemble = publish_derived(db, "ensemble", [base, whitened], EnsembleConfig(weights=(1.0, 0.5)))
    for version in (whitened, dba, tta, ensemble):
        searcher = Searcher(db, version)
        query = searcher.encode_files([image["path"]])[0]
        if version is dba:  # a query is embedded raw; the stored catalogue row is augmented
            np.testing.assert_allclose(query, _stored_vector(db, base, image["id"]), atol=1e-5)
        else:
            np.testing.assert_allclose(query, _stored_vector(db, version, image["id"]), atol=1e-5)
        assert searcher.search_files([image["path"]], k=1)["image_id"][0] == image["id"] or version is dba
    # DBA of an ensemble: queries are embedded by the ensemble's encoders
    ensemble_dba = publish_derived(db, "dba", [ensemble], DBAConfig())
    query = Searcher(db, ensemble_dba).encode_files([image["path"]])[0]
    np.testing.assert_allclose(query, _stored_vector(db, ensemble, image["id"]), atol=1e-5)
    # TTA differs from the plain encoder, and a plain encoder cannot query a derived version
    assert not np.allclose(_stored_vector(db, tta, image["id"]), _stored_vector(db, base, image["id"]), atol=1e-4)
    with pytest.raises(EncoderMismatchError):
        Searcher(db, dba, encoder=tiny_encoder)
    tampered = publish_derived(db, "whiten", [base], WhiteningConfig(out_dim=8))
    original = open(tampered.weights_source, "rb").read()
    np.savez(tampered.weights_source, mean=np.zeros(3), projection=np.zeros((3, 3)))
    with pytest.raises(EncoderMismatchError, match="changed"):
        encoder_for_model(db, tampered)
    open(tampered.weights_source, "wb").write(original)  # the module's database stays usable
    encoder_for_model(db, tampered)


def test_an_ensemble_of_heads_on_one_parent_runs_its_backbone_once_and_matches_the_stored_vectors(sample_db, tiny_encoder):
    from engine.media.decode import decode_image
    from engine.training import TrainConfig, train

    db = sample_db
    base = db.resolve_model(tiny_encoder.model_id)
    heads = [train(db, base, TrainConfig(method=method, epochs=2, catalogue_where="label IS NOT NULL")).model for method in ("arcface", "triplet")]
    ensemble = publish_derived(db, "ensemble", heads, EnsembleConfig())
    encoder = encoder_for_model(db, ensemble)
    backbones = {id(member.model.backbone) for member in encoder.members}
    assert len(backbones) == 1  # the resolver built the parent once
    calls = []
    hook = encoder.members[0].model.backbone.register_forward_hook(lambda *_: calls.append(1))
    image = db.images_frame(columns=["id", "path"]).sort("path").row(0, named=True)
    query = Searcher(db, ensemble, encoder=encoder).encode_files([image["path"]])[0]
    hook.remove()
    assert len(calls) == 1
    np.testing.assert_allclose(query, _stored_vector(db, ensemble, image["id"]), atol=1e-5)
    separately = [member.encode_images([decode_image(open(image["path"], "rb").read()).image]) for member in encoder.members]
    np.testing.assert_allclose(query, concatenate_embeddings(separately, np.ones(2))[0], atol=1e-5)


def test_cli_derives_versions_and_compares_pipelines(sample_db, capsys):
    from console.cli.main import main

    uri = sample_db.uri
    assert main(["whiten", "--db", uri, "--dim", "8", "--power", "0.25"]) == 0
    whitened = capsys.readouterr().out.split("whiten version ")[1].split()[0]
    assert main(["dba", "--db", uri, "--neighbours", "3"]) == 0
    assert main(["refresh", "--db", uri]) == 0
    assert main(["eval", "--db", uri, "--compare", f"base,qe,k-reciprocal,base@{whitened}", "-k", "5", "--format", "json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("[{"):])
    assert all(row["search_ms_per_query"] > 0 for row in rows) and whitened in out and "k-reciprocal" in out
    assert main(["eval", "--db", uri, "--compare", "bogus"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["ensemble", "--db", uri, whitened]) == 2  # one member is not an ensemble


def test_predict_label_sets_votes_over_stored_label_lists(db):
    from engine.evaluation.multilabel import predict_label_sets

    model = make_vector_model(db, dim=16)
    rows = synthetic_rows(200, LABELS)
    vectors = clustered_vectors(200, 16, clusters=4, seed=15)
    for i, r in enumerate(rows):  # a second, attribute label on every other image
        r["labels"] = [r["label"], "dark" if i % 2 else "bright"]
    db.write_embedded(model, rows, vectors)
    searcher = Searcher(db, model, SearchConfig(vote_neighbours=7))
    queries = clustered_vectors(3, 16, clusters=4, seed=16)
    got = predict_label_sets(searcher, queries, threshold=0.3)
    neighbours = searcher.search_vectors(queries, 7, columns=["labels"])
    for q in range(3):
        mine = neighbours.filter(pl.col("query") == q)
        expected = vote_label_sets(mine["labels"].to_list(), mine["distance"].to_numpy(), 0.3)
        assert got.filter(pl.col("query") == q).select("label", "score").rows() == expected
    assert got.height > 0
