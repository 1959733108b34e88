"""Flux LoRA files in the layouts other tools write, made from vislora's kohya file of the same adapter: BFL's
original dotted names (`diffusion_model.` keys), and the full-size Flux.1-dev adapter diffusers' converters are
checked against (meta device for the model, real tensors for the adapters)."""

from __future__ import annotations

import re

import torch

from dit_models import full_size
from vislora.formats import ModuleWeights

# kohya's underscored layer name -> BFL's dotted module path (the rest of the name is the same)
_DOTTED = {"img_attn_qkv": "img_attn.qkv", "img_attn_proj": "img_attn.proj", "img_mlp_0": "img_mlp.0",
           "img_mlp_2": "img_mlp.2", "img_mod_lin": "img_mod.lin", "modulation_lin": "modulation.lin",
           "time_in_in_layer": "time_in.in_layer", "time_in_out_layer": "time_in.out_layer",
           "vector_in_in_layer": "vector_in.in_layer", "vector_in_out_layer": "vector_in.out_layer",
           "guidance_in_in_layer": "guidance_in.in_layer", "guidance_in_out_layer": "guidance_in.out_layer",
           "final_layer_linear": "final_layer.linear", "final_layer_adaLN_modulation_1": "final_layer.adaLN_modulation.1"}
_DOTTED.update({k.replace("img", "txt"): v.replace("img", "txt") for k, v in _DOTTED.items() if k.startswith("img_")})
PARTS = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}


def bfl_path(kohya_name: str) -> str:
    """`lora_unet_double_blocks_3_img_attn_qkv` -> `double_blocks.3.img_attn.qkv`."""
    local = kohya_name.removeprefix("lora_unet_")
    m = re.match(r"^(double|single)_blocks_(\d+)_(.+)$", local)
    if m:
        return f"{m[1]}_blocks.{m[2]}.{_DOTTED.get(m[3], m[3])}"
    return _DOTTED.get(local, local)


def comfy(kohya_tensors: dict[str, torch.Tensor], spelling: str = "lora_A") -> dict[str, torch.Tensor]:
    """A kohya Flux file's tensors under `diffusion_model.<BFL path>.lora_A.weight` (spelling "lora_A") or
    `.lora_down.weight` ("lora_down")."""
    out = {}
    for key, value in kohya_tensors.items():
        module, _, part = key.partition(".")
        part = PARTS.get(part, part) if spelling == "lora_A" else part
        out[f"diffusion_model.{bfl_path(module)}.{part}"] = value
    return out


FULL_PICKS = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v",
              "transformer_blocks.18.attn.add_q_proj", "transformer_blocks.18.attn.add_v_proj",
              "transformer_blocks.5.attn.to_out.0", "transformer_blocks.5.ff_context.net.0.proj",
              "transformer_blocks.7.norm1.linear", "single_transformer_blocks.0.attn.to_q",
              "single_transformer_blocks.0.attn.to_k", "single_transformer_blocks.0.attn.to_v",
              "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.37.proj_mlp",
              "single_transformer_blocks.37.proj_out", "norm_out.linear", "proj_out"]


def full_size_flux_adapter() -> dict[str, ModuleWeights]:
    """LoRAs of rank 1 to 4 on 16 modules of the full-size Flux.1-dev (fused qkv of both streams, a single
    block's linear1 with all four parts, projections, MLP, modulation, final layer), by `transformer.` path.
    Single block 0's linear1 parts share one scale, the rest another; the final layer's modules have scale 1
    (diffusers' converter reads final_layer_* without their alpha)."""
    model = full_size("Flux.1-dev")
    g = torch.Generator().manual_seed(0)
    modules = {}
    for i, p in enumerate(FULL_PICKS):
        out, inp = model.get_submodule(p).weight.shape
        rank = 1 + i % 4
        modules[f"transformer.{p}"] = ModuleWeights("lora", {"down": torch.randn(rank, inp, generator=g),
                                                             "up": torch.randn(out, rank, generator=g)}, rank, 2.0 * rank)
    for p in FULL_PICKS[8:12]:
        modules[f"transformer.{p}"].alpha = 0.5 * modules[f"transformer.{p}"].rank
    for p in FULL_PICKS[-2:]:
        modules[f"transformer.{p}"].alpha = float(modules[f"transformer.{p}"].rank)
    return modules


def delta(w: ModuleWeights) -> torch.Tensor:
    """scale * up @ down in float64."""
    return w.scale * w.factors["up"].double() @ w.factors["down"].double()


def sparse_kohya_flux(path, rank: int = 128) -> int:
    """A kohya Flux.1-dev LoRA at `rank` (bf16; rank 128 is about 1.2 GB, the largest Flux LoRAs shared) written
    as its header and a sparse, all-zero data section: made in milliseconds, valid to every header check.
    Returns its number of modules."""
    import json
    import struct

    from vislora.formats.kohya_flux import SECTIONS

    model = full_size("Flux.1-dev")
    header, offset = {}, 0
    for section in SECTIONS:
        group = section.kohya.partition("_blocks")[0].rpartition("_")[2]
        blocks = {"double": model.transformer_blocks, "single": model.single_transformer_blocks}.get(group, [None])
        for i in range(len(blocks)):
            for key, layer in section.layers.items():
                parts = [model.get_submodule(section.diffusers.format(i=i) + p) for p in layer.parts]
                name = section.kohya.format(i=i) + key
                for part, shape in (("lora_down.weight", [rank, parts[0].in_features]),
                                    ("lora_up.weight", [sum(p.out_features for p in parts), rank])):
                    size = 2 * shape[0] * shape[1]
                    header[f"{name}.{part}"] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
                    offset += size
    modules = len(header) // 2
    text = json.dumps({"__metadata__": {"modelspec.architecture": "flux-1-dev/lora"}, **header}).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)
    return modules
