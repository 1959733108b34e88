"""Training state as tensors (for safetensors) plus JSON, so a checkpoint never needs pickle.

    save_training(run_dir, step, model, optimizer, state)   # a checkpoint (see vislora.train.checkpoint)
    state = restore_training(checkpoint, model, optimizer)  # puts weights, optimizer and RNGs back

    tensors, info = optimizer_state(opt);  load_optimizer_state(opt, tensors, info)
    tensors, info = rng_state();           set_rng_state(tensors, info)

Round trips are exact: tensors keep their dtype and bits, and JSON floats are written with repr, which
reads back to the same double.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint
from ..errors import NonFiniteError


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Per-parameter tensors keyed "state.<param index>.<name>"; param_groups and non-tensor values as JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().to("cpu", copy=True)  # a snapshot, not a view
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         info: dict[str, Any]) -> None:
    """Inverse of `optimizer_state` (the optimizer must hold the same parameters in the same order)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entries in info.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in info["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The torch (CPU and CUDA), numpy and Python generators' states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    info = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}
    return tensors, info


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Inverse of `rng_state`. CUDA states are restored only where CUDA is present."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = info["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_training(run_dir, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], *,
                  config_hash: str = "", keep: int = 2) -> None:
    """Checkpoint the trainable weights (by name), the optimizer, every RNG, and `state` (JSON).

    Refuses (NonFiniteError) to write weights with NaN/inf: the last good checkpoint stays the newest.
    """
    params = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    if not all(torch.isfinite(t).all() for t in params.values()):
        raise NonFiniteError(f"step {step}: non-finite weights; no checkpoint written")
    opt_tensors, opt_info = optimizer_state(optimizer)
    rng_tensors, rng_info = rng_state()
    checkpoint.write(run_dir, step, tensors={"trainable": params, "optimizer": opt_tensors, "rng": rng_tensors},
                     documents={"state": state, "optimizer": opt_info, "rng": rng_info}, config_hash=config_hash,
                     keep=keep)


def restore_training(found: checkpoint.Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Inverse of `save_training`: the model must train the same parameters (names and shapes)."""
    params = dict(model.named_parameters())
    saved = found.tensors("trainable")
    if set(saved) != {n for n, p in params.items() if p.requires_grad}:
        raise checkpoint.CheckpointError(f"{found.path}: its trainable weights do not match this model's")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    load_optimizer_state(optimizer, found.tensors("optimizer"), found.json("optimizer"))
    set_rng_state(found.tensors("rng"), found.json("rng"))
    return found.json("state")
