"""Feature options of the bundled encoders, each alone, on one database's catalogue/query split.

For every variant the database's images are encoded again (the bundled Lite weights, CPU) and measured with
the product's metrics (exact k-NN, P@1 / P@5 / mAP@5 / mAP), queries = the ``val`` split, catalogue = ``train``:

- ``crop``: the encoder's own eval transform (resize, centre crop: Lite0 224 of 256, Lite2 260 of 292)
- ``full``: the whole image at its stored size's short side (MIT: 256), no crop
- ``gem``: GeM pooling (p = 3) of the last feature map instead of the average
- ``multi``: GeM of the last two stages (the 1x1 head's map and the last block's), each normalised, joined

    python benchmarks/features.py --db /tmp/mit21/db --encoders efficientnet_lite0,efficientnet_lite2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.encoders.factory import create_encoder  # noqa: E402
from engine.evaluation.metrics import evaluate  # noqa: E402
from engine.media.decode import decode_image  # noqa: E402
from engine.storage.database import Database  # noqa: E402

GEM_P = 3.0
VARIANTS = ("crop", "full", "gem", "multi", "full-gem", "full-multi")


def gem(feature_map: torch.Tensor, p: float = GEM_P) -> torch.Tensor:
    return feature_map.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def features(encoder, images: list, variant: str, full_side: int) -> np.ndarray:  # noqa: ANN001
    model = encoder.model
    if variant.startswith("full"):
        import timm.data

        config = dict(encoder.data_config, input_size=(3, full_side, full_side), crop_pct=1.0)
        transform = timm.data.create_transform(**config, is_training=False)
    else:
        transform = encoder.transform
    pooled = variant.removeprefix("full-") if variant.startswith("full-") else ("avg" if variant in ("crop", "full") else variant)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), 32):
            batch = torch.stack([transform(im) for im in images[start : start + 32]])
            x = model.conv_stem(batch)
            x = model.bn1(x)
            stages = []
            for block in model.blocks:
                x = block(x)
                stages.append(x)
            head = model.bn2(model.conv_head(x))
            if pooled == "avg":
                out = head.mean(dim=(2, 3))
            elif pooled == "gem":
                out = gem(head)
            else:  # multi
                parts = [torch.nn.functional.normalize(gem(head), dim=1), torch.nn.functional.normalize(gem(stages[-1].abs()), dim=1)]
                out = torch.cat(parts, dim=1)
            chunks.append(torch.nn.functional.normalize(out, dim=1).numpy())
    return np.concatenate(chunks).astype(np.float32)


def main(argv: list[str] | None = None) -> pl.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--encoders", default="efficientnet_lite0")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--full-side", type=int, default=256)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "features.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    images_frame = Database(args.db, read_only=True).images_frame(columns=["id", "path", "label", "split"]).filter(pl.col("label").is_not_null()).sort("id")
    images = [decode_image(Path(p).read_bytes()).image for p in images_frame["path"]]
    labels = images_frame["label"].to_list()
    catalogue = (images_frame["split"] == "train").to_numpy()
    queries = (images_frame["split"] == "val").to_numpy()
    rows = []
    for name in args.encoders.split(","):
        encoder = create_encoder(name)
        for variant in args.variants.split(","):
            started = time.perf_counter()
            vectors = features(encoder, images, variant, args.full_side)
            seconds = time.perf_counter() - started
            result = evaluate(vectors[queries], [label for label, q in zip(labels, queries) if q], vectors[catalogue], [label for label, c in zip(labels, catalogue) if c])
            row = {"encoder": name, "variant": variant, "dim": vectors.shape[1], "P@1": round(result.p_at_1, 4), "P@5": round(result.p_at_5, 4),
                   "mAP@5": round(result.map_at_5, 4), "mAP": round(result.mean_ap, 4), "encode_ms_per_image": round(1000 * seconds / len(images), 1),
                   "queries": result.queries, "catalogue": result.catalogue}
            print(row, flush=True)
            rows.append(row)
    frame = pl.DataFrame(rows)
    frame.write_csv(args.out)
    print(frame)
    return frame


if __name__ == "__main__":
    main()
