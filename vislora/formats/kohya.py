"""kohya sd-scripts and LyCORIS files: `<kohya name>.<part>` keys, alpha per module, `ss_*` metadata.

Parts per module (formats spec sections 2-3; each kind declares its own as LYCORIS_PARTS in
vislora.functional), the kind chosen by which are present:
    lora_down.weight, lora_up.weight [, lora_mid.weight]    LoRA (Linear), LoCon (conv), Tucker LoCon
    hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b [, hada_t1, hada_t2]              LoHa
    lokr_w1 | lokr_w1_a + lokr_w1_b, lokr_w2 | lokr_w2_a + lokr_w2_b [, lokr_t2] LoKr
    diff [, diff_b]                                          full-weight difference
    alpha (0-dim; missing = the rank, scale 1), dora_scale (DoRA magnitude, either axis)
Module names stay as in the file until `resolve` matches them against a live model (kohya_names): the
underscored names cannot be inverted by string rules. Factors keep the file's shapes (a conv's LoHa and
LoKr `_b` factors flattened to [r, in * kh * kw]); `fit` gives them the model's shapes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from typing import Any

import torch
from torch import nn

from ..errors import AdapterFormatError
from ..functional import KINDS, complete, lokr
from . import container, kohya_dit, kohya_names
from .adapter import AdapterFile, ModuleWeights
from .arch import of_file
from .checks import matrix_factors
from .kohya_names import KOHYA_PREFIXES

FORMAT = "kohya"  # kohya and LyCORIS files are one layout (`lycoris` writes transformers LyCORIS' way)
component_of = kohya_names.component_of

# LyCORIS parts vislora recognises but does not apply, by the algorithm they belong to.
OTHER_ALGORITHMS = {"on_input": "IA3", "weight": "IA3", "oft_blocks": "OFT", "oft_diag": "OFT", "rescale": "OFT/BOFT",
                    "a1.weight": "GLoRA", "a2.weight": "GLoRA", "b1.weight": "GLoRA", "b2.weight": "GLoRA",
                    "bm.weight": "GLoRA", "w_norm": "norm", "b_norm": "norm", "scale": "A1111 absolute scale",
                    "bias": "LoRA bias"}


def _parts(kind: str) -> dict[str, str]:
    """factor -> file part, as the kind declares (none: the kind has no kohya/LyCORIS layout)."""
    return getattr(KINDS[kind], "LYCORIS_PARTS", {})


def _flat_in_files(kind: str, factors: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The factors LyCORIS stores flattened to 2-D for a conv (LoHa's and LoKr's `_b` factors)."""
    return getattr(KINDS[kind], "flat_in_files", lambda f: ())(factors)


def _rank(kind: str, factors: dict[str, torch.Tensor]) -> int | None:
    """The rank alpha is divided by, from shapes (never from metadata); None: scale 1 whatever alpha says."""
    return getattr(KINDS[kind], "file_rank", lambda f: None)(factors)


def split(key: str) -> tuple[str, str] | None:
    """(kohya module name, part) at the first dot, for keys with a kohya/LyCORIS prefix."""
    if not key.startswith(KOHYA_PREFIXES) or "." not in key:
        return None
    module, _, part = key.partition(".")
    return module, part


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return any(split(k) is not None for k in tensors)


def _kind(parts: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]] | None:
    """(kind, factors) of the first kind in KINDS whose parts hold all of these, complete, and that accepts
    the factors (LoRA a 2-D down, LoCon a 4-D one); None if there is none."""
    for kind, functions in KINDS.items():
        names = {part: factor for factor, part in _parts(kind).items()}
        if not set(parts) <= set(names):
            continue
        factors = {names[p]: t for p, t in parts.items()}
        if complete(functions, set(factors)) and getattr(functions, "accepts", lambda f: True)(factors):
            return kind, factors
    return None


