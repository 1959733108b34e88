"""AdapterLayer: the host Linear/Conv2d kept as `base_layer`, plus any number of named adapters.

    y = base(x) + sum over active adapters of strength * scale * delta(x)
    (a DoRA adapter adds strength * (W' - W) x instead; see functional.dora and AdapterSlot.dora_forward)

`scale` (alpha / rank, or alpha / sqrt(rank) for rsLoRA) is fixed by training; `strength` is the user's
blend factor. Merging writes W + sum strength * scale * delta W into the base weight (and b + sum strength *
scale * delta b into the bias, for full-weight adapters with a diff_b), computed in fp32 from kept pristine
copies, so unmerging restores the original tensors exactly (no subtraction drift).

A quantized base layer (its weight a tensor subclass: torchao's Int8Tensor, bitsandbytes' Params4bit, ...) runs
as it is, its own forward, with the adapters added to its output through autograd: never folded, merged or
added to its weight, which would dequantize it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import AdapterCompatError, AdapterStateError, NonFiniteError
from . import kernels
from .functional import RowLayout, op_for
from .functional.dora import init_magnitude, per_channel
from .blend import bias_deltas, merged_bias, merged_weight, stacked_terms, terms_of
from .slot import AdapterSlot


def quantized(weight: torch.Tensor) -> bool:
    """Whether a weight is stored quantized or packed (a tensor subclass), not as a plain tensor of its dtype."""
    return type(weight) not in (torch.Tensor, nn.Parameter)


class AdapterLayer(nn.Module):
    """Wraps an nn.Linear or nn.Conv2d. State-dict keys of the base move under `base_layer.`."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.op = op_for(base_layer)
        self.merged: list[str] = []
        self._pristine: torch.Tensor | None = None  # the original weight tensor while anything is merged
        self._pristine_bias: torch.Tensor | None = None  # the original bias, while a merged adapter changes it
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
                 rslora: bool = False, dropout: float = 0.0, init: str = "default", dora: bool = False) -> AdapterSlot:
        """A fresh adapter of `kind` for this layer (not added yet: see `add`). With `dora`, a DoRA adapter whose
        magnitude is the norm of W + scale * delta W per output row (PEFT's rule): the gain starts at exactly 1,
        so with up = 0 it is an exact no-op."""
        weight = self.base_layer.weight
        if dora and quantized(weight):
            raise AdapterCompatError(f"DoRA rescales by the base weight's norms, and this layer's weight is quantized "
                                     f"({type(weight).__name__}); train a plain LoRA on a quantized base")
        slot = AdapterSlot(kind, weight, self.layout_for(slices), rank, alpha, rslora=rslora, dropout=dropout,
                           init=init)
        if dora:
            with torch.no_grad():
                slot.set_magnitude(init_magnitude(weight.float() + slot.delta_weight().float(), "out"), "out")
        return slot

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
        if quantized(base):
            raise AdapterStateError(f"this layer's base weight is quantized ({type(base).__name__}): its adapters "
                                    "run in its forward only, and W + delta W would dequantize it")
        delta = sum(s.weighted_delta(base) for s in slots)
        return base + delta.to(base.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base bias plus active adapters' bias deltas (diff_b); the base Parameter itself when none has one."""
        base = self.base_layer.bias
        deltas = bias_deltas(self.active())
        if not deltas:
            return base
        total = sum(deltas)
        return total.to(self.base_layer.weight.dtype) if base is None else base + total.to(base.dtype)

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path (vislora.kernels) where it covers every active adapter and this layer; else the
        reference: base(x) plus each adapter's functional delta_forward, through autograd."""
        slots = self.active()
        if not slots:
            return self.base_layer(x)
        if quantized(self.base_layer.weight):  # the base's own quantized forward, the adapters beside it
            return self.reference_forward(x, slots)
        if not (all(s.fast for s in slots) and kernels.covers(self.op, self._base_trainable())):
            return self.reference_forward(x, slots)
        if not torch.is_grad_enabled() and not (self.training and any(s.dropout for s in slots)):
            terms, factors = self._stacked(slots, x.dtype)
        else:
            terms, factors = terms_of(slots, self.training)
        return kernels.forward(x, self.base_layer.weight, self.base_layer.bias, self.op, terms, factors)

    def reference_forward(self, x: torch.Tensor, slots: list[AdapterSlot]) -> torch.Tensor:
        """base(x) + sum_s coef_s * delta_s(x) through autograd, for any kind, a trainable base and DoRA (whose
        rescaling depends on W: see AdapterSlot.dora_forward)."""
        base = self.base_layer
        y = base(x)
        dora_slots = [s for s in slots if s.dora_axis is not None]
        if dora_slots:
            bias = base.bias
            wx = y if bias is None else y - per_channel(bias, base.weight.dim()).to(y.dtype)
            y = y + sum(s.dora_forward(x, wx, self.op, base.weight) for s in dora_slots)
        for s in slots:
            if s.dora_axis is None:
                y = y + s.delta_forward(x) * s.coef
        return y

    def _stacked(self, slots: list[AdapterSlot],
                 dtype: torch.dtype) -> tuple[tuple[kernels.Term, ...], tuple[torch.Tensor, ...]]:
        """The active adapters as one Term per (kind, layout) group, their factors concatenated along the
        rank with strength * scale folded in (inference only: the result carries no gradient).

        Cached on the layer for frozen adapters only; the key holds each slot's strength and each factor's
        identity, storage and version counter, so set_strength and load/unload rebuild it. Factors being
        trained are never cached: optimizers that write through `p.data` (Prodigy, bitsandbytes' 8-bit Adam)
        do not bump the version counter, and a stale stack would evaluate the adapter as it was.
        Kinds without `stack` run one Term per adapter.
        """
        slots = sorted(slots, key=self._order().__getitem__)  # by name: the load order changes no bit
        if any(p.requires_grad for s in slots for p in s.params.values()):
            self._stack_key = None
            return stacked_terms(slots, dtype)
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

    # -- merge ------------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[Any, ...]:
        """The merge state (live weight and bias tensors, kept originals, merged names), for `restore`."""
        bias = self.base_layer.bias
        return (self.base_layer.weight.data, self._pristine, list(self.merged),
                None if bias is None else bias.data, self._pristine_bias)

    def restore(self, state: tuple[Any, ...]) -> None:
        self.base_layer.weight.data, self._pristine, self.merged = state[0], state[1], list(state[2])
        if state[3] is not None:
            self.base_layer.bias.data = state[3]
        self._pristine_bias = state[4]

    def unmergeable(self, names: list[str]) -> list[str]:
        """Those of `names` that change a bias this layer does not have (diff_b on a bias-free layer): merging
        them would need a new parameter, so they can only run unmerged."""
        if self.base_layer.bias is not None:
            return []
        return [n for n in names if self.adapters[n].weighted_bias() is not None]

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
        if self._pristine_bias is not None:
            self.base_layer.bias.data = self._pristine_bias
        self._pristine, self._pristine_bias, self.merged = None, None, []

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
            self._pristine, self._pristine_bias, self.merged = None, None, remaining  # baked: the new originals
        for n in names:
            del self.adapters[n]
        self.merged = remaining
        self.refresh_merge()
        return len(self.adapters) == 0

    @torch.no_grad()
    def _write_merged(self, names: list[str], pristine_device: torch.device | str | None = None,
                      in_place: bool = False) -> None:
        """weight = pristine + sum strength * scale * delta W over `names` (bias likewise, for diff_b).

        The sum runs in fp32 (or wider) on the weight's device, all adapters of one kind as one product of
        stacked factors, and is cast once. The pristine tensor is never written; with `pristine_device`
        (e.g. "cpu" for a model on a GPU) it is kept there instead of beside the live weight. The result is a
        new tensor, so state dicts the caller took earlier stay as they were; with `in_place` (the bank's
        re-blends) an already merged layer's own merged tensor is overwritten instead.
        """
        weight = self.base_layer.weight
        if quantized(weight):
            raise AdapterStateError(f"cannot merge {names} into a quantized base weight ({type(weight).__name__}): "
                                    "merging would dequantize it; merge on the unquantized base, or run unmerged")
        pristine = self._pristine if self._pristine is not None else weight.data
        if pristine_device is not None:
            pristine = pristine.to(pristine_device)  # a copy only when it moves
        refused = self.unmergeable(names)
        if refused:
            raise AdapterStateError(f"adapters {refused} add a bias (diff_b) to a layer without one; merging would "
                                    "need a new parameter, so run them unmerged (merge the others by name)")
        slots = [self.adapters[n] for n in sorted(names)]
        bias = self.base_layer.bias
        kept_bias = self._pristine_bias if self._pristine_bias is not None else (None if bias is None else bias.data)
        new_bias = merged_bias(kept_bias, slots) if bias is not None else None  # kept_bias itself if no diff_b
        if bias is not None and new_bias is None:
            raise NonFiniteError(f"merging {names} gives a non-finite bias; the base layer is unchanged")
        own = self._pristine is not None and weight.data_ptr() != self._pristine.data_ptr()
        out = weight.data if in_place and own else None
        merged = merged_weight(pristine.to(weight.device), slots, out)
        if merged is None:
            raise NonFiniteError(f"merging {names} gives non-finite weights; the base weight is unchanged")
        self._pristine = pristine
        if out is None:
            weight.data = merged
        if bias is not None:  # the merged bias, or the pristine one back when no merged adapter changes it
            bias.data, self._pristine_bias = new_bias, None if new_bias is kept_bias else kept_bias
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
        if self._pristine_bias is not None:
            self._pristine_bias = fn(self._pristine_bias)
        return self

    def extra_repr(self) -> str:
        return f"merged={self.merged}" if self.merged else ""
