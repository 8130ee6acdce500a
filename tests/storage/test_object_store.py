"""The same database on S3-compatible object storage: a moto S3 server on loopback, started here.

Ingest, search under a filter, re-ingest and CLI commands against ``s3://`` give what a local folder
gives; credentials come from the environment or the storage config and never show in logs or reprs.
"""

from __future__ import annotations

import logging
import shutil
import socket

import numpy as np
import pytest

from engine.search.config import SearchConfig
from engine.search.searcher import Searcher
from engine.storage.database import Database
from engine.storage.location import StorageConfigError, artifacts_dir, is_object_store, resolve_storage_options
from ingest.pipeline import ingest_folder
from tests.support.db_rows import assert_same_rows
from tests.support.paths import CORPUS, QUERIES, SAMPLES

moto_server = pytest.importorskip("moto.server", reason="moto[server] comes with the test extra: pip install -e '.[test]'")
boto3 = pytest.importorskip("boto3", reason="boto3 comes with moto[server] in the test extra")

BUCKET = "lookalike-test"
SECRET = "not-a-real-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 with one empty bucket."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key=SECRET).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch, tmp_path):
    """Credentials and endpoint in the environment, as a user would set them; an empty config file."""
    empty_config = tmp_path / "storage.toml"
    empty_config.write_text("")
    for name, value in {
        "LOOKALIKE_STORAGE_CONFIG": str(empty_config), "LOOKALIKE_S3_ENDPOINT": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
        "LOOKALIKE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    return s3_endpoint


@pytest.fixture
def small_folder(tmp_path):
    """8 shipped samples of two classes and one broken file."""
    folder = tmp_path / "catalogue"
    for label in ("bag", "sandal"):
        (folder / label).mkdir(parents=True)
        for path in sorted((SAMPLES / label).glob("*.png"))[:4]:
            shutil.copy(path, folder / label / path.name)
    shutil.copy(CORPUS / "bad" / "truncated.jpg", folder / "bag" / "truncated.jpg")
    return folder


def s3_uri(request) -> str:
    return f"s3://{BUCKET}/{request.node.name}/db"


# ---- storage options ---------------------------------------------------------------------------------


def test_options_come_from_the_config_file_with_bucket_overrides_and_the_environment_wins(tmp_path):
    config = tmp_path / "storage.toml"
    config.write_text(
        'endpoint = "https://objects.example:9000"\nregion = "eu-west-1"\naccess_key_id = "AK"\nsecret_access_key = "file-secret"\n'
        '[buckets.local-bucket]\nendpoint = "http://127.0.0.1:9000"\n'
    )
    environ = {"LOOKALIKE_STORAGE_CONFIG": str(config)}
    options = resolve_storage_options("s3://other/db", environ).as_dict()
    assert options == {"aws_endpoint": "https://objects.example:9000", "aws_region": "eu-west-1",
                       "aws_access_key_id": "AK", "aws_secret_access_key": "file-secret"}
    local = resolve_storage_options("s3://local-bucket/db", environ).as_dict()
    assert (local["aws_endpoint"], local["allow_http"]) == ("http://127.0.0.1:9000", "true")  # http endpoint asked for explicitly
    environ.update(AWS_SECRET_ACCESS_KEY="env-secret", AWS_REGION="us-east-1", LOOKALIKE_S3_ALLOW_HTTP="0")
    overridden = resolve_storage_options("s3://local-bucket/db", environ)
    assert overridden.as_dict()["aws_secret_access_key"] == "env-secret"
    assert overridden.as_dict()["allow_http"] == "false"
    assert overridden.sources == (str(config), "environment")
    assert "env-secret" not in repr(overridden) and "AK" not in repr(overridden)


def test_bad_storage_configuration_is_refused_clearly(tmp_path):
    config = tmp_path / "storage.toml"
    config.write_text('endpoint = "x"\npassword = "y"\n')
    with pytest.raises(StorageConfigError, match="unknown storage option 'password'; valid options"):
        resolve_storage_options("s3://b/db", {"LOOKALIKE_STORAGE_CONFIG": str(config)})
    with pytest.raises(StorageConfigError, match="not a file"):
        resolve_storage_options("s3://b/db", {"LOOKALIKE_STORAGE_CONFIG": str(tmp_path / "missing.toml")})
    with pytest.raises(StorageConfigError, match="carries credentials") as refused:
        resolve_storage_options("s3://AKIA:hunter2@bucket/db", {})
    assert "hunter2" not in str(refused.value)
    with pytest.raises(StorageConfigError, match="query string") as refused:  # accepted and logged at -vv before
        resolve_storage_options("s3://bucket/db?secret_access_key=hunter2", {})
    assert "hunter2" not in str(refused.value)


def test_local_folders_need_no_options_and_keep_their_files_inside(tmp_path):
    assert not is_object_store(str(tmp_path)) and is_object_store("s3://b/db") and not is_object_store("file:///x")
    assert resolve_storage_options(str(tmp_path / "db"), {}).as_dict() == {}
    assert artifacts_dir(str(tmp_path / "db"), "heads", {}) == tmp_path / "db" / "heads"
    assert artifacts_dir("s3://b/some/db", "heads", {"LOOKALIKE_ARTIFACTS_DIR": str(tmp_path)}) == tmp_path / "s3" / "b" / "some" / "db" / "heads"


# ---- the same database on S3 ------------------------------------------------------------------------


def test_ingest_search_filter_and_reingest_on_s3_match_a_local_folder(request, s3_env, small_folder, tmp_path, tiny_encoder, caplog):
    caplog.set_level(logging.DEBUG)
    local = Database(tmp_path / "local-db")
    remote = Database(s3_uri(request))
    assert remote.is_object_store and SECRET not in repr(remote) and SECRET not in repr(remote.storage_options)

    local_report = ingest_folder(local, small_folder, encoder=tiny_encoder)
    remote_report = ingest_folder(remote, small_folder, encoder=tiny_encoder)
    assert (remote_report.encoded, remote_report.errors) == (local_report.encoded, local_report.errors) == (8, 1)
    assert_same_rows(local, remote)

    # a fresh connection sees the committed tables
    reopened = Database(s3_uri(request))
    assert_same_rows(local, reopened)
    queries = sorted(QUERIES.glob("*.png"))[:2]
    config = SearchConfig(k=3)
    found = {}
    for name, db in (("local", local), ("s3", reopened)):
        searcher = Searcher(db, config=config, encoder=tiny_encoder)
        vectors = searcher.encode_files(queries)
        found[name] = (searcher.search_vectors(vectors), searcher.search_vectors(vectors, where="label = 'sandal'"))
    for unfiltered_or_filtered in (0, 1):
        local_hits, s3_hits = found["local"][unfiltered_or_filtered], found["s3"][unfiltered_or_filtered]
        assert local_hits["image_id"].to_list() == s3_hits["image_id"].to_list()
        np.testing.assert_allclose(local_hits["distance"].to_numpy(), s3_hits["distance"].to_numpy(), atol=1e-5)
    assert set(found["s3"][1]["label"]) == {"sandal"} and found["s3"][1].height == 2 * 3

    again = ingest_folder(reopened, small_folder, encoder=tiny_encoder)
    assert (again.encoded, again.skipped, again.errors) == (0, 8, 1)
    assert_same_rows(local, reopened)
    assert SECRET not in caplog.text


def test_cli_commands_work_unchanged_against_s3(request, s3_env, small_folder, tiny_weights, capsys):
    from console.cli.main import main

    uri = s3_uri(request)
    tiny = ["--model", "test_efficientnet", "--weights", str(tiny_weights), "--device", "cpu", "--batch-size", "8"]
    assert main(["ingest", str(small_folder), "--split", "train", "--db", uri, *tiny]) == 0
    assert main(["info", "--db", uri]) == 0
    assert main(["errors", "--db", uri]) == 0
    query = sorted(QUERIES.glob("*.png"))[0]
    assert main(["search", str(query), "--db", uri, "-k", "2", "--where", "label = 'bag'", "--predict"]) == 0
    out = capsys.readouterr()
    assert "truncated" in out.out and "bag" in out.out  # the error row and a hit
    assert SECRET not in out.out + out.err

    # maintenance on the object store: every table compacted to its latest version only
    assert main(["optimize", "--db", uri, "--keep-versions-hours", "0"]) == 0
    db = Database(uri)
    for name in db.table_names():
        table = db.connection.open_table(name)
        assert len(table.list_versions()) == 1, name
        assert table.stats()["fragment_stats"]["num_fragments"] <= 1, name
    assert main(["optimize", "--db", uri, "--tables", "nope"]) == 2  # a clear error, nothing done


def test_a_head_trained_on_an_s3_database_keeps_its_weights_in_the_artifacts_folder(request, s3_env, small_folder, tiny_weights, tmp_path, capsys):
    from console.cli.main import main

    uri = s3_uri(request)
    tiny = ["--model", "test_efficientnet", "--weights", str(tiny_weights), "--device", "cpu", "--batch-size", "8"]
    assert main(["ingest", str(small_folder), "--holdout", "0.25", "--split", "train", "--db", uri, *tiny]) == 0
    assert main(["train", "--db", uri, "--dim", "16", "--hidden", "32", "--batch-size", "8", "--epochs", "2", "--activate"]) == 0
    trained = Database(uri).resolve_model()
    assert trained.parent is not None
    assert trained.weights_source.startswith(str(tmp_path / "artifacts" / "s3" / BUCKET))  # machine-local, per URI
    query = sorted(QUERIES.glob("*.png"))[0]
    assert main(["search", str(query), "--db", uri, "-k", "2"]) == 0  # queries go through the head
    assert "distance" in capsys.readouterr().out