def module_weights(name: str, parts: dict[str, torch.Tensor], path: str) -> ModuleWeights:
    """One module from its kohya/LyCORIS parts (`lora_down.weight`, `hada_w1_a`, `alpha`, ...): the kind the
    parts make, its factors, rank and alpha; unknown or mixed parts are an error naming them."""
    known = {part for kind in KINDS for part in _parts(kind).values()}
    unknown = sorted(p for p in parts if p not in known and p not in ("alpha", "dora_scale"))
    if unknown:
        algos = sorted({OTHER_ALGORITHMS.get(p, "unknown") for p in unknown})
        raise AdapterFormatError(f"module {name!r} has parts {unknown} ({', '.join(algos)}), which vislora does not "
                                 "apply; loading the rest would change the file's effect", path=path,
                                 category="unsupported-kind")
    factor_parts = {p: t for p, t in parts.items() if p not in ("alpha", "dora_scale")}
    if not any(set(factor_parts) <= set(_parts(k).values()) for k in KINDS):
        raise AdapterFormatError(f"module {name!r} has parts of {'several' if factor_parts else 'no'} adapter kinds: "
                                 f"{sorted(parts)}", path=path, category="incomplete")
    found = _kind(factor_parts)
    if found is None:
        raise AdapterFormatError(f"module {name!r} is incomplete: it has {sorted(parts)}", path=path,
                                 category="incomplete")
    kind, factors = found
    matrix_factors(name, factors, ("down", "up", "mid", "w1_a", "w1_b", "w2_a", "w2_b", "w1", "w2"), path)
    rank = _rank(kind, factors)
    alpha_t = parts.get("alpha")
    if alpha_t is not None and alpha_t.numel() != 1:
        raise AdapterFormatError(f"{name}.alpha has shape {list(alpha_t.shape)}; it must be a scalar", path=path,
                                 category="bad-alpha")
    alpha = float(alpha_t.float().reshape(-1)[0]) if alpha_t is not None else None
    if rank is None:  # LoKr with both sides whole, full weights: no rank, scale 1
        rank, alpha = 1, 1.0
    elif alpha is None:
        alpha = float(rank)  # no alpha: scale 1, as every consumer does
    w = ModuleWeights(kind, factors, rank, alpha)
    if "dora_scale" in parts:
        w.magnitude = parts["dora_scale"]
    return w


