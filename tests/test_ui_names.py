"""The rules ComfyUI and AUTOMATIC1111 use to place a kohya file's tensors, checked on the files vislora writes
for whole SD1.5- and SDXL-shaped pipelines (docs/readme/uis.md says how they were read from the UIs' sources).

Written independently of vislora.formats.kohya_names, so a slip there cannot hide here:
  * a UNet key is `lora_unet_` + a module path with "." -> "_". SD1 files use diffusers paths (ComfyUI maps
    them through its diffusers->LDM table; A1111 rewrites them to LDM names with block-index arithmetic that
    assumes the SD1 layout); SDXL files use the SGM/LDM path itself (both UIs just swap the prefix).
  * a text-encoder key is `lora_te[1|2]_text_model_encoder_layers_<i>_<sublayer>` with sublayer one of the six
    CLIP projections; nothing else of a text encoder has a name in either UI. A1111 folds SDXL's second
    encoder's q/k/v into OpenCLIP's single in_proj and only patches a layer when q, k, v and out all come.
  * per module: only parts the UIs read, one positive scalar alpha, and the patch
        LoRA/LoCon  up.flatten(1) @ down.flatten(1) * alpha / down.shape[0]
        LoHa        (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / w1_b.shape[0]
        LoKr        kron(w1, w2_a @ w2_b) * alpha / w2_b.shape[0]   (scale 1 when no side is factored)
    reshaped to the weight, equals vislora's own merge.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import vislora
from sd_models import clip, sd15_unet, sdxl_unet

UI_PARTS = {"alpha", "lora_down.weight", "lora_up.weight", "lora_mid.weight",
            *(f"hada_{p}" for p in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")),
            *(f"lokr_{p}" for p in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2"))}
CLIP_SUBLAYERS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                  "mlp_fc1", "mlp_fc2")
TE_NAME = re.compile(r"lora_te([12]?)_text_model_encoder_layers_(\d+)_(" + "|".join(CLIP_SUBLAYERS) + ")")
RESNET_LDM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}


def mangled(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def _inner(kind: str, rest: str) -> str:
    """A resnet child takes its LDM name; attention internals keep diffusers' names."""
    if kind != "resnets":
        return rest
    head, _, tail = rest.partition(".")
    return ".".join(filter(None, [RESNET_LDM[head], tail]))


def ldm_path(path: str, up_attention: list[bool]) -> str:
    """The LDM/SGM path of a diffusers UNet module, for UNets with two resnets per down level and three per up
    level (SD1.x, SD2.x, SDXL): three input_blocks indices per level, three output_blocks per level."""
    rules = {
        r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)":
            lambda b, kind, j, rest: f"input_blocks.{1 + 3 * b + j}.{int(kind == 'attentions')}.{_inner(kind, rest)}",
        r"down_blocks\.(\d+)\.downsamplers\.0\.conv": lambda b: f"input_blocks.{3 * b + 3}.0.op",
        r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)":
            lambda kind, j, rest: f"middle_block.{1 if kind == 'attentions' else 2 * j}.{_inner(kind, rest)}",
        r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)":
            lambda b, kind, j, rest: f"output_blocks.{3 * b + j}.{int(kind == 'attentions')}.{_inner(kind, rest)}",
        r"up_blocks\.(\d+)\.upsamplers\.0\.conv":
            lambda b: f"output_blocks.{3 * b + 2}.{2 if up_attention[b] else 1}.conv",
    }
    for pattern, to in rules.items():
        m = re.fullmatch(pattern, path)
        if m:
            return to(*(int(g) if g.isdigit() else g for g in m.groups()))
    raise AssertionError(f"no LDM place for {path}")


