"""`--to lycoris`: the kohya/LyCORIS layout (kohya.py reads both), with diffusion transformers named as LyCORIS'
wrapper names a diffusers transformer: `lycoris_transformer_blocks_0_attn_to_q`, one module per diffusers
layer, so LoHa, LoKr and DoRA on Flux's and SD3's q, k, v are written as they are (kohya's original names fuse
q, k and v, which only plain LoRA survives exactly). SimpleTuner's LyCORIS files look so; ComfyUI reads them.
Every other model is written exactly as kohya.py writes it."""

from __future__ import annotations

import torch

from . import kohya
from .adapter import AdapterFile

FORMAT = "lycoris"


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return False  # kohya.py reads these files


def write(adapter: AdapterFile) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return kohya.write(adapter, dit_naming="lycoris")
