"""A diffusers Stable Diffusion pipeline written as one original-layout (LDM) checkpoint, as A1111 and ComfyUI
users have their bases: `model.diffusion_model.*` (the UNet, in LDM naming), `first_stage_model.*` (the VAE),
and `cond_stage_model.transformer.*` (SD 1.x's CLIP text encoder) or, for SDXL,
`conditioner.embedders.0.transformer.*` and `conditioner.embedders.1.model.*` (the second in OpenCLIP naming).
Tests load it back with `from_single_file`, offline, to prove that path on real weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from vislora.formats.kohya_names import ldm_path, ldm_prefixes, te_path

# VAE resnet and mid-attention children -> their LDM names.
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP = {"conv_norm_out": "norm_out"}


def _unet(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefixes = ldm_prefixes(unet)
    out = {}
    for name, tensor in unet.state_dict().items():
        module, param = name.rsplit(".", 1)
        path = ldm_path(module, prefixes)
        assert path is not None, f"no LDM name for {name}"
        out[f"model.diffusion_model.{path}.{param}"] = tensor
    return out


def _vae_path(name: str, ups: int) -> str:
    """`decoder.up_blocks.0.resnets.1.conv1.weight` -> `decoder.up.2.block.1.conv1.weight` (LDM counts the
    decoder's levels from the bottom, diffusers from the top)."""
    parts = name.split(".")
    side, rest = parts[0], parts[1:]
    if rest[0] in ("down_blocks", "up_blocks"):
        level = int(rest[1]) if rest[0] == "down_blocks" else ups - 1 - int(rest[1])
        head = [rest[0][:-len("_blocks")], str(level)]
        if rest[2] == "resnets":
            child = _VAE_RESNET.get(rest[4], rest[4])
            return ".".join([side, *head, "block", rest[3], child, *rest[5:]])
        sampler = "downsample" if rest[2] == "downsamplers" else "upsample"
        return ".".join([side, *head, sampler, *rest[4:]])
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return ".".join([side, "mid", f"block_{int(rest[2]) + 1}", *rest[3:]])
        tail = ".".join(rest[3:])
        for new, old in _VAE_ATTENTION.items():
            if tail.startswith(new + "."):
                return ".".join([side, "mid", "attn_1", old, tail[len(new) + 1:]])
    if side in ("encoder", "decoder"):
        return ".".join([side, _VAE_TOP.get(rest[0], rest[0]), *rest[1:]])
    return name  # quant_conv, post_quant_conv


def _vae(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    ups = len(vae.decoder.up_blocks)
    out = {}
    for name, tensor in vae.state_dict().items():
        path = _vae_path(name, ups)
        if ".mid.attn_1." in path and path.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convs
        out[f"first_stage_model.{path}"] = tensor
    return out


def _text(text: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """An HF CLIP text model under `prefix` (its own names, from `text_model.`)."""
    return {f"{prefix}{te_path(text, name)}": tensor for name, tensor in text.state_dict().items()
            if not name.endswith("position_ids")}


# HF CLIP -> OpenCLIP names inside a layer; q/k/v are fused into in_proj.
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def _open_clip(text: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder as its original checkpoints hold it: OpenCLIP names, fused q/k/v, and the
    projection as a [hidden, projection] matrix."""
    sd = {te_path(text, k): v for k, v in text.state_dict().items() if not k.endswith("position_ids")}
    out = {"positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
           "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
           "text_projection": sd.pop("text_projection.weight").T}
    for part in ("weight", "bias"):
        out[f"ln_final.{part}"] = sd.pop(f"text_model.final_layer_norm.{part}")
    layers = text.config.num_hidden_layers
    for n in range(layers):
        head = f"text_model.encoder.layers.{n}."
        for part in ("weight", "bias"):
            out[f"transformer.resblocks.{n}.attn.in_proj_{part}"] = torch.cat(
                [sd.pop(f"{head}self_attn.{x}_proj.{part}") for x in "qkv"])
            for hf, oc in _OPEN_CLIP_LAYER.items():
                out[f"transformer.resblocks.{n}.{oc}.{part}"] = sd.pop(f"{head}{hf}.{part}")
    assert not sd, f"not written: {sorted(sd)}"
    return {prefix + k: v for k, v in out.items()}


def write_ldm_checkpoint(pipe, path: Path) -> Path:
    """Save `pipe`'s UNet, VAE and text encoder(s) as one LDM-layout .safetensors file (SD 1.x, or SDXL's
    `conditioner.embedders.0/1` when it has two encoders)."""
    tensors = {**_unet(pipe.unet), **_vae(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is None:
        tensors.update(_text(pipe.text_encoder, "cond_stage_model.transformer."))
    else:
        tensors.update(_text(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        tensors.update(_open_clip(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path
