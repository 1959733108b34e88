"""Which images each step sees, as a pure function of (seed, epoch, position): resumable mid-epoch.

Epoch e visits the images in the order of a permutation seeded by (seed, e), cut into global batches of
`batch_size * world` images; process `rank` takes its contiguous share of each global batch. Image i in
epoch e is augmented with a generator seeded by (seed, e, i). Nothing depends on how many batches came
before in this process, so a run resumed at batch b of epoch e sees exactly what the uninterrupted run saw.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..basics import _ORDER, derive_seed  # noqa: F401  (derive_seed: re-exported for the epoch order's users)

def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The visiting order of epoch `epoch` over n images."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, purpose=_ORDER))
    return torch.randperm(n, generator=g).tolist()


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """This process's batches of (epoch, image index) for one epoch, from global batch `start` on.

    shuffle=False keeps the stored order (validation); drop_last=False keeps a short final batch, and then
    a process may get fewer batches than another (fine for validation, which reduces once at the end).
    """

    def __init__(self, n: int, batch_size: int, *, epoch: int = 0, seed: int = 0, rank: int = 0, world: int = 1,
                 start: int = 0, shuffle: bool = True, drop_last: bool = True) -> None:
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world={world}")
        self.n, self.batch_size, self.epoch, self.seed = n, batch_size, epoch, seed
        self.rank, self.world, self.start, self.shuffle, self.drop_last = rank, world, start, shuffle, drop_last

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return sum(1 for _ in self._shares())

    def _shares(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, self.seed, self.epoch) if self.shuffle else list(range(self.n))
        for b in range(self.start, self.batches_per_epoch()):
            chunk = order[b * self.global_batch:(b + 1) * self.global_batch]
            share = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            if share:
                yield share

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for share in self._shares():
            yield [(self.epoch, i) for i in share]
