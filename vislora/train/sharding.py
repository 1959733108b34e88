"""Fully sharded data parallel (torch's FSDP2, `fully_shard`) for a frozen base trained with adapters.

    if fsdp_requested(accelerator):               # `accelerate config` / `accelerate launch --use_fsdp`
        shard_frozen(denoiser, trainable, accelerator)   # each process keeps 1/N of the frozen weights
    with whole(denoiser):                         # every process: the whole base, for a main-process-only
        ...                                       # evaluation or sample grid; sharded again after
    gather(denoiser)                              # every process, at the end: whole for good (files, samples)

Only the frozen weights are sharded: each block's are gathered for its forward and backward and freed after.
The adapters' parameters are left out of the sharding (`ignored_params`): they stay plain tensors, whole on
every process, and their gradients are averaged by hand as data parallel would, so the optimizer, gradient
clipping, checkpoints, --resume and the adapter file see the same parameters as in one process. This is
FSDP2 whatever `fsdp_version` accelerate is configured with: mixed frozen and trainable parameters need it.

accelerate (1.16) turns its own FSDP on for GPUs only; a launch configured for FSDP on CPUs (gloo) runs plain
data parallel there. The launcher's setting (ACCELERATE_USE_FSDP) is read here, so both shard the same way.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from accelerate import Accelerator, DistributedType
from torch import nn


def fsdp_requested(accelerator: Accelerator) -> bool:
    """Whether the launch asks for FSDP (accelerate's config or `--use_fsdp`) with more than one process."""
    configured = (accelerator.distributed_type == DistributedType.FSDP
                  or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true")
    return configured and accelerator.num_processes > 1


def _fsdp_modules(module: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def shard_frozen(module: nn.Module, trainable: list[nn.Parameter], accelerator: Accelerator) -> None:
    """Shard `module`'s frozen weights over the processes: each block of its block lists (a transformer's
    blocks, a UNet's down and up blocks) as a unit, then the rest. `trainable` stays whole everywhere."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    ignored = set(trainable)
    for block in _blocks(module):
        if any(not p.requires_grad for p in block.parameters()):
            fully_shard(block, mesh=mesh, ignored_params=ignored)
    fully_shard(module, mesh=mesh, ignored_params=ignored)


def _blocks(module: nn.Module) -> list[nn.Module]:
    """The elements of the outermost block lists (nn.ModuleList) under `module`, not looked into."""
    found = []
    for child in module.children():
        found.extend(child if isinstance(child, nn.ModuleList) else _blocks(child))
    return found


def gather(module: nn.Module) -> None:
    """Every process: the whole weights back in `module` (an all-gather per unit) and kept whole after each
    forward, so one process alone can run it. Nothing to do when it is not sharded."""
    units = _fsdp_modules(module)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()


@contextlib.contextmanager
def whole(module: nn.Module) -> Iterator[None]:
    """Every process enters: `module` whole inside (see `gather`), sharded again after."""
    units = _fsdp_modules(module)
    gather(module)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def check_precision(accelerator: Accelerator) -> None:
    """fp16's loss scaling needs accelerate's own FSDP wrapper; the adapters train in bf16 or fp32 here."""
    if accelerator.mixed_precision == "fp16":
        from ..errors import VisloraError

        raise VisloraError("--mixed-precision fp16 with FSDP: use bf16 (or no); fp16's loss scaler needs "
                           "accelerate's own wrapper, which cannot hold frozen and trained weights together")


