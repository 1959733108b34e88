"""Low-rank approximation of weight deltas: the SVD core of merge --rank, resize and extract.

A delta D [out, in] (a conv's [out, in, kh, kw] flattened to [out, in * kh * kw]) with singular values
s_1 >= s_2 >= ... is best approximated at rank r (Eckart-Young, Frobenius norm) by the top r singular
triplets; the relative error is exactly sqrt(sum_{i>r} s_i^2 / sum_i s_i^2). Factors come back in LoRA
(Linear) or LoCon (conv) shapes with alpha = rank, i.e. scale 1, and the singular values split evenly
(sqrt) between up and down so neither factor dwarfs the other in fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import ModuleWeights


@dataclass(frozen=True)
class Approximation:
    weights: ModuleWeights
    rel_error: float  # ||D - D_r||_F / ||D||_F, from the discarded singular values
    energy: float  # kept share of sum s_i^2


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """The smallest r whose top singular values keep `energy` (0..1] of sum s_i^2."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    kept = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp_min(1e-300)
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=torch.float64) - 1e-12).item()) + 1


def _truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, shape: tuple[int, ...], rank: int | None,
              energy: float | None, dtype: torch.dtype) -> Approximation:
    """LoRA/LoCon factors from an SVD (u [out, k], s [k], vh [k, n]) of a delta shaped `shape`."""
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")  # never silently 1
    r = rank if rank is not None else rank_for_energy(s, energy if energy is not None else 1.0)
    r = min(r, s.numel())
    total = (s ** 2).sum()
    kept = (s[:r] ** 2).sum()
    rel = float(((total - kept).clamp_min(0) / total).sqrt()) if total > 0 else 0.0
    root = s[:r].sqrt()
    up = (u[:, :r] * root).to(dtype)  # [out, r]
    down = (root[:, None] * vh[:r]).to(dtype)  # [r, in * kh * kw]
    if len(shape) == 4:
        factors, kind = {"down": down.reshape(r, *shape[1:]), "up": up.reshape(shape[0], r, 1, 1)}, "locon"
    else:
        factors, kind = {"down": down, "up": up}, "lora"
    energy_kept = float(kept / total) if total > 0 else 1.0
    return Approximation(ModuleWeights(kind, factors, r, float(r)), rel, energy_kept)


def approximate(delta: torch.Tensor, rank: int | None = None, energy: float | None = None,
                dtype: torch.dtype = torch.float32) -> Approximation:
    """Rank-r (or energy-chosen rank) LoRA/LoCon factors of `delta` (already scaled), computed in fp64."""
    u, s, vh = torch.linalg.svd(delta.double().reshape(delta.shape[0], -1), full_matrices=False)
    return _truncate(u, s, vh, tuple(delta.shape), rank, energy, dtype)


def approximate_product(up: torch.Tensor, down: torch.Tensor, shape: tuple[int, ...], rank: int | None = None,
                        energy: float | None = None, dtype: torch.dtype = torch.float32) -> Approximation:
    """`approximate(up @ down)` for a delta given as a product (up [out, k], down [k, n]) without forming it:
    up = Q_u R_u and down^T = Q_d R_d (QR), then the SVD of the k x k core R_u R_d^T gives delta's singular
    values and vectors (U = Q_u U_c, V = Q_d V_c). Costs O((out + n) k^2) instead of O(out n min(out, n))."""
    q_u, r_u = torch.linalg.qr(up.double())
    q_d, r_d = torch.linalg.qr(down.double().T)
    u_c, s, vh_c = torch.linalg.svd(r_u @ r_d.T)
    return _truncate(q_u @ u_c, s, vh_c @ q_d.T, shape, rank, energy, dtype)
