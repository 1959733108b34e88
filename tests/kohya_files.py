"""Hand-built kohya / LyCORIS files for SD1.5- and SDXL-shaped models, in every kind the layout has."""

from __future__ import annotations

import torch

from vislora.formats import container
from vislora.formats.kohya_names import build

_gen = torch.Generator().manual_seed(7)


def rand(*shape: int, std: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen) * std


def module_parts(kind: str, weight_shape: tuple[int, ...], rank: int = 4) -> dict[str, torch.Tensor]:
    """File parts of one module of this kind for a base weight shape (LyCORIS's own shapes)."""
    out, inp = weight_shape[:2]
    kernel = tuple(weight_shape[2:])
    flat_in = inp * (kernel[0] * kernel[1] if kernel else 1)
    if kind == "lora":
        return {"lora_down.weight": rand(rank, inp, *kernel), "lora_up.weight": rand(out, rank, *[1] * len(kernel)),
                "alpha": torch.tensor(rank / 2.0)}
    if kind == "tucker":
        return {"lora_down.weight": rand(rank, inp, 1, 1), "lora_mid.weight": rand(rank, rank, *kernel),
                "lora_up.weight": rand(out, rank, 1, 1), "alpha": torch.tensor(2.0)}
    if kind == "loha":
        return {"hada_w1_a": rand(out, rank), "hada_w1_b": rand(rank, flat_in), "hada_w2_a": rand(out, rank),
                "hada_w2_b": rand(rank, flat_in), "alpha": torch.tensor(2.0)}
    if kind == "loha_tucker":
        return {"hada_t1": rand(rank, rank, *kernel), "hada_w1_a": rand(rank, out), "hada_w1_b": rand(rank, inp),
                "hada_t2": rand(rank, rank, *kernel), "hada_w2_a": rand(rank, out), "hada_w2_b": rand(rank, inp),
                "alpha": torch.tensor(3.0)}
    from vislora.functional.lokr import factorization

    (a, c), (b, d) = factorization(out), factorization(inp)
    if kind == "lokr":
        return {"lokr_w1": rand(a, b), "lokr_w2_a": rand(c, rank), "lokr_w2_b": rand(rank, d * (flat_in // inp)),
                "alpha": torch.tensor(2.0)}
    if kind == "lokr_full":  # both sides whole: scale 1 whatever alpha says
        return {"lokr_w1": rand(a, b), "lokr_w2": rand(c, d, *kernel), "alpha": torch.tensor(8.0)}
    if kind == "lokr_both":
        return {"lokr_w1_a": rand(a, 2), "lokr_w1_b": rand(2, b), "lokr_w2_a": rand(c, rank),
                "lokr_w2_b": rand(rank, d * (flat_in // inp)), "alpha": torch.tensor(1.0)}
    if kind == "lokr_tucker":
        return {"lokr_w1": rand(a, b), "lokr_t2": rand(rank, rank, *kernel), "lokr_w2_a": rand(rank, c),
                "lokr_w2_b": rand(rank, d), "alpha": torch.tensor(2.0)}
    if kind == "full":
        return {"diff": rand(*weight_shape, std=0.02), "diff_b": rand(out, std=0.02)}
    raise ValueError(kind)


LINEAR_KINDS = ("lora", "loha", "lokr", "lokr_full", "lokr_both", "full")
CONV_KINDS = LINEAR_KINDS + ("tucker", "loha_tucker", "lokr_tucker")


def with_dora(parts: dict[str, torch.Tensor], weight: torch.Tensor, axis: str) -> dict[str, torch.Tensor]:
    from vislora.functional.dora import init_magnitude

    return dict(parts, dora_scale=init_magnitude(weight, axis) * (1 + rand(*init_magnitude(weight, axis).shape).abs()))


def file_for(model, picks: dict[str, tuple[str, str | None]], naming: str = "diffusers", rank: int = 4):
    """{module path suffix: (kind, dora axis or None)} -> safetensors bytes and {path: kind}, named in `naming`."""
    names = build(model).names[naming]
    tensors, chosen = {}, {}
    for suffix, (kind, axis) in picks.items():
        (where, name), = [(w, n) for w, n in names.items() if w[1] == suffix]
        comp, path = where
        root = model.components[comp] if comp else model
        weight = root.get_submodule(path).weight.detach()
        parts = module_parts(kind, tuple(weight.shape), rank)
        if axis:
            parts = with_dora(parts, weight, axis)
        tensors.update({f"{name}.{p}": t for p, t in parts.items()})
        chosen[where] = kind
    return container.serialize(tensors, {"ss_network_module": "lycoris.kohya"}), chosen