def a1111_sd1_to_ldm(name: str) -> str:
    """A1111's rewrite of an SD1 diffusers-style kohya UNet name to its LDM module name (its arithmetic
    hard-codes SD1's layout: up_blocks.0 has no attention)."""
    pattern = r"lora_unet_(down_blocks|mid_block|up_blocks)_((?:\d+_)?)(attentions|resnets|downsamplers|upsamplers)_(\d+)_(.+)"
    m = re.fullmatch(pattern, name)
    assert m, name
    where, block, kind, j, rest = m.groups()
    b, j = int(block[:-1] or 0), int(j)
    if kind in ("downsamplers", "upsamplers"):
        return mangled(f"input_blocks.{3 * b + 3}.0.op" if kind == "downsamplers"
                       else f"output_blocks.{3 * b + 2}.{2 if b > 0 else 1}.conv")
    rest = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
            "conv_shortcut": "skip_connection"}.get(rest, rest) if kind == "resnets" else rest
    index = {"down_blocks": 1 + 3 * b + j, "up_blocks": 3 * b + j, "mid_block": 1 if kind == "attentions" else 2 * j}
    slot = "" if where == "mid_block" else f"_{int(kind == 'attentions')}"
    return f"lora_unet_{'input_blocks' if where == 'down_blocks' else 'output_blocks' if where == 'up_blocks' else 'middle_block'}_{index[where]}{slot}_{rest}"


def weights(pipe) -> dict[tuple[str, str], torch.Tensor]:
    out = {}
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        root = getattr(pipe, comp, None)
        for path, mod in (root.named_modules() if root is not None else ()):
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                out[(comp, path)] = mod.weight.detach().clone()
    return out


def ui_tables(pipe, sgm: bool) -> dict[str, tuple[str, str]]:
    """Every name a UI gives a module of this pipeline -> (component, path); a name two modules share fails."""
    unet = pipe.unet
    up_attention = [bool(getattr(b, "attentions", None)) for b in unet.up_blocks]
    table: dict[str, tuple[str, str]] = {}

    def add(name, where):
        assert table.setdefault(name, where) == where, f"{name} names two modules"

    for path, mod in unet.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and path.startswith(("down_blocks", "mid_block", "up_blocks")):
            add(mangled(ldm_path(path, up_attention) if sgm else path), ("unet", path))
    encoders = ["text_encoder", "text_encoder_2"] if sgm else ["text_encoder"]
    for number, comp in enumerate(encoders, 1):
        root = getattr(pipe, comp)
        for path, mod in root.named_modules():
            m = re.search(r"layers\.(\d+)\.(self_attn\.\w+_proj|mlp\.fc[12])$", path)
            if m and isinstance(mod, nn.Linear):
                prefix = f"lora_te{number}" if sgm else "lora_te"
                add(f"{prefix}_text_model_encoder_layers_{m[1]}_{m[2].replace('.', '_')}", (comp, path))
    return table


def modules_of(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, _, part = key.partition(".")
        out.setdefault(name, {})[part] = t
    return out


def ui_delta(parts: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """The weight change both UIs compute from one module's parts (module docstring)."""
    p = {k: v.double() for k, v in parts.items()}
    if "lora_up.weight" in p:
        down = p["lora_down.weight"]
        assert "lora_mid.weight" not in p, "Tucker is not part of this check"
        return (p["lora_up.weight"].flatten(1) @ down.flatten(1)).reshape(shape) * p["alpha"] / down.shape[0]
    if "hada_w1_a" in p:
        w = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])
        return w.reshape(shape) * p["alpha"] / p["hada_w1_b"].shape[0]
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
    dim = p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else None
    scale = p["alpha"] / dim if dim else 1.0
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2).reshape(shape) * scale


def written(pipe, tmp_path, targets, **kw) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
    """The kohya file vislora writes for `targets` (random init), and the weights before and after merging."""
    before = weights(pipe)
    torch.manual_seed(0)
    vislora.inject(pipe, targets, rank=4, alpha=2.0, init="random", **kw)
    path = vislora.save_adapter(pipe, tmp_path / "ui.safetensors", format="kohya")
    vislora.merge(pipe)
    vislora.remove(pipe, keep_merged=True)
    return modules_of(load_file(str(path))), before, weights(pipe)


def check_file(modules, table, before, after) -> None:
    """Every module names one real module, carries only UI-read parts and a positive scalar alpha, and
    the UIs' patch reproduces vislora's merge."""
    unknown = sorted(n for n in modules if n not in table)
    assert not unknown, unknown[:5]
    assert len({table[n] for n in modules}) == len(modules)
    for name, parts in modules.items():
        assert set(parts) <= UI_PARTS, (name, sorted(set(parts) - UI_PARTS))
        assert parts["alpha"].dim() == 0 and float(parts["alpha"]) > 0, name
        where = table[name]
        change = after[where].double() - before[where].double()
        assert change.abs().max() > 1e-4, name  # the adapter does something, so equality below means something
        torch.testing.assert_close(ui_delta(parts, before[where].shape), change, rtol=1e-4, atol=1e-5, msg=name)


