"""A torch Dataset over checked `Samples`, with the train and eval transforms of a classifier.

Items are (epoch, index) pairs from `vislora.train.sampling.EpochBatches`; the augmentation of image `index` in
`epoch` runs under its own seed, so it is the same in every run, process and worker. A file that stopped
decoding since the scan (changed on disk) is replaced by the next readable image, with a warning, so an
epoch never stops half-way.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from .folders import Samples, SkippedImageWarning
from ..images import ImageDecodeError, decode_image
from ..basics import derive_seed

_INTERPOLATION = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
                  "nearest": T.InterpolationMode.NEAREST}


@dataclass
class Preprocess:
    """How pictures become model input; saved with the adapter so prediction matches training exactly."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.9

    @classmethod
    def for_model(cls, model: torch.nn.Module, crop_pct: float | None = None) -> "Preprocess":
        """From timm's data config of the model (mean, std, interpolation, crop_pct) and its input size."""
        import timm.data

        cfg = timm.data.resolve_model_data_config(model)
        # The config keeps the pretrained size (224) when img_size was overridden; the patch embed knows.
        built = getattr(getattr(model, "patch_embed", None), "img_size", None)
        size = int(built[-1]) if built else int(cfg["input_size"][-1])
        interpolation = cfg.get("interpolation", "bicubic")
        return cls(size, tuple(cfg["mean"]), tuple(cfg["std"]),
                   interpolation if interpolation in _INTERPOLATION else "bicubic",
                   float(crop_pct if crop_pct is not None else cfg.get("crop_pct", 0.9)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["img_size"]), tuple(d["mean"]), tuple(d["std"]), d["interpolation"], float(d["crop_pct"]))

    def eval_transform(self) -> Callable:
        """Resize the short side to img_size / crop_pct, centre crop img_size, normalise."""
        mode = _INTERPOLATION[self.interpolation]
        return T.Compose([T.Resize(int(round(self.img_size / self.crop_pct)), interpolation=mode),
                          T.CenterCrop(self.img_size), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def train_transform(self, crop_scale: float = 0.7, hflip: float = 0.5) -> Callable:
        """Random resized crop (area `crop_scale`..1), optional horizontal flip, normalise.

        Every random draw comes from torch's global generator, which ImageDataset seeds per image.
        """
        steps = [T.RandomResizedCrop(self.img_size, scale=(crop_scale, 1.0),
                                     interpolation=_INTERPOLATION[self.interpolation])]
        if hflip > 0:
            steps.append(T.RandomHorizontalFlip(hflip))
        return T.Compose(steps + [T.ToTensor(), T.Normalize(self.mean, self.std)])


class ImageDataset(Dataset):
    """(image tensor [3, S, S], label, index) for item (epoch, index) or a plain index."""

    def __init__(self, samples: Samples, transform: Callable, *, seed: int = 0, max_pixels: int | None = None) -> None:
        self.samples, self.transform, self.seed = samples, transform, seed
        self.decode_kw = {} if max_pixels is None else {"max_pixels": max_pixels}

    def __len__(self) -> int:
        return len(self.samples)

    def _picture(self, index: int) -> tuple[object, int]:
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            try:
                return decode_image(self.samples.paths[i], **self.decode_kw), i
            except ImageDecodeError as e:
                warnings.warn(f"skipped {e} (it decoded when the data were scanned); using the next image",
                              SkippedImageWarning, stacklevel=2)
        raise ImageDecodeError(self.samples.paths[index], "no image of the data set decodes any more")

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        picture, used = self._picture(index)
        # Seed the global generator for this one image; fork_rng puts the caller's state back afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, epoch, used))
            x = self.transform(picture)
        return x, self.samples.labels[used], used
