"""What the hand-written backward passes need of the base op, and the thin products they are built from.

This is where the fast path's private torch calls live: `aten.convolution_backward` (a conv's input
gradient given the real input) and oneDNN's `_linear_pointwise` (thin products over many tokens).
"""

from __future__ import annotations

import torch

from ..functional.ops import Conv2dOp, LinearOp


def foldable(op: LinearOp | Conv2dOp) -> bool:
    """Whether `input_grad` below is exact for this op: every Linear; convs with zero padding given as numbers
    (other cases train through autograd)."""
    if isinstance(op, LinearOp):
        return True
    return op.padding_mode == "zeros" and not isinstance(op.padding, str)


def tokens(op: LinearOp | Conv2dOp, x: torch.Tensor) -> int:
    """How many rows the weight is applied to: tokens (Linear), output positions approximately (Conv2d: the
    stride shrinks the map the weight is applied over)."""
    if isinstance(op, LinearOp):
        return x.numel() // x.shape[-1]
    return x.shape[0] * (x.shape[-2] // op.stride[0]) * (x.shape[-1] // op.stride[1])


def input_grad(op: LinearOp | Conv2dOp, grad_y: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient of <grad_y, op(x, weight)> with respect to x."""
    if isinstance(op, LinearOp):
        return grad_y @ weight  # [..., out] @ [out, in] -> [..., in]
    # Given the real input (not a shape), the backend picks the same kernels as autograd does for the plain
    # layer; torch.nn.grad.conv2d_input passes an expanded dummy and lands on slower paths.
    return torch.ops.aten.convolution_backward(
        grad_y, x, weight, None, op.stride, op.padding, op.dilation, False, (0, 0), op.groups, (True, False, False),
    )[0]


def weight_grad(op: Conv2dOp, x: torch.Tensor, weight_shape: torch.Size, grad_y: torch.Tensor) -> torch.Tensor:
    """The gradient of <grad_y, conv(x, W)> with respect to a W of `weight_shape`."""
    return torch.nn.grad.conv2d_weight(x, weight_shape, grad_y, op.stride, op.padding, op.dilation, op.groups)


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
