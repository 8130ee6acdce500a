"""Where a database lives: a local folder or an object store (``s3://bucket/path``), and how to reach it.

Object-store credentials and endpoints come from the environment or from a TOML config file, never
from the command line, and are never logged: :class:`StorageOptions` redacts secrets in its ``repr``.

Environment (wins over the file):

* ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` (or
  ``AWS_DEFAULT_REGION``), ``AWS_ENDPOINT_URL``;
* ``LOOKALIKE_S3_ENDPOINT`` (e.g. ``http://127.0.0.1:9000`` for MinIO), ``LOOKALIKE_S3_ALLOW_HTTP`` (``1``/``true``).

Config file: ``$LOOKALIKE_STORAGE_CONFIG`` or ``~/.config/lookalike/storage.toml``::

    endpoint = "https://minio.internal:9000"     # keys at top level apply to every bucket
    region = "us-east-1"
    access_key_id = "..."
    secret_access_key = "..."

    [buckets.my-bucket]                          # per-bucket overrides
    endpoint = "http://127.0.0.1:9000"
    allow_http = true

Files that belong to a database but are not tables (FAISS graphs, report caches, head and masker
weights, training checkpoints) live in its folder when it is local. On an object store they go to a
local folder instead: ``$LOOKALIKE_ARTIFACTS_DIR/<scheme>/<bucket>/<path>`` (default
``~/.cache/lookalike/artifacts``); point that variable at a shared file system when several machines
train or search against one object-store database.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from engine.core.errors import StorageConfigError

logger = logging.getLogger(__name__)

CONFIG_ENV = "LOOKALIKE_STORAGE_CONFIG"
DEFAULT_CONFIG = Path("~/.config/lookalike/storage.toml")
ARTIFACTS_ENV = "LOOKALIKE_ARTIFACTS_DIR"
DEFAULT_ARTIFACTS = Path("~/.cache/lookalike/artifacts")

# Friendly option names (config file) -> LanceDB / object_store option keys.
OPTION_KEYS = {
    "endpoint": "aws_endpoint",
    "region": "aws_region",
    "access_key_id": "aws_access_key_id",
    "secret_access_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "allow_http": "allow_http",
}
SECRET_KEYS = frozenset({"aws_secret_access_key", "aws_session_token", "aws_access_key_id"})

# Environment variable -> friendly option name; later entries win (LOOKALIKE_* over AWS_*).
ENV_OPTIONS = (
    ("AWS_DEFAULT_REGION", "region"),
    ("AWS_REGION", "region"),
    ("AWS_ENDPOINT_URL", "endpoint"),
    ("AWS_ACCESS_KEY_ID", "access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
    ("AWS_SESSION_TOKEN", "session_token"),
    ("LOOKALIKE_S3_ENDPOINT", "endpoint"),
    ("LOOKALIKE_S3_ALLOW_HTTP", "allow_http"),
)


@dataclass(frozen=True)
class StorageOptions:
    """Options for opening an object-store database; ``repr`` and :meth:`redacted` hide secrets."""

    values: Mapping[str, str] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # where they came from ("environment", a file path): safe to log

    def __repr__(self) -> str:
        return f"StorageOptions({self.redacted()!r}, sources={self.sources!r})"

    def redacted(self) -> dict[str, str]:
        return {key: ("***" if key in SECRET_KEYS else value) for key, value in self.values.items()}

    def as_dict(self) -> dict[str, str]:
        return dict(self.values)


def is_object_store(uri: str) -> bool:
    """Whether ``uri`` names an object store (``s3://``, ``gs://``, ``az://``...) rather than a local folder."""
    scheme = urlsplit(str(uri)).scheme
    return "://" in str(uri) and scheme not in ("", "file")


def check_uri(uri: str) -> None:
    """Refuse credentials embedded in a URI (user-info or query string): they would end up in shell history,
    logs and process lists."""
    parts = urlsplit(uri)
    if is_object_store(uri) and (parts.query or parts.fragment):
        raise StorageConfigError(
            f"database URI {parts.scheme}://{parts.netloc}{parts.path}?<redacted> carries a query string, which may hold credentials "
            f"and is not a storage option; put options in the environment or in {DEFAULT_CONFIG} instead"
        )
    if is_object_store(uri) and "@" in parts.netloc:
        raise StorageConfigError(
            f"database URI {urlsplit(uri).scheme}://<redacted>@... carries credentials; put them in the environment "
            f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or in {DEFAULT_CONFIG} instead"
        )


def _normalise(raw: Mapping[str, object], where: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in raw.items():
        if name not in OPTION_KEYS:
            raise StorageConfigError(f"{where}: unknown storage option {name!r}; valid options: {sorted(OPTION_KEYS)}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        text = str(value).strip()
        if name == "allow_http":
            text = "true" if text.lower() in ("1", "true", "yes", "on") else "false"
        options[OPTION_KEYS[name]] = text
    return options


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(CONFIG_ENV) or DEFAULT_CONFIG).expanduser()


def _from_file(path: Path, bucket: str) -> dict[str, str]:
    try:
        parsed = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise StorageConfigError(f"storage config {path} is not valid TOML: {exc}") from None
    buckets = parsed.pop("buckets", {})
    if not isinstance(buckets, dict):
        raise StorageConfigError(f"storage config {path}: [buckets] must be a table of bucket names")
    options = _normalise(parsed, str(path))
    options.update(_normalise(buckets.get(bucket, {}), f"{path} [buckets.{bucket}]"))
    return options


def resolve_storage_options(uri: str, environ: Mapping[str, str] | None = None) -> StorageOptions:
    """The options to open ``uri`` with: the config file, overridden by the environment. Empty for local folders."""
    check_uri(uri)
    if not is_object_store(uri):
        return StorageOptions()
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    sources: list[str] = []
    path = config_path(environ)
    if path.is_file():
        values.update(_from_file(path, urlsplit(uri).netloc))
        sources.append(str(path))
    elif CONFIG_ENV in environ:
        raise StorageConfigError(f"${CONFIG_ENV} names {path}, which is not a file")
    from_env = {name: environ[var] for var, name in ENV_OPTIONS if environ.get(var)}
    if from_env:
        values.update(_normalise(from_env, "environment"))
        sources.append("environment")
    if values.get("aws_endpoint", "").startswith("http://") and "allow_http" not in values:
        values["allow_http"] = "true"  # a plain-http endpoint was asked for explicitly
    options = StorageOptions(values, tuple(sources))
    logger.debug("storage options for %s: %r", uri, options)
    return options


def artifacts_dir(uri: str, name: str, environ: Mapping[str, str] | None = None) -> Path:
    """A local folder for the database's non-table files (weights, caches) called ``name``.

    Local databases keep them in their own folder; object-store databases in a local folder per
    URI under ``$LOOKALIKE_ARTIFACTS_DIR`` (files there are not on the object store).
    """
    if not is_object_store(uri):
        return Path(uri) / name
    environ = os.environ if environ is None else environ
    parts = urlsplit(uri)
    base = Path(environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS).expanduser()
    return base / parts.scheme / parts.netloc / parts.path.strip("/") / name
