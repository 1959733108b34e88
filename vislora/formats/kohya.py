"""kohya sd-scripts and LyCORIS files: `<kohya name>.<part>` keys, alpha per module, `ss_*` metadata.

Parts per module (formats spec sections 2-3), the kind chosen by which are present:
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

from ..errors import AdapterFormatError
from ..functional import lokr
from . import container, kohya_names
from .adapter import AdapterFile, ModuleWeights
from .arch import of_file
from .checks import matrix_factors
from .kohya_names import KOHYA_PREFIXES

FORMAT = "kohya"

# file part -> (kind family, factor)
PARTS: dict[str, tuple[str, str]] = {
    "lora_down.weight": ("lora", "down"), "lora_up.weight": ("lora", "up"), "lora_mid.weight": ("lora", "mid"),
    **{f"hada_{f}": ("loha", f) for f in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f"lokr_{f}": ("lokr", f) for f in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")},
    "diff": ("full", "diff"), "diff_b": ("full", "diff_b"),
}
FILE_PART = {(family, factor): part for part, (family, factor) in PARTS.items()}
FAMILY_OF_KIND = {"lora": "lora", "locon": "lora", "tucker": "lora", "loha": "loha", "lokr": "lokr", "full": "full"}
# LyCORIS parts vislora recognises but does not apply, by the algorithm they belong to.
OTHER_ALGORITHMS = {"on_input": "IA3", "weight": "IA3", "oft_blocks": "OFT", "oft_diag": "OFT", "rescale": "OFT/BOFT",
                    "a1.weight": "GLoRA", "a2.weight": "GLoRA", "b1.weight": "GLoRA", "b2.weight": "GLoRA",
                    "bm.weight": "GLoRA", "w_norm": "norm", "b_norm": "norm", "scale": "A1111 absolute scale",
                    "bias": "LoRA bias"}
_FLAT_B = {"loha": ("w1_b", "w2_b"), "lokr": ("w2_b",)}  # conv factors LyCORIS stores flattened (non-Tucker)


def split(key: str) -> tuple[str, str] | None:
    """(kohya module name, part) at the first dot, for keys with a kohya/LyCORIS prefix."""
    if not key.startswith(KOHYA_PREFIXES) or "." not in key:
        return None
    module, _, part = key.partition(".")
    return module, part


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return any(split(k) is not None for k in tensors)


def _kind(family: str, factors: dict[str, torch.Tensor]) -> str:
    if family != "lora":
        return family
    if "mid" in factors:
        return "tucker"
    return "locon" if factors["down"].dim() == 4 else "lora"


def _rank(kind: str, factors: dict[str, torch.Tensor]) -> int | None:
    """The rank alpha is divided by, from shapes (never from metadata); None: scale 1 whatever alpha says."""
    if kind in ("lora", "locon", "tucker"):
        return factors["down"].shape[0]
    if kind == "loha":
        return factors["w1_b"].shape[0]
    if kind == "lokr":
        return lokr.file_rank(factors)
    return None


def _module(name: str, parts: dict[str, torch.Tensor], path: str) -> ModuleWeights:
    unknown = sorted(p for p in parts if p not in PARTS and p not in ("alpha", "dora_scale"))
    if unknown:
        algos = sorted({OTHER_ALGORITHMS.get(p, "unknown") for p in unknown})
        raise AdapterFormatError(f"module {name!r} has parts {unknown} ({', '.join(algos)}), which vislora does not "
                                 "apply; loading the rest would change the file's effect", path=path,
                                 category="unsupported-kind")
    families = {PARTS[p][0] for p in parts if p in PARTS}
    if len(families) != 1:
        raise AdapterFormatError(f"module {name!r} has parts of {sorted(families) or 'no'} adapter kinds: "
                                 f"{sorted(parts)}", path=path, category="incomplete")
    (family,) = families
    factors = {PARTS[p][1]: t for p, t in parts.items() if p in PARTS}
    needed = {"lora": ({"down", "up"},), "loha": ({"w1_a", "w1_b", "w2_a", "w2_b"},), "full": ({"diff"},),
              "lokr": ({"w1"}, {"w1_a", "w1_b"})}[family]
    if not any(n <= set(factors) for n in needed) or (family == "lokr" and not (
            "w2" in factors or {"w2_a", "w2_b"} <= set(factors))):
        raise AdapterFormatError(f"module {name!r} is incomplete: it has {sorted(parts)}", path=path,
                                 category="incomplete")
    matrix_factors(name, factors, ("down", "up", "mid", "w1_a", "w1_b", "w2_a", "w2_b", "w1", "w2"), path)
    kind = _kind(family, factors)
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
    modules = {name: _module(name, parts, path) for name, parts in sorted(grouped.items())}
    return AdapterFile(path, FORMAT, modules, {}, None, metadata)


def resolve(names: list[str], model: Any) -> dict[str, tuple[str, str]]:
    """{file module name: (component, path)} for the names the model has, in any naming (kohya_names)."""
    table = kohya_names.build(model).modules
    return {n: table[n] for n in names if n in table}


def write(adapter: AdapterFile, naming: str = "auto") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata in the kohya/LyCORIS layout. Module paths become kohya names: SD1/SD2 UNets in
    diffusers naming, SDXL UNets in SGM naming (naming="auto"; "diffusers" or "ldm" to choose), text
    encoders lora_te / lora_te1 / lora_te2, other models lycoris_. Names already in kohya form stay."""
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
    for path, w in adapter.modules.items():
        name = path if split(path + ".x") else kohya_names.name_for(path, has_te2, ldm)
        if name in named:
            raise ValueError(f"two modules would both be written as {name!r}")
        factors, rank = w.plain() if w.slices else (dict(w.factors), w.rank)
        plain = ModuleWeights(w.kind, factors, rank, w.alpha * rank / w.rank if w.slices else w.alpha, w.rslora)
        plain.magnitude = w.magnitude
        named[name] = plain
        tensors.update(file_tensors(name, plain))
    meta = ss_metadata(named, arch.name)
    meta.update(addnet_hashes(tensors, meta))
    return tensors, meta


