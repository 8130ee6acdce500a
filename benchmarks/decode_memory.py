"""Peak memory of one hostile image through decode and the model's preprocessing, each in a fresh process.

Files that pass the decoder's pixel limit but cost memory: a near-bomb 16-bit PNG (9400x9400, just under
~89 Mpx) and extreme aspect ratios (200000x1, 20000x1, 30000x20) whose resize to the model's short side
would explode; a 256x256 photo-sized image is the baseline. Peak RSS (``ru_maxrss``) above the process's
baseline after imports, and what happened (decoded, or the error row's reason):

    python benchmarks/decode_memory.py
    python benchmarks/decode_memory.py --quick     # the small files only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from common import write_and_show
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NEAR_BOMB_SIDE = 9400  # 88.4 Mpx: under Pillow's 89.5 Mpx decompression-bomb limit
CHILD = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from timm.data import resolve_model_data_config
import timm, torch
from engine.encoders.factory import SizeGuard, resize_short_side
from engine.media.decode import DecodeError, decode_image
from timm.data import create_transform
model = timm.create_model("test_efficientnet", pretrained=False)
config = dict(resolve_model_data_config(model))
transform = SizeGuard(create_transform(**config, is_training=False), resize_short_side(config))
data = open(sys.argv[2], "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    tensor = transform(decode_image(data).image)
    outcome = "decoded, tensor " + "x".join(map(str, tensor.shape))
except DecodeError as error:
    outcome = "error row: " + str(error)[:90]
print(json.dumps({"peak_mb_above_baseline": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024), "outcome": outcome}))
"""


def make_files(folder: Path, quick: bool) -> dict[str, Path]:
    files = {}
    for name, size in {"photo 256x256": (256, 256), "strip 200000x1": (200_000, 1), "strip 20000x1": (20_000, 1), "panorama 30000x20": (30_000, 20)}.items():
        path = folder / (name.split()[0] + "_" + name.split()[1] + ".png")
        Image.new("RGB", size, (90, 140, 200)).save(path)
        files[name] = path
    if not quick:
        ramp = (np.arange(NEAR_BOMB_SIDE * NEAR_BOMB_SIDE, dtype=np.uint32) % 65536).astype(np.uint16).reshape(NEAR_BOMB_SIDE, NEAR_BOMB_SIDE)
        path = folder / "near_bomb_16bit.png"
        Image.fromarray(ramp).save(path)
        files[f"16-bit {NEAR_BOMB_SIDE}x{NEAR_BOMB_SIDE}"] = path
    return files


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "decode_memory.csv")
    parser.add_argument("--quick", action="store_true", help="the small files only, no CSV")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in make_files(Path(tmp), args.quick).items():
            done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(path)], capture_output=True, text=True, check=True)
            row = {"file": name, "bytes": path.stat().st_size, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(row, flush=True)
    return write_and_show(pl.DataFrame(rows), None if args.quick else args.out, 100)


if __name__ == "__main__":
    main()