class Parts:
    """The adaptable components of a pipeline (what vislora reads of one), without VAE and scheduler."""

    def __init__(self, **parts: nn.Module) -> None:
        self.__dict__.update(parts)
        self.components = parts


def sd15() -> Parts:
    return Parts(unet=sd15_unet(), text_encoder=clip(32))


def sdxl() -> Parts:
    """SDXL's block layout (three levels, two resnets down, three up) with shallow transformer stacks."""
    return Parts(unet=sdxl_unet((1, 2, 2)), text_encoder=clip(32), text_encoder_2=clip(64, projection=True))


@pytest.fixture(scope="module")
def sd15_file(tmp_path_factory):
    pipe = sd15()
    return pipe, *written(pipe, tmp_path_factory.mktemp("sd15"), ["unet.all", "text.all"])


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    pipe = sdxl()
    return pipe, *written(pipe, tmp_path_factory.mktemp("sdxl"), ["unet.all", "text.all", "text2.all"])


def test_sd15_file_uses_diffusers_names_that_both_uis_place(sd15_file):
    pipe, modules, before, after = sd15_file
    table = ui_tables(pipe, sgm=False)
    check_file(modules, table, before, after)
    up_attention = [bool(getattr(b, "attentions", None)) for b in pipe.unet.up_blocks]
    unet = [n for n in modules if n.startswith("lora_unet_")]
    # attention, feed-forward, LoCon convs (resnets, samplers, proj_in/out) and the text encoder all present
    for piece in ("attn1_to_q", "attn2_to_out_0", "ff_net_2", "resnets_0_conv1", "conv_shortcut", "downsamplers",
                  "upsamplers", "proj_in", "time_emb_proj"):
        assert any(piece in n for n in unet), piece
    assert sum(n.startswith("lora_te_") for n in modules) == 6 * pipe.text_encoder.config.num_hidden_layers
    # A1111's rewrite of each SD1 name lands on the LDM name of the very module ComfyUI's table gives
    for name in unet:
        assert a1111_sd1_to_ldm(name) == mangled(ldm_path(table[name][1], up_attention)), name


def test_sdxl_file_uses_sgm_names_and_complete_te2_attention(sdxl_file):
    pipe, modules, before, after = sdxl_file
    check_file(modules, ui_tables(pipe, sgm=True), before, after)
    assert not any(n.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_mid_block", "lora_te_"))
                   for n in modules)
    for piece in ("input_blocks_4_1_transformer_blocks_1_attn2_to_k", "middle_block_1_transformer_blocks_1_ff_net_2",
                  "input_blocks_1_0_in_layers_2", "input_blocks_3_0_op", "output_blocks_2_2_conv",
                  "output_blocks_5_2_conv", "output_blocks_0_0_skip_connection", "output_blocks_8_0_emb_layers_1"):
        assert f"lora_unet_{piece}" in modules, piece
    te = [TE_NAME.fullmatch(n) for n in modules if n.startswith("lora_te")]
    assert all(te) and {m[1] for m in te} == {"1", "2"}
    layers = {(m[1], m[2]): set() for m in te}
    for m in te:
        layers[(m[1], m[2])].add(m[3])
    assert all(subs == set(CLIP_SUBLAYERS) for (enc, _), subs in layers.items() if enc == "2")


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_kinds_patch_as_the_uis_compute(kind, tmp_path):
    pipe = sd15()
    targets = ["unet.down_blocks.1.resnets.*", "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.*",
               "text.attn"]
    modules, before, after = written(pipe, tmp_path, targets, linear=kind, conv=kind)
    assert {p.split("_")[0] for parts in modules.values() for p in parts} - {"alpha"} == {
        "hada" if kind == "loha" else "lokr"}
    assert any(parts["alpha"].shape == () and len(before[ui_tables(pipe, False)[n]].shape) == 4
               for n, parts in modules.items())  # convs included
    check_file(modules, ui_tables(pipe, sgm=False), before, after)