def read(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str, **options: Any) -> AdapterFile:
    """Modules by kohya name (resolved against a model by `resolve`). Keys that are not kohya/LyCORIS
    tensors are an error that lists them."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    leftovers = []
    for key, value in tensors.items():
        parsed = split(key)
        if parsed is None:
            leftovers.append(key)
            continue
        grouped.setdefault(parsed[0], {})[parsed[1]] = value
    if leftovers:
        raise AdapterFormatError(f"{len(leftovers)} keys are not kohya/LyCORIS tensors, e.g. {leftovers[:5]} "
                                 "(a file mixing naming schemes?)", path=path, category="unknown-keys")
    modules = {name: module_weights(name, parts, path) for name, parts in sorted(grouped.items())}
    modules = kohya_dit.read(modules, path, metadata)  # Flux / SD3 original names onto diffusers' split modules
    return AdapterFile(path, FORMAT, modules, {}, None, metadata)


def resolve(names: list[str], model: Any) -> dict[str, tuple[str, str]]:
    """{file module name: (component, path)} for the names the model has, in any naming (kohya_names)."""
    table = kohya_names.build(model).modules
    return {n: table[n] for n in names if n in table}


def write(adapter: AdapterFile, naming: str = "auto", dit_naming: str = "kohya"
          ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata in the kohya/LyCORIS layout. Module paths become kohya names: SD1/SD2 UNets in
    diffusers naming, SDXL UNets in SGM naming (naming="auto"; "diffusers" or "ldm" to choose), diffusion
    transformers in their original layout (dit_naming="kohya", fused layers fused) or as `lycoris_` diffusers
    paths ("lycoris", see kohya_dit.write), text encoders lora_te / lora_te1 / lora_te2, other models
    lycoris_. Names already in kohya form stay."""
    if adapter.extra:
        raise ValueError(f"kohya/LyCORIS files hold adapters only; the {len(adapter.extra)} full tensors "
                         f"(modules_to_save, e.g. {sorted(adapter.extra)[:3]}) would be lost; write vislora or peft")
    arch = of_file(adapter.modules)
    if naming == "auto":
        naming = "ldm" if arch.name == "SDXL" else "diffusers"
    ldm = kohya_names.ldm_prefixes(kohya_names.skeleton(
        kohya_names.SDXL_BLOCKS if arch.name == "SDXL" else kohya_names.SD_BLOCKS)) if naming == "ldm" else None
    has_te2 = any(p.startswith(("text_encoder_2.", "lora_te2_")) for p in adapter.modules)
    tensors: dict[str, torch.Tensor] = {}
    named: dict[str, ModuleWeights] = {}
    original = kohya_dit.write(adapter.modules, adapter.metadata, dit_naming)  # Flux / SD3: fused qkv, or lycoris_
    for path, w in (original or adapter.modules).items():
        name = path if split(path + ".x") else kohya_names.name_for(path, has_te2, ldm)
        if name in named:
            raise ValueError(f"two modules would both be written as {name!r}")
        factors, rank = w.plain() if w.slices else (dict(w.factors), w.rank)
        plain = ModuleWeights(w.kind, factors, rank, w.alpha * rank / w.rank if w.slices else w.alpha, w.rslora)
        plain.magnitude = w.magnitude
        named[name] = plain
        tensors.update(file_tensors(name, plain))
    meta = ss_metadata(named, arch.name) | kohya_dit.modelspec(adapter.modules, adapter.metadata)
    meta.update(addnet_hashes(tensors, meta))
    return tensors, meta


