"""The base layer's own operation, as a pure function of (x, weight, bias), picked by weight.dim().

Adapters need to run the host layer's op with a different weight (folding), to run a cheap copy of it with
the adapter's factors (LoCon's down conv keeps the base stride/padding), and to take its input gradient.
`op_for(layer)` captures the geometry once so none of that re-reads module attributes on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LinearOp:
    """y = x @ W.T + b, W: [out, in]."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def input_grad(self, grad_y: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return grad_y @ weight  # [..., out] @ [out, in] -> [..., in]

    def tokens(self, x: torch.Tensor) -> int:
        """How many rows the weight is applied to."""
        return x.numel() // x.shape[-1]

    foldable: bool = True  # input_grad above is exact for every Linear


@dataclass(frozen=True)
class Conv2dOp:
    """y = conv2d(x, W, b) with the host layer's stride, padding, dilation, groups and padding mode."""

    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    padding_mode: str = "zeros"
    # F.pad amounts (left, right, top, bottom) for non-zero padding modes, as nn.Conv2d computes them.
    pad_amounts: tuple[int, ...] = ()

    @property
    def foldable(self) -> bool:
        # The hand-written input gradient covers zero padding given as numbers; other cases use autograd.
        return self.padding_mode == "zeros" and not isinstance(self.padding, str)

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self.pad_amounts, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def input_grad(self, grad_y: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Given the real input (not a shape), the backend picks the same kernels as autograd does for the
        # plain layer; torch.nn.grad.conv2d_input passes an expanded dummy and lands on slower paths.
        return torch.ops.aten.convolution_backward(
            grad_y, x, weight, None, self.stride, self.padding, self.dilation, False, (0, 0), self.groups,
            (True, False, False),
        )[0]

    def weight_grad(self, x: torch.Tensor, weight_shape: torch.Size, grad_y: torch.Tensor) -> torch.Tensor:
        return torch.nn.grad.conv2d_weight(
            x, weight_shape, grad_y, self.stride, self.padding, self.dilation, self.groups
        )

    def tokens(self, x: torch.Tensor) -> int:
        # Output positions, approximately: the stride shrinks the map the weight is applied over.
        return x.shape[0] * (x.shape[-2] // self.stride[0]) * (x.shape[-1] // self.stride[1])


def op_for(layer: nn.Module) -> LinearOp | Conv2dOp:
    """The pure op of a Linear or Conv2d layer."""
    if isinstance(layer, nn.Linear):
        return LinearOp()
    if isinstance(layer, nn.Conv2d):
        return Conv2dOp(
            stride=tuple(layer.stride),
            padding=layer.padding if isinstance(layer.padding, str) else tuple(layer.padding),
            dilation=tuple(layer.dilation),
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            pad_amounts=tuple(layer._reversed_padding_repeated_twice),
        )
    raise TypeError(f"no adapter op for {type(layer).__name__}; vislora adapts nn.Linear and nn.Conv2d")


# -- thin products over tokens ------------------------------------------------------------------------------
# Adapter gradients need products with a rank-sized side (r rows) and a token-sized side (N rows). With the
# rank as rows they run well in BLAS, but a single [r, N] GEMM barely uses a second CPU thread; split over
# the tokens as a batch, it does. Large fp32 ones go to oneDNN's matmul instead, which streams the wide
# operand from memory about twice as fast as MKL does at r = 8 (ViT-B: 0.65 vs 1.3 ms for [8, 1576] x
# [1576, 3072] with cold caches) but costs more per call on small ones. Other devices take the plain product.
_MIN_TOKENS_PER_THREAD = 256
_ONEDNN_MIN_WORK = 1 << 22  # multiply-adds; below this MKL's lower per-call cost wins (r = 4 to 16 measured)


def _token_chunks(x: torch.Tensor, tokens: int) -> int:
    threads = torch.get_num_threads() if x.device.type == "cpu" else 1
    if threads > 1 and tokens % threads == 0 and tokens >= threads * _MIN_TOKENS_PER_THREAD:
        return threads
    return 1


def _onednn_linear():
    """oneDNN's linear (x @ w.T) where this build of torch has oneDNN and registers it, else None."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()


def onednn_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T through oneDNN's linear, the one place that calls torch's private op; the plain product where
    this torch has no such op (same values)."""
    if _ONEDNN_LINEAR is None:
        return x @ w.T
    return _ONEDNN_LINEAR(x, w, None, "none", [], "")


def _onednn_fits(thin: torch.Tensor, wide: torch.Tensor) -> bool:
    """Enough work, fp32 CPU tensors outside autograd (the op has no derivative), oneDNN present and on."""
    return (
        thin.shape[0] * wide.numel() >= _ONEDNN_MIN_WORK
        and _ONEDNN_LINEAR is not None
        and torch.backends.mkldnn.enabled
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (thin, wide))
        and not (torch.is_grad_enabled() and (thin.requires_grad or wide.requires_grad))
    )


def reduce_tokens(a_t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a_t [r, N] @ b [N, m] -> [r, m] (a sum over tokens)."""
    if _onednn_fits(a_t, b):
        return onednn_linear(a_t, b.T)
    chunks = _token_chunks(b, b.shape[0])
    if chunks == 1:
        return a_t @ b
    r, n = a_t.shape
    parts = torch.bmm(a_t.reshape(r, chunks, n // chunks).transpose(0, 1), b.view(chunks, n // chunks, -1))
    return parts.sum(0)


def project_tokens(w_t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w_t [r, m] @ b.T, b [N, m] -> [r, N] (each token projected to r values)."""
    if _onednn_fits(w_t, b):
        return onednn_linear(b, w_t).T
    chunks = _token_chunks(b, b.shape[0])
    if chunks == 1:
        return w_t @ b.T
    r, n = w_t.shape[0], b.shape[0]
    parts = torch.bmm(w_t.expand(chunks, r, w_t.shape[1]), b.view(chunks, n // chunks, -1).transpose(1, 2))
    return parts.transpose(0, 1).reshape(r, n)
