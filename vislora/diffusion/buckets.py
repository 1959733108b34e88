"""Aspect-ratio buckets: images that are not square train at a size near their shape, about the same area.

    sizes = bucket_sizes(512, multiple=64)        # [(w, h)] with w * h <= 512 * 512, sides multiples of 64
    b = assign(sizes, (w, h))                     # the bucket whose aspect ratio is closest (in log ratio)
    pixels, crop = fit(image, sizes[b])           # cover the bucket, centre crop: [3, h, w] in [-1, 1]
    batches = bucket_batches(buckets, 4, seed, epoch)   # global batches of indices, one bucket each

Square training is the one-bucket case: `bucket_sizes(r, multiple, square=True)`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..basics import derive_seed

MAX_RATIO = 2.0  # the longest side at most twice the shortest: beyond this a subject is mostly crop
_ORDER = 2       # a derive_seed purpose of its own (sampling uses 0 and 1)


def bucket_sizes(resolution: int, multiple: int, *, square: bool = False) -> list[tuple[int, int]]:
    """(w, h) pairs, sides multiples of `multiple`, area <= resolution**2, ratio <= MAX_RATIO, widest first."""
    if square:
        return [(resolution, resolution)]
    area, sizes = resolution * resolution, set()
    for w in range(multiple, 2 * resolution + 1, multiple):
        h = min(area // w // multiple * multiple, 2 * resolution)
        if h >= multiple and max(w, h) / min(w, h) <= MAX_RATIO:
            sizes.update({(w, h), (h, w)})
    return sorted(sizes, key=lambda s: s[1] / s[0])


def assign(sizes: list[tuple[int, int]], size: tuple[int, int]) -> int:
    """Index of the bucket whose log aspect ratio is nearest the image's (ties: the larger area)."""
    ratio = math.log(size[0] / size[1])
    return min(range(len(sizes)), key=lambda i: (abs(math.log(sizes[i][0] / sizes[i][1]) - ratio),
                                                 -sizes[i][0] * sizes[i][1]))


def fit(image: Image.Image, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize to cover `size` (w, h) keeping the aspect ratio, centre-crop; pixels [3, h, w] in [-1, 1] and
    the crop's (top, left) in the resized image (SDXL conditions on it)."""
    w, h = size
    scale = max(w / image.width, h / image.height)
    resized = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))),
                           Image.Resampling.BICUBIC)
    top, left = (resized.height - h) // 2, (resized.width - w) // 2
    crop = resized.crop((left, top, left + w, top + h))
    pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    return pixels, (top, left)


def bucket_batches(buckets: list[int], global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Epoch `epoch`'s global batches of item indices: each bucket's items shuffled and cut into full
    batches (a short rest is left for this epoch), then the batches of all buckets shuffled together.
    A pure function of its arguments, so a resumed run sees the same batches."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, purpose=_ORDER))
    batches = []
    for b in sorted(set(buckets)):
        members = [i for i, x in enumerate(buckets) if x == b]
        order = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
        batches += [order[k:k + global_batch] for k in range(0, len(order) - global_batch + 1, global_batch)]
    return [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
