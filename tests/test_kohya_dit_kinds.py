"""LyCORIS kinds in kohya's original Flux.1 / SD3 layouts (`--network_module lycoris.kohya`): LoHa, LoKr, full
weights and DoRA on fused layers (qkv, linear1) read exactly onto diffusers' split modules. Each tiny
transformer's output equals the one of a copy whose split weights got the fused delta by hand (LyCORIS' formulas
in float64, rows cut by part), header-only reads (`inspect`) list the same parts and kinds, and LyCORIS' own
modules on a fused Linear agree with the split layers vislora loads from their state dict."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import vislora
from dit_models import run, tiny
import kohya_files
from kohya_files import module_parts, with_dora
from vislora.errors import AdapterFormatError
from vislora.formats import container, kohya
from vislora.functional.dora import EPS
from vislora.tools.inspect import describe

# kohya name -> the diffusers layers it fuses, in row order (adaLN names: (shift, scale), diffusers' swapped)
LAYERS = {
    "Flux.1": {
        "lora_unet_double_blocks_0_img_attn_qkv": [f"transformer_blocks.0.attn.to_{p}" for p in "qkv"],
        "lora_unet_double_blocks_1_txt_attn_qkv": [f"transformer_blocks.1.attn.add_{p}_proj" for p in "qkv"],
        "lora_unet_single_blocks_0_linear1": [f"single_transformer_blocks.0.attn.to_{p}" for p in "qkv"]
        + ["single_transformer_blocks.0.proj_mlp"],
        "lora_unet_double_blocks_0_img_attn_proj": ["transformer_blocks.0.attn.to_out.0"],
        "lora_unet_final_layer_adaLN_modulation_1": ["norm_out.linear"],
    },
    "SD3": {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": [f"transformer_blocks.0.attn.to_{p}" for p in "qkv"],
        "lora_unet_joint_blocks_0_x_block_attn2_qkv": [f"transformer_blocks.0.attn2.to_{p}" for p in "qkv"],
        "lora_unet_joint_blocks_1_context_block_attn_qkv": [f"transformer_blocks.1.attn.add_{p}_proj" for p in "qkv"],
        "lora_unet_joint_blocks_0_x_block_mlp_fc1": ["transformer_blocks.0.ff.net.0.proj"],
        "lora_unet_joint_blocks_2_context_block_adaLN_modulation_1": ["transformer_blocks.2.norm1_context.linear"],
    },
}
# kohya_files.module_parts kinds (LoKr: W1 whole, W2 low rank / W1 low rank too / both whole), "+dora": with a
# magnitude per output row (LyCORIS >= 3.2)
KINDS = ["loha", "lokr", "lokr_both", "lokr_full", "full", "lora+dora", "loha+dora", "lokr+dora"]


def _swap(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]])


def _fused(model, parts: list[str], swap: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The original layer's weight and bias (float64, the original's row order) from diffusers' parts."""
    layers = [model.get_submodule(p) for p in parts]
    w, b = torch.cat([m.weight for m in layers]).double(), torch.cat([m.bias for m in layers]).double()
    return (_swap(w), _swap(b)) if swap else (w, b)


