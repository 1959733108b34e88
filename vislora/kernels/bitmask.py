"""Boolean masks stored as bits: a dropout mask kept for backward costs 1/32 of its fp32 input, not 1/4."""

from __future__ import annotations

import torch


def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, eight elements each (bit i of byte j: element 8j + i of the flat mask).

    A mask whose size is not a multiple of 8 is kept as it is (unpack takes either form).
    """
    if mask.numel() % 8:
        return mask
    bits = mask.contiguous().view(torch.uint8).view(-1, 8)
    return (bits << _shifts(mask.device)).sum(-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool mask of `shape` that `pack` was given."""
    if packed.dtype == torch.bool:
        return packed
    return ((packed.unsqueeze(-1) >> _shifts(packed.device)) & 1).view(torch.bool).view(shape)
