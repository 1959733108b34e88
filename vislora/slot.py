"""AdapterSlot: one adapter's factors and settings on one layer (AdapterLayer holds any number of them).

    delta_weight = scale * delta W (the kind's functional math), scale = alpha / rank (or alpha / sqrt(rank))
    weighted_delta = strength * delta_weight, or for DoRA W + strength * (W' - W) - W (functional.dora)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .functional import KINDS, scale
from .kernels import has_kernel
from .functional.dora import decomposed_weight, gain, output_delta


class AdapterSlot(nn.Module):
    """One adapter's factors and settings on one layer. Parameters are named after the kind's factors."""

    def __init__(
        self,
        kind: str,
        weight: torch.Tensor,
        layout: object,
        rank: int,
        alpha: float,
        *,
        rslora: bool = False,
        dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.kind, self.layout, self.rank, self.alpha, self.rslora = kind, layout, rank, float(alpha), rslora
        self.dropout, self.strength, self.enabled = float(dropout), 1.0, True
        self.fast = has_kernel(kind)  # vislora.kernels runs it; False: the reference path, through autograd
        dtype = torch.promote_types(weight.dtype, torch.float32)  # fp16/bf16 bases train fp32 factors
        for name, value in KINDS[kind].init_params(weight.shape, rank, init, layout).items():
            self.register_parameter(name, nn.Parameter(value.to(device=weight.device, dtype=dtype)))
        self.dora_axis: str | None = None  # DoRA: the magnitude's axis ("out" / "in"); see set_magnitude

    def set_factors(self, factors: dict[str, torch.Tensor]) -> None:
        """Take these factors' values (a file's), re-creating parameters where the file holds another variant
        of the kind (LoHa with Tucker cores, LoKr with whole or low-rank sides) than init_params made."""
        dtype = next(iter(self.params.values())).dtype
        device = next(iter(self.params.values())).device
        for name in [n for n in self.factor_names if n in self._parameters and n not in factors]:
            del self._parameters[name]
        for name, value in factors.items():
            current = self._parameters.get(name)
            if current is not None and current.shape == value.shape:
                with torch.no_grad():
                    current.copy_(value)
            else:
                self.register_parameter(name, nn.Parameter(value.detach().to(device=device, dtype=dtype).clone()))
        self.fast = self.fast and set(factors) == set(self.factor_names)  # fast paths know one variant

    def set_magnitude(self, magnitude: torch.Tensor, axis: str) -> None:
        """Make this a DoRA adapter: W' = magnitude * (W + scale delta W) / norm (functional.dora), on `axis`."""
        dtype = next(iter(self.params.values())).dtype
        self.register_parameter("magnitude", nn.Parameter(magnitude.detach().to(dtype).clone()))
        self.dora_axis = axis
        self.fast = False

    def weighted_delta(self, base_weight: torch.Tensor) -> torch.Tensor:
        """What this adapter adds to the base weight at its strength (fp32): strength * scale * delta W, or for
        DoRA W + strength * (W' - W) - W."""
        if self.dora_axis is None:
            return self.delta_weight().float() * self.strength
        new = decomposed_weight(base_weight, self.delta_weight(), self.magnitude, self.dora_axis, self.strength)
        return new - base_weight.float()

    def dora_forward(self, x: torch.Tensor, wx: torch.Tensor, op: Any, weight: torch.Tensor) -> torch.Tensor:
        """What this DoRA adapter adds to base(x), given wx = W x (no bias). Axis "out" never forms W'
        (functional.dora.output_delta; dropout, while training, on x for both W x and delta(x), as PEFT does);
        axis "in" rescales input columns, so it runs the whole weight delta."""
        if self.dora_axis == "in":
            return op.forward(x, self.weighted_delta(weight).to(x.dtype), None)
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, training=True)
            wx = op.forward(x, weight, None)
        with torch.no_grad():  # the norm is a constant in backward: no graph for delta W
            delta = self.delta_weight()
        g = gain(weight, delta, self.magnitude, "out")
        adapter_out = self.functions.delta_forward(x, self.params, self.layout) * self.scale
        return output_delta(wx, adapter_out, g, self.strength).to(wx.dtype)

    def weighted_bias(self) -> torch.Tensor | None:
        """strength * scale * delta b [out] in fp32, for kinds that change the bias too (full's diff_b), else None."""
        delta_bias = getattr(self.functions, "delta_bias", None)
        bias = delta_bias(self.params) if delta_bias is not None else None
        return None if bias is None else bias.float() * self.coef

    @property
    def functions(self):
        return KINDS[self.kind]

    @property
    def factor_names(self) -> tuple[str, ...]:
        return self.functions.FACTORS

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n) for n in self.factor_names if n in self._parameters}

    @property
    def scale(self) -> float:
        return scale(self.alpha, self.rank, self.rslora)

    @property
    def coef(self) -> float:
        return self.strength * self.scale

    def delta_weight(self) -> torch.Tensor:
        """scale * delta W, shaped like the base weight (strength not applied)."""
        return self.functions.delta_weight(self.params, self.layout) * self.scale

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, training=True)
        return self.functions.delta_forward(x, self.params, self.layout)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, rank={self.rank}, alpha={self.alpha:g}, strength={self.strength:g}"