def _delta(parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LyCORIS' delta weight (times alpha / rank) and bias delta of one module's file parts, in float64."""
    p = {k: v.double() for k, v in parts.items()}
    alpha = float(p["alpha"]) if "alpha" in p else None
    if "lora_up.weight" in p:
        return p["lora_up.weight"] @ p["lora_down.weight"] * alpha / p["lora_down.weight"].shape[0], None
    if "hada_w1_a" in p:
        return (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"]) * alpha / \
            p["hada_w1_b"].shape[0], None
    if "diff" in p:
        return p["diff"], p.get("diff_b")
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
    rank = p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else None
    return torch.kron(w1, w2) * (alpha / rank if rank else 1.0), None


def _file(tmp_path, family: str, kind: str):
    """A kohya file with `kind` on every layer of LAYERS[family], and the tiny model with its deltas applied by
    hand: (file path, expected model, file tensors)."""
    model, expected = tiny(family), tiny(family)
    base, dora = kind.partition("+")[::2]
    kohya_files._gen.manual_seed(3)  # the same factors whichever tests ran before
    tensors = {}
    for name, parts in LAYERS[family].items():
        swap = "adaLN" in name
        weight, bias = _fused(model, parts, swap)
        file_parts = {k: v if k == "alpha" else 2 * v for k, v in module_parts(base, tuple(weight.shape), 2).items()}
        if dora:
            file_parts = with_dora(file_parts, weight.float(), "out")
        tensors.update({f"{name}.{k}": v for k, v in file_parts.items()})
        delta, delta_b = _delta(file_parts)
        new = weight + delta
        if dora:
            new = new * file_parts["dora_scale"].double() / (torch.linalg.vector_norm(new, dim=1, keepdim=True) + EPS)
        new_b = bias if delta_b is None else bias + delta_b
        if swap:
            new, new_b = _swap(new), _swap(new_b)
        rows = [expected.get_submodule(p).weight.shape[0] for p in parts]
        with torch.no_grad():
            for p, w, b in zip(parts, new.split(rows), new_b.split(rows)):
                expected.get_submodule(p).weight.copy_(w)
                expected.get_submodule(p).bias.copy_(b)
    path = container.write(tmp_path / f"{family}-{kind}.safetensors", tensors,
                           {"ss_network_module": "lycoris.kohya"})
    return path, expected, tensors


@pytest.mark.parametrize("family", ["Flux.1", "SD3"])
@pytest.mark.parametrize("kind", KINDS)
def test_lycoris_kinds_on_fused_layers_load_as_the_fused_delta_split_by_hand(tmp_path, family, kind):
    path, expected, tensors = _file(tmp_path, family, kind)
    want = run(expected, family)
    assert (want - run(tiny(family), family)).abs().max() > 1e-2
    model = tiny(family)
    report = vislora.load_adapter(model, path)
    assert not report.unmatched
    assert (run(model, family) - want).abs().max() < 1e-5
    # inspect's header-only read lists the same split modules and kinds as a full read
    modules = kohya.read(tensors, {}, str(path)).modules
    parts = sum(len(p) for p in LAYERS[family].values())
    assert len(modules) == parts and describe(path)["kinds"] == dict(Counter(w.kind for w in modules.values()))
    assert describe(path)["dora"] == (parts if "+" in kind else 0)
    # tiny files' tensors all come with the header; a large file's factors are meta tensors (shapes only, alphas
    # read): the same parts
    meta = kohya.read({k: v if v.dim() == 0 else torch.empty(v.shape, dtype=v.dtype, device="meta")
                       for k, v in tensors.items()}, {}, "x")
    assert {n: (w.kind, {f: t.shape for f, t in w.factors.items()}) for n, w in meta.modules.items()} == \
        {n: (w.kind, {f: t.shape for f, t in w.factors.items()}) for n, w in modules.items()}
    # each part keeps the file's kind, but for LoKr where a part's rows cut W2's bands (linear1: 16 of 14-row
    # bands): there each part is the exact full-weight difference
    lokr_linear1 = family == "Flux.1" and kind.startswith("lokr")
    straddles = [f"single_transformer_blocks_0_{p}" for p in ("attn_to_q", "attn_to_k", "attn_to_v", "proj_mlp")]
    for name, w in modules.items():
        fallback = lokr_linear1 and name.endswith(tuple(straddles))
        assert w.kind == ("full" if fallback else kind.partition("+")[0].partition("_")[0]), name
    # written back in the same layout: the file's tensors, bit for bit, where every part kept its kind (LoKr
    # with both sides whole has no rank: its alpha is read, and written, as 1)
    again, _ = kohya.write(kohya.read(tensors, {}, str(path)))
    if not lokr_linear1:
        assert again.keys() == tensors.keys()
        assert all(torch.equal(again[k], tensors[k]) for k in tensors if not (kind == "lokr_full" and "alpha" in k))
    fresh = tiny(family)
    vislora.load_adapter(fresh, container.write(tmp_path / "again.safetensors", again))
    assert (run(fresh, family) - want).abs().max() < 1e-5


def test_dora_per_input_column_on_a_fused_layer_is_refused_and_elsewhere_loads(tmp_path):
    model = tiny("Flux.1")
    tensors = {}
    for name, parts in list(LAYERS["Flux.1"].items())[2:4]:  # linear1 (fused), attn_proj
        weight, _ = _fused(model, parts, False)
        file_parts = with_dora(module_parts("loha", tuple(weight.shape), rank=2), weight.float(), "in")
        tensors.update({f"{name}.{k}": v for k, v in file_parts.items()})
    with pytest.raises(AdapterFormatError, match="per input column") as e:
        vislora.load_adapter(model, container.write(tmp_path / "in.safetensors", tensors))
    assert e.value.category == "unsupported-kind" and "linear1" in str(e.value)
    proj = {k: v for k, v in tensors.items() if "attn_proj" in k}
    vislora.load_adapter(model, container.write(tmp_path / "proj.safetensors", proj))
    assert (run(model, "Flux.1") - run(tiny("Flux.1"), "Flux.1")).abs().max() > 1e-3


@pytest.mark.parametrize("parts", [
    {"hada_w1_a": (48, 2), "hada_w1_b": (2, 16), "hada_w2_a": (40, 2), "hada_w2_b": (2, 16)},  # rows disagree
    {"lokr_w1": (5, 4), "lokr_w2_a": (7, 2), "lokr_w2_b": (2, 4)},  # kron of 35 rows, qkv has 48
    {"lora_down.weight": (2, 16), "lora_up.weight": (48, 2), "dora_scale": (40, 1)},
], ids=["loha", "lokr", "dora"])
def test_malformed_factors_on_a_fused_layer_are_a_shape_error(parts):
    tensors = {f"lora_unet_double_blocks_0_img_attn_qkv.{k}": torch.randn(v) for k, v in parts.items()}
    with pytest.raises(AdapterFormatError) as e:
        kohya.read(tensors, {}, "x")
    assert e.value.category == "shape-mismatch"


def test_other_kinds_fuse_on_writing_only_where_one_module_has_their_effect(tmp_path):
    """Split LoHa parts trained apart share no factors: no one LoHa is their sum, so kohya names refuse them
    (--to lycoris keeps them); full weights always stack."""
    model = tiny("Flux.1")
    vislora.inject(model, ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_v"], linear="loha",
                   rank=2, init="random")
    with pytest.raises(ValueError, match="do not share.*--to lycoris"):
        vislora.save_adapter(model, tmp_path / "k.safetensors", format="kohya")
    model = tiny("Flux.1")
    vislora.inject(model, ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_v"], linear="full",
                   init="random")
    out = run(model, "Flux.1")
    tensors, _ = container.read(vislora.save_adapter(model, tmp_path / "full.safetensors", format="kohya"))
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.diff"].shape == (48, 16)
    fresh = tiny("Flux.1")
    vislora.load_adapter(fresh, tmp_path / "full.safetensors")
    assert (run(fresh, "Flux.1") - out).abs().max() < 1e-5


# -- LyCORIS' own modules on the fused layer ----------------------------------------------------------------
lycoris_modules = pytest.importorskip("lycoris.modules")
MODULES = {"loha": ("LohaModule", {}), "lokr": ("LokrModule", {}), "full": ("FullModule", {}),
           "dora": ("LoConModule", dict(weight_decompose=True, wd_on_out=True)),
           "loha+dora": ("LohaModule", dict(weight_decompose=True, wd_on_out=True))}


@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("name", ["lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"])
def test_lycoris_module_on_the_fused_layer_equals_the_split_layers_loaded(tmp_path, kind, name):
    model = tiny("Flux.1")
    parts = LAYERS["Flux.1"][name]
    weight, bias = _fused(model, parts, False)
    fused = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    cls, options = MODULES[kind]
    module = getattr(lycoris_modules, cls)(name, fused, 1.0, lora_dim=2, alpha=3, **options)
    module.apply_to()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p_name, p in module.named_parameters():
            if p_name == "dora_scale":
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            elif p_name == "weight":  # FullModule's trained weight: the diff is its change
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    x = torch.randn(5, weight.shape[1], generator=g)
    with torch.no_grad():
        want = fused(x)
    tensors = {f"{name}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    vislora.load_adapter(model, container.write(tmp_path / "ly.safetensors", tensors))
    with torch.no_grad():
        ours = torch.cat([model.get_submodule(p)(x) for p in parts], dim=-1)
        base = torch.nn.functional.linear(x, weight.float(), bias.float())
    assert (want - base).abs().max() > 1e-3  # LyCORIS' module changes the layer
    assert (ours - want).abs().max() < 1e-5