# -- fitting file shapes to a model's layer, and back -------------------------------------------------------
def fit(w: ModuleWeights, weight_shape: tuple[int, ...]) -> ModuleWeights:
    """The module with factors in vislora's shapes for a base weight of this shape (a new object; tensors
    are reshaped views, never changed): conv LoHa/LoKr `_b` factors unflattened, 1 x 1 conv LoRA factors on
    a Linear squeezed (SD1 files on SD2-style linear proj_in), 2-D factors on a 1 x 1 conv unsqueezed."""
    factors = dict(w.factors)
    kind = w.kind
    conv = len(weight_shape) == 4
    if kind == "locon" and not conv and factors["down"].shape[2:] == (1, 1):
        factors = {n: t.flatten(1) for n, t in factors.items()}
        kind = "lora"
    elif kind == "lora" and conv and weight_shape[2:] == (1, 1):
        factors = {n: t[..., None, None] for n, t in factors.items()}
        kind = "locon"
    elif conv and kind in _FLAT_B and not ({"t1", "t2"} & set(factors)):
        for name in _FLAT_B[kind]:
            kernel = weight_shape[2] * weight_shape[3]
            t = factors.get(name)
            if t is not None and t.dim() == 2 and t.shape[1] % kernel == 0:  # else the shape check reports it
                factors[name] = t.reshape(t.shape[0], t.shape[1] // kernel, *weight_shape[2:])
    out = ModuleWeights(kind, factors, w.rank, w.alpha, w.rslora, w.slices)
    out.magnitude = w.magnitude
    return out


def file_tensors(name: str, w: ModuleWeights) -> dict[str, torch.Tensor]:
    """The file tensors of one module in the kohya/LyCORIS layout (alpha as a positive 0-dim fp32 tensor)."""
    family = FAMILY_OF_KIND[w.kind]
    factors = dict(w.factors)
    alpha = w.alpha * (w.rank ** 0.5 if w.rslora else 1.0)  # LyCORIS stores rsLoRA's alpha as alpha * sqrt(r)
    if family in _FLAT_B and not ({"t1", "t2"} & set(factors)):
        factors.update({n: factors[n].flatten(1) for n in _FLAT_B[family] if n in factors})
    if _rank(w.kind, factors) is None and w.scale != 1.0 and family == "lokr":
        factors["w1"] = factors["w1"] * w.scale  # whole LoKr factors read with scale 1: carry it in W1
    out = {f"{name}.{FILE_PART[(family, f)]}": t for f, t in factors.items()}
    if family != "full":
        if not alpha > 0:
            raise ValueError(f"{name}: alpha {alpha} would disable the module in every consumer; kohya files "
                             "need alpha > 0")
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    if w.magnitude is not None:
        out[f"{name}.dora_scale"] = w.magnitude
    return out


# -- metadata -----------------------------------------------------------------------------------------------
BASE_VERSIONS = {"SD1.x": "sd_v1", "SD2.x": "sd_v2", "SDXL": "sdxl_base_v1-0"}
ALGOS = {"lora": "lora", "locon": "locon", "tucker": "locon", "loha": "loha", "lokr": "lokr", "full": "full"}


def ss_metadata(modules: dict[str, ModuleWeights], arch_name: str | None) -> dict[str, str]:
    """The `ss_*` keys UIs show: network module, dim and alpha (the most common), args, base model version."""
    kinds = Counter(w.kind for w in modules.values())
    lycoris = any(k in ("loha", "lokr", "full", "tucker") for k in kinds) or any(
        w.magnitude is not None for w in modules.values())
    linear = [w for w in modules.values() if w.kind == "lora"] or list(modules.values())
    convs = [w for w in modules.values() if w.kind in ("locon", "tucker")]
    common = lambda ws, f: Counter(f(w) for w in ws).most_common(1)[0][0]  # noqa: E731
    args: dict[str, str] = {}
    if convs:
        args["conv_dim"] = str(common(convs, lambda w: w.rank))
        args["conv_alpha"] = f"{common(convs, lambda w: w.alpha):g}"
    if lycoris:
        args["algo"] = ALGOS[kinds.most_common(1)[0][0]]
        if "tucker" in kinds:
            args["use_tucker"] = "True"
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
