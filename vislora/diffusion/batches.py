"""Which pictures and which random draws each global batch of a diffusion recipe gets, as pure functions
of (seed, n): a resumed run, and any number of processes, see the same pictures with the same noise.

    batches = Batches(items, classes, global_batch=4, seed=0)
    batches.instance(n)          # item indices of global batch n (n = step x grad_accum + micro)
    batches.prior(n)             # class item indices, in their own order
    draw_seeds(seed, n, first, count)   # one generator seed per sample (see denoise.training_batch)
    unconditional_rows(share, global_batch)   # rows of a share that also train the empty prompt
"""

from __future__ import annotations

from .buckets import bucket_batches
from ..images import DatasetError
from .latents import Items
from ..basics import derive_seed
from ..train.sampling import epoch_order

_DRAWS, _CLASS_ORDER, _NEIGHBOURS = 3, 4, 6  # derive_seed purposes (sampling, buckets: 0-2; denoise's evaluation: 5)


class Batches:
    """Global batch n (= step x grad_accum + micro) as item indices: a pure function of (seed, n), so a
    resumed run and any number of processes see the same pictures. Class pictures follow their own order."""

    def __init__(self, items: Items, classes: Items | None, global_batch: int, seed: int) -> None:
        self.items, self.classes, self.global_batch, self.seed = items, classes, global_batch, seed
        self.per_epoch = len(bucket_batches(items.buckets, global_batch, seed, 0))
        self._epoch: tuple[int, list[list[int]]] | None = None
        if self.per_epoch == 0:
            raise DatasetError(f"{len(items.pixels)} images make no full batch of {global_batch} in any one "
                               "aspect-ratio bucket; lower --batch-size, or use --no-buckets")

    def instance(self, n: int) -> list[int]:
        epoch, within = divmod(n, self.per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, bucket_batches(self.items.buckets, self.global_batch, self.seed, epoch))
        return self._epoch[1][within]

    def prior(self, n: int) -> list[int]:
        count = len(self.classes.pixels)
        picks = []
        for k in range(n * self.global_batch, (n + 1) * self.global_batch):
            epoch, pos = divmod(k, count)
            picks.append(epoch_order(count, derive_seed(self.seed, _CLASS_ORDER), epoch)[pos])
        return picks


def draw_seeds(seed: int, n: int, first: int, count: int) -> list[int]:
    """Sample j of a share starting at `first` in global batch n draws its noise, timestep and latent from
    a generator seeded by (seed, n, first + j): its place in the global batch, not the process that trains it."""
    return [derive_seed(seed, n, first + j, purpose=_DRAWS) for j in range(count)]


def neighbour_seeds(seed: int, n: int, first: int, count: int) -> list[int]:
    """The seeds that pick the preservation prompts of a share, by place in the global batch as draw_seeds."""
    return [derive_seed(seed, n, first + j, purpose=_NEIGHBOURS) for j in range(count)]


UNCONDITIONAL_EVERY = 4  # one empty-prompt sample per this many samples of the global batch (--keep-unconditional)


def unconditional_rows(share: slice, global_batch: int) -> list[int]:
    """Rows of a process's share (counted from its start) that get an empty-prompt preservation sample: every
    UNCONDITIONAL_EVERY-th sample of the global batch, by place, so that any number of processes keep the
    same samples as one."""
    return [j - share.start for j in range(share.start, min(share.stop, global_batch)) if j % UNCONDITIONAL_EVERY == 0]


def unconditional_count(global_batch: int) -> int:
    """How many empty-prompt samples a global batch has (over every process)."""
    return len(unconditional_rows(slice(0, global_batch), global_batch))