# -- fitting file shapes to a model's layer, and back -------------------------------------------------------
def fit(w: ModuleWeights, weight_shape: tuple[int, ...]) -> ModuleWeights:
    """The module with factors in vislora's shapes for a base weight of this shape (a new object; tensors
    are reshaped views, never changed): conv LoHa/LoKr `_b` factors unflattened, 1 x 1 conv LoRA factors on
    a Linear squeezed (SD1 files on SD2-style linear proj_in), 2-D factors on a 1 x 1 conv unsqueezed."""
    kind, factors = getattr(KINDS[w.kind], "fit", lambda f, shape: (w.kind, f))(dict(w.factors), weight_shape)
    if len(weight_shape) == 4:
        for name in _flat_in_files(kind, factors):
            kernel = weight_shape[2] * weight_shape[3]
            t = factors.get(name)
            if t is not None and t.dim() == 2 and t.shape[1] % kernel == 0:  # else the shape check reports it
                factors[name] = t.reshape(t.shape[0], t.shape[1] // kernel, *weight_shape[2:])
    out = ModuleWeights(kind, factors, w.rank, w.alpha, w.rslora, w.slices)
    out.magnitude = w.magnitude
    return out


def file_tensors(name: str, w: ModuleWeights) -> dict[str, torch.Tensor]:
    """The file tensors of one module in the kohya/LyCORIS layout (alpha as a positive 0-dim fp32 tensor)."""
    functions, parts = KINDS[w.kind], _parts(w.kind)
    if not parts:
        raise ValueError(f"{w.kind} adapters have no kohya/LyCORIS layout")
    factors = dict(w.factors)
    alpha = w.alpha * (w.rank ** 0.5 if w.rslora else 1.0)  # LyCORIS stores rsLoRA's alpha as alpha * sqrt(r)
    factors.update({n: factors[n].flatten(1) for n in _flat_in_files(w.kind, factors) if n in factors})
    if _rank(w.kind, factors) is None and w.scale != 1.0 and hasattr(functions, "carry_scale"):
        factors = functions.carry_scale(factors, w.scale)  # read back with scale 1: the kind carries it
    out = {f"{name}.{parts[f]}": t for f, t in factors.items()}
    if getattr(functions, "FILE_ALPHA", True):
        if not alpha > 0:
            raise ValueError(f"{name}: alpha {alpha} would disable the module in every consumer; kohya files "
                             "need alpha > 0")
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    if w.magnitude is not None:
        out[f"{name}.dora_scale"] = w.magnitude
    return out


# -- metadata -----------------------------------------------------------------------------------------------
BASE_VERSIONS = {"SD1.x": "sd_v1", "SD2.x": "sd_v2", "SDXL": "sdxl_base_v1-0"}


def ss_metadata(modules: dict[str, ModuleWeights], arch_name: str | None) -> dict[str, str]:
    """The `ss_*` keys UIs show: network module, dim and alpha (the most common), args, base model version."""
    kinds = Counter(w.kind for w in modules.values())
    lycoris = any(getattr(KINDS[k], "NETWORK", "lycoris.kohya") != "networks.lora" for k in kinds) or any(
        w.magnitude is not None for w in modules.values())
    linear = [w for w in modules.values() if KINDS[w.kind].BASES == (nn.Linear,)] or list(modules.values())
    convs = [w for w in modules.values() if KINDS[w.kind].BASES == (nn.Conv2d,)]
    common = lambda ws, f: Counter(f(w) for w in ws).most_common(1)[0][0]  # noqa: E731
    args: dict[str, str] = {}
    if convs:
        args["conv_dim"] = str(common(convs, lambda w: w.rank))
        args["conv_alpha"] = f"{common(convs, lambda w: w.alpha):g}"
    if lycoris:
        common_kind = kinds.most_common(1)[0][0]
        args["algo"] = getattr(KINDS[common_kind], "ALGO", common_kind)
        for kind in sorted(kinds):
            args.update(getattr(KINDS[kind], "NETWORK_ARGS", {}))
    dora = [w.magnitude for w in modules.values() if w.magnitude is not None]
    if dora:
        args["dora_wd"] = "True"
        args["wd_on_output"] = str(dora[0].shape[0] != 1)
    meta = {
        "ss_network_module": "lycoris.kohya" if lycoris else "networks.lora",
        "ss_network_dim": str(common(linear, lambda w: w.rank)),
        "ss_network_alpha": f"{common(linear, lambda w: w.alpha):g}",
        "ss_network_args": json.dumps(args, sort_keys=True),
    }
    if arch_name in BASE_VERSIONS:
        meta["ss_base_model_version"] = BASE_VERSIONS[arch_name]
        meta["ss_v2"] = str(arch_name == "SD2.x")
    return meta


LEGACY_WINDOW = (0x100000, 0x110000)  # the 64 KiB at 1 MiB that the legacy hash reads (empty if the file is shorter)


def addnet_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """sshs_model_hash and sshs_legacy_hash, as kohya sd-scripts precomputes them for A1111's additional-networks.

    Both read one serialisation S = safetensors(tensors, the `ss_*` metadata only): the training metadata, not
    user or sshs_ keys, so later metadata edits do not change them. model hash = sha256(S after its header),
    i.e. of the tensor bytes, equal to the written file's; legacy hash = sha256(S[1 MiB : 1 MiB + 64 KiB])
    cut to 8 hex digits, which depends on the `ss_*` header's length. `container.serialize` lays tensors out
    as the safetensors library does, so S here is byte for byte kohya's (metadata order aside, which neither
    hash reads when the header is under 1 MiB)."""
    data = container.serialize(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    (header,) = struct.unpack("<Q", data[:8])
    return {"sshs_model_hash": hashlib.sha256(data[8 + header:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(data[slice(*LEGACY_WINDOW)]).hexdigest()[:8]}


def metadata_summary(metadata: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k.startswith(("ss_", "sshs_", "modelspec."))}
