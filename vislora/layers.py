"""AdapterLayer: the host Linear/Conv2d kept as `base_layer`, plus any number of named adapters.

    y = base(x) + sum over active adapters of strength * scale * delta(x)

`scale` (alpha / rank, or alpha / sqrt(rank) for rsLoRA) is fixed by training; `strength` is the user's
blend factor. Merging writes W + sum strength * scale * delta W into the base weight, computed in fp32
from a kept pristine copy, so unmerging restores the original tensor exactly (no subtraction drift).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import AdapterStateError, NonFiniteError
from .functional import KINDS, RowLayout, has_fast_path, op_for, scale
from .functional.fold import Term, folded_forward
from .functional.unfold import unfolded_forward
from .blend import merged_weight, stacked_terms, terms_of


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
        self.fast = has_fast_path(KINDS[kind])  # else forward and backward run through autograd
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
        from .functional.dora import decomposed_weight

        new = decomposed_weight(base_weight, self.delta_weight(), self.magnitude, self.dora_axis, self.strength)
        return new - base_weight.float()

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


class AdapterLayer(nn.Module):
    """Wraps an nn.Linear or nn.Conv2d. State-dict keys of the base move under `base_layer.`."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.op = op_for(base_layer)
        self.merged: list[str] = []
        self._pristine: torch.Tensor | None = None  # the original weight tensor while anything is merged
        self._stack_key: tuple | None = None  # what the cached stacked factors were built from (see _stacked)
        self._stack: tuple = ()

    # -- adapters ---------------------------------------------------------------------------------------
    def layout_for(self, slices: tuple[tuple[int, int], ...] | None = None) -> object:
        """What a kind needs to know of this base layer: a RowLayout (Linear; `slices` of its output rows,
        default all) or the layer's Conv2dOp."""
        if isinstance(self.base_layer, nn.Linear):
            out = self.base_layer.out_features
            return RowLayout(out, slices) if slices else RowLayout.full(out)
        return self.op

    def new_slot(self, kind: str, rank: int, alpha: float, *, slices: tuple[tuple[int, int], ...] | None = None,
                 rslora: bool = False, dropout: float = 0.0, init: str = "default") -> AdapterSlot:
        """A fresh adapter of `kind` for this layer (not added yet: see `add`)."""
        return AdapterSlot(kind, self.base_layer.weight, self.layout_for(slices), rank, alpha, rslora=rslora,
                           dropout=dropout, init=init)

    def add(self, name: str, slot: AdapterSlot) -> None:
        self.adapters[name] = slot

    def active(self) -> list[AdapterSlot]:
        """Adapters that take part in forward: enabled, not merged, non-zero strength."""
        return [s for n, s in self.adapters.items() if s.enabled and s.strength != 0.0 and n not in self.merged]

    # -- the effective weight, for host code that reads .weight instead of calling the layer -------------
    @property
    def weight(self) -> torch.Tensor:
        """The base weight plus active adapters (differentiable; dropout not applied).

        Some hosts bypass the layer's forward: timm's EVA attention runs F.linear(x, self.qkv.weight, bias).
        Returning the effective weight keeps such code correct. With no active adapter this is the base
        Parameter itself, so in-place writes to it still reach the model.
        """
        base = self.base_layer.weight
        slots = self.active()
        if not slots:
            return base
        delta = sum(s.weighted_delta(base) for s in slots)
        return base + delta.to(base.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = self.active()
        if not slots:
            return self.base_layer(x)
        base = self.base_layer
        dora = [s for s in slots if s.dora_axis is not None]
        if dora or not all(s.fast for s in slots) or (
                torch.is_grad_enabled() and (not self.op.foldable or self._base_trainable())):
            # Our hand-written backwards cover frozen bases with plain zero padding, for kinds that bring
            # them; autograd does the rest. DoRA's decomposition depends on W: it is applied as a whole
            # weight delta, the other adapters as usual.
            y = base(x)
            if dora:
                y = y + self.op.forward(x, sum(s.weighted_delta(base.weight) for s in dora).to(x.dtype), None)
            for s in slots:
                if s.dora_axis is None:
                    y = y + s.delta_forward(x) * s.coef
            return y
        if not torch.is_grad_enabled() and not (self.training and any(s.dropout for s in slots)):
            terms, factors = self._stacked(slots, x.dtype)
        else:
            terms, factors = terms_of(slots, self.training)
        if self._should_fold(x, terms):
            return folded_forward(x, base.weight, base.bias, self.op, terms, factors)
        return unfolded_forward(x, base.weight, base.bias, self.op, terms, factors)

    def _stacked(self, slots: list[AdapterSlot], dtype: torch.dtype) -> tuple[tuple[Term, ...], tuple[torch.Tensor, ...]]:
        """The active adapters as one Term per (kind, layout) group, their factors concatenated along the
        rank with strength * scale folded in (inference only: the result carries no gradient).

        Cached on the layer; the key holds each slot's strength and each factor's identity, storage and
        version counter, so set_strength, load/unload and optimizer steps (in-place writes bump the
        version) all rebuild it. Kinds without `stack` run one Term per adapter.
        """
        slots = sorted(slots, key=self._order().__getitem__)  # by name: the load order changes no bit
        key = (dtype, tuple((id(s), s.strength, *((id(p), p.data_ptr(), p._version) for p in s.params.values()))
                            for s in slots))
        if self._stack_key == key:
            return self._stack
        self._stack_key, self._stack = key, stacked_terms(slots, dtype)
        return self._stack

    def _order(self) -> dict[AdapterSlot, str]:
        return {s: n for n, s in self.adapters.items()}

    def _base_trainable(self) -> bool:
        return any(p.requires_grad for p in self.base_layer.parameters(recurse=False))

    def _should_fold(self, x: torch.Tensor, terms: tuple[Term, ...]) -> bool:
        """Fold when touching the weight once is cheaper than extra passes over the activations.

        Folding costs about one pass over the [out, fan_in] weight; not folding costs passes over the
        [tokens, fan_in] input and [tokens, out] output for each adapter.
        """
        if any(t.dropout for t in terms):
            return False  # the adapter sees dropout(x) and the base sees x: not one weight
        weight = self.base_layer.weight
        fan_out = weight.shape[0]
        fan_in = weight.numel() // fan_out
        return self.op.tokens(x) * (fan_in + fan_out) >= weight.numel()

    # -- merge ------------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[Any, ...]:
        """The merge state (live weight tensor, kept original, merged names), for `restore` after a failure."""
        return self.base_layer.weight.data, self._pristine, list(self.merged)

    def restore(self, state: tuple[Any, ...]) -> None:
        self.base_layer.weight.data, self._pristine, self.merged = state[0], state[1], list(state[2])

    def merge(self, names: list[str]) -> list[str]:
        """Merge these adapters (with their current strengths) into the base weight; returns those merged."""
        todo = [n for n in names if n not in self.merged and self.adapters[n].enabled]
        if todo:
            self._write_merged(self.merged + todo)
        return todo

    def unmerge(self) -> None:
        """Put the original weight tensor back: exact, whatever was merged."""
        if self._pristine is not None:
            self.base_layer.weight.data = self._pristine.to(self.base_layer.weight.device)  # kept on the CPU?
        self._pristine, self.merged = None, []

    def refresh_merge(self) -> None:
        """Recompute the merged weight after a strength change or removal."""
        names = [n for n in self.merged if n in self.adapters]
        if not names:
            self.unmerge()
            return
        # From the kept original, which stays where it is (a bank may keep it on the CPU).
        self._write_merged(names, None if self._pristine is None else self._pristine.device)

    def drop(self, names: list[str], keep_merged: bool = False) -> bool:
        """Delete these adapters; with keep_merged, their merged deltas become part of the base weight.

        Returns True when no adapter is left (the caller then puts `base_layer` back in the model).
        """
        remaining = [n for n in self.merged if n not in names]
        baked = [n for n in self.merged if n in names] if keep_merged else []
        if baked:
            self.unmerge()
            self._write_merged(baked)
            self._pristine, self.merged = None, remaining  # the baked weight is the new original
        for n in names:
            del self.adapters[n]
        self.merged = remaining
        self.refresh_merge()
        return len(self.adapters) == 0

    @torch.no_grad()
    def _write_merged(self, names: list[str], pristine_device: torch.device | str | None = None,
                      in_place: bool = False) -> None:
        """weight = pristine + sum strength * scale * delta W over `names`.

        The sum runs in fp32 (or wider) on the weight's device, all adapters of one kind as one product of
        stacked factors, and is cast once. The pristine tensor is never written; with `pristine_device`
        (e.g. "cpu" for a model on a GPU) it is kept there instead of beside the live weight. The result is a
        new tensor, so state dicts the caller took earlier stay as they were; with `in_place` (the bank's
        re-blends) an already merged layer's own merged tensor is overwritten instead.
        """
        weight = self.base_layer.weight
        pristine = self._pristine if self._pristine is not None else weight.data
        if pristine_device is not None:
            pristine = pristine.to(pristine_device)  # a copy only when it moves
        for n in names:
            if "diff_b" in self.adapters[n].params:
                raise AdapterStateError(f"adapter {n!r} changes the bias too (a full-weight diff_b); merging writes "
                                        "weights only, so it stays unmerged")
        own = self._pristine is not None and weight.data_ptr() != self._pristine.data_ptr()
        out = weight.data if in_place and own else None
        merged = merged_weight(pristine.to(weight.device), [self.adapters[n] for n in sorted(names)], out)
        if merged is None:
            raise NonFiniteError(f"merging {names} gives non-finite weights; the base weight is unchanged")
        self._pristine = pristine
        if out is None:
            weight.data = merged
        self.merged = list(names)

    def _apply(self, fn, recurse=True):
        # .to(device/dtype) must move the kept original weight along with the live one.
        away = self._pristine is not None and self._pristine.device != self.base_layer.weight.device
        super()._apply(fn, recurse)
        if self._pristine is not None:
            home = self._pristine.device
            self._pristine = fn(self._pristine)
            if away:  # kept off the weight's device on purpose (AdapterBank's pristine_device): stay there
                self._pristine = self._pristine.to(home)
        return self

    def extra_repr(self) -> str:
        return f"merged={self.merged}" if self.merged else ""
