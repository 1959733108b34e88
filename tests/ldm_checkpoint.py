"""A diffusers Stable Diffusion 1.x pipeline written as one original-layout (LDM) checkpoint, as A1111 and
ComfyUI users have their bases: `model.diffusion_model.*` (the UNet, in LDM naming), `first_stage_model.*`
(the VAE) and `cond_stage_model.transformer.*` (the CLIP text encoder). Tests load it back with
`from_single_file`, offline, to prove that path on real weights."""

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


def _text(text: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"cond_stage_model.transformer.{te_path(text, name)}": tensor for name, tensor in text.state_dict().items()
            if not name.endswith("position_ids")}


def write_ldm_checkpoint(pipe, path: Path) -> Path:
    """Save `pipe`'s UNet, VAE and text encoder as one LDM-layout .safetensors file."""
    tensors = {**_unet(pipe.unet), **_vae(pipe.vae), **_text(pipe.text_encoder)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path
