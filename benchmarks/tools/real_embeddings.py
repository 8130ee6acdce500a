"""Embeddings of real images with the default encoder, cached for the scale benchmarks.

Encodes the MIT scene photos (``../shared/datasets/mit_scenes/train``) and a class-balanced slice of
Fashion-MNIST (Debian's ``dataset-fashion-mnist``) with Lookalike's default encoder, and saves each as
``<cache>/<name>.npy`` (float32, L2-normalised, one row per image, in a deterministic order).
``benchmarks/search.py --data real`` copies these rows with small seeded perturbations up to a million rows,
so the table has the distribution of real image embeddings.

    python benchmarks/tools/real_embeddings.py            # both sets, into ~/.cache/lookalike/bench
"""

from __future__ import annotations

import argparse
import gzip
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.encoders.config import EncoderConfig  # noqa: E402
from engine.encoders.factory import create_encoder  # noqa: E402
from engine.media.decode import decode_image  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "lookalike" / "bench"
MIT = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "mit_scenes" / "train"
FASHION = Path("/usr/share/datasets/fashion-mnist")
CHUNK = 256  # images decoded and encoded at a time: bounded memory

logger = logging.getLogger(__name__)


def mit_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.jpg"))


def fashion_images(per_class: int) -> np.ndarray:
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    return images[np.sort(rows)]


def encode_all(encoder, load, count: int, name: str) -> np.ndarray:
    out = np.empty((count, encoder.dim), np.float32)
    started = time.perf_counter()
    for start in range(0, count, CHUNK):
        stop = min(start + CHUNK, count)
        out[start:stop] = encoder.encode_images([load(i) for i in range(start, stop)])
        logger.info("%s: %d/%d encoded (%.1f images/s)", name, stop, count, stop / (time.perf_counter() - started))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--mit", type=Path, default=MIT)
    parser.add_argument("--fashion-per-class", type=int, default=700)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    encoder = create_encoder(EncoderConfig())
    paths = mit_images(args.mit)
    np.save(args.cache / "mit.npy", encode_all(encoder, lambda i: decode_image(paths[i].read_bytes()).image, len(paths), "mit"))
    fashion = fashion_images(args.fashion_per_class)
    np.save(args.cache / "fashion.npy", encode_all(encoder, lambda i: Image.fromarray(fashion[i]).convert("RGB"), len(fashion), "fashion"))


if __name__ == "__main__":
    main()
