"""2-D maps of a model's embeddings: catalogue coloured by class, queries overlaid.

Projections come from a registry (``umap``, ``tsne``, ``pca``). UMAP's first fit in a process pays
for numba's JIT compilation, so fitted coordinates are cached on disk, keyed by the model, the exact
sample of image ids and the projection parameters: a report re-run draws the map without refitting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from engine.core.errors import ReportError
from engine.core.registry import Registry
from engine.reports.common import class_colours, new_figure
from engine.reports.data import EmbeddingSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapConfig:
    """Which projection, on how many points, with which parameters."""

    method: str = "umap"
    catalogue_sample: int = 2000
    query_sample: int = 500
    seed: int = 0
    neighbours: int = 15  # UMAP n_neighbors
    min_dist: float = 0.1  # UMAP
    perplexity: float = 30.0  # t-SNE (lowered automatically for tiny samples)


Projector = Callable[[np.ndarray, MapConfig], np.ndarray]
PROJECTORS: Registry[Projector] = Registry("projection")


def register_projector(name: str, description: str) -> Callable[[Projector], Projector]:
    return PROJECTORS.register(name, description)


def list_projectors() -> dict[str, str]:
    return PROJECTORS.describe()


def create_projector(name: str) -> Projector:
    """A projection by name; the error names the valid choices."""
    return PROJECTORS.get(name)


@register_projector("umap", "UMAP (umap-learn), cosine metric; slow first fit (numba JIT), cached")
def _umap(vectors: np.ndarray, config: MapConfig) -> np.ndarray:
    import umap  # imported here: importing umap-learn compiles numba code and takes seconds

    neighbours = max(2, min(config.neighbours, len(vectors) - 1))
    reducer = umap.UMAP(n_neighbors=neighbours, min_dist=config.min_dist, metric="cosine", random_state=config.seed, n_jobs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value")  # a seed means one thread; that is the point
        return reducer.fit_transform(vectors)


@register_projector("tsne", "t-SNE (scikit-learn), cosine metric, PCA initialisation")
def _tsne(vectors: np.ndarray, config: MapConfig) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(config.perplexity, max(2.0, (len(vectors) - 1) / 3))
    return TSNE(perplexity=perplexity, metric="cosine", init="pca", random_state=config.seed).fit_transform(vectors)


@register_projector("pca", "the first two principal components (fast, linear)")
def _pca(vectors: np.ndarray, config: MapConfig) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T


def project(vectors: np.ndarray, config: MapConfig) -> np.ndarray:
    """2-D coordinates of ``vectors`` with the configured projection."""
    if len(vectors) < 3:
        raise ReportError(f"an embedding map needs at least 3 points, got {len(vectors)}")
    return np.asarray(create_projector(config.method)(np.asarray(vectors, np.float32), config), dtype=np.float32)


class ProjectionCache:
    """Fitted 2-D coordinates on disk, one ``.npy`` per key, written atomically."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(model_id: str, image_ids: np.ndarray, config: MapConfig) -> str:
        blob = json.dumps([model_id, [str(i) for i in image_ids], asdict(config)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        return np.load(path) if path.is_file() else None

    def put(self, key: str, coordinates: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{key}.tmp.npy"
        np.save(tmp, coordinates)
        tmp.replace(self.path(key))


@dataclass(frozen=True)
class EmbeddingMap:
    """Projected points of one model: catalogue sample then query sample."""

    model_id: str
    method: str
    coordinates: np.ndarray  # (n, 2)
    labels: np.ndarray
    is_query: np.ndarray  # (n,) bool
    from_cache: bool


def embedding_map(model_id: str, catalogue: EmbeddingSet, queries: EmbeddingSet | None, config: MapConfig = MapConfig(),
                  cache: ProjectionCache | None = None) -> EmbeddingMap:
    """Project a seeded sample of the catalogue together with a sample of the queries (cached)."""
    catalogue = catalogue.sample(config.catalogue_sample, config.seed)
    queries = queries.sample(config.query_sample, config.seed) if queries is not None else None
    ids = np.concatenate([catalogue.ids, queries.ids]) if queries is not None else catalogue.ids
    vectors = np.concatenate([catalogue.vectors, queries.vectors]) if queries is not None else catalogue.vectors
    labels = np.concatenate([catalogue.labels, queries.labels]) if queries is not None else catalogue.labels
    is_query = np.arange(len(ids)) >= len(catalogue)
    key = ProjectionCache.key(model_id, ids, config)
    coordinates = cache.get(key) if cache else None
    from_cache = coordinates is not None and len(coordinates) == len(ids)
    if not from_cache:
        logger.info("projecting %d points of %s with %s", len(ids), model_id, config.method)
        coordinates = project(vectors, config)
        if cache:
            cache.put(key, coordinates)
    return EmbeddingMap(model_id, config.method, coordinates, labels, is_query, from_cache)


def embedding_map_figure(maps: list[EmbeddingMap], columns: int = 2) -> Figure:
    """One panel per model version: catalogue points coloured by class, queries as outlined markers."""
    if not maps:
        raise ReportError("no embedding maps to draw")
    colours = class_colours([str(name) for m in maps for name in m.labels])
    columns = min(columns, len(maps))
    rows = int(np.ceil(len(maps) / columns))
    figure = new_figure(7.5 * columns, 6.5 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis, emap in zip(axes, maps):
        labels = np.asarray([str(name) for name in emap.labels])
        point_colours = np.array([colours[name] for name in labels]) if len(labels) else np.zeros((0, 4))
        cat = ~emap.is_query
        axis.scatter(emap.coordinates[cat, 0], emap.coordinates[cat, 1], s=7, c=point_colours[cat], alpha=0.55, linewidths=0)
        axis.scatter(emap.coordinates[~cat, 0], emap.coordinates[~cat, 1], s=16, c=point_colours[~cat], marker="^",
                     edgecolors="black", linewidths=0.4, alpha=0.85)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"{emap.model_id}\n{emap.method}: {int(cat.sum())} catalogue (dots), {int((~cat).sum())} queries (triangles)", fontsize=9)
    for axis in axes[len(maps):]:
        axis.set_axis_off()
    handles = [Line2D([], [], marker="o", linestyle="", color=colour, label=cls) for cls, colour in colours.items()]
    figure.legend(handles=handles, loc="outside right center", fontsize=9, title="class")
    return figure
