"""A timm image classifier and its provenance: which base it grew from, its classes, its preprocessing.

Every file the classification recipe writes carries one JSON metadata entry, "classifier":

    {"kind": "adapter" | "model", "base": BaseRecord, "class_to_idx": {...}, "preprocess": {...}}

so `load_classifier(file)` rebuilds a working model from the file alone: an adapter file rebuilds its
base (hub tag, local weights checked by sha256, or a seeded random init) and loads on top; a model file
(merged, head-only or full fine-tune) holds every weight and needs only the architecture.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .dataset import Preprocess
from ..errors import VisloraError
from ..formats import container
from ..io import load_adapter

METADATA_KEY = "classifier"
# Metadata a base weights file may carry so that --model and --model-kwargs can be left out.
BASE_MODEL_KEY, BASE_KWARGS_KEY = "timm_model", "timm_model_kwargs"


class BaseModelError(VisloraError):
    """The base model cannot be rebuilt as recorded (missing file, different sha256, keys that do not fit)."""


@dataclass
class BaseRecord:
    """What a classifier was built on. source: "hub" (timm pretrained tag), "file" (local safetensors),
    or "none" (random init drawn with init_seed). `weights` is relative to the folder of the file it is
    recorded in, so no absolute path (user name, home) is stored unless the two lie on different drives."""

    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "none"
    weights: str | None = None
    sha256: str | None = None
    hub_tag: str | None = None
    init_seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BaseRecord":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, from its header alone (a base may be gigabytes)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - the full check below says what the file is, by name
        container.read(path)
        raise


def record_base(model: str | None, model_kwargs: dict[str, Any], *, pretrained: bool = False,
                weights: str | os.PathLike | None = None, recorded_in: str | os.PathLike = ".",
                seed: int = 0) -> tuple[BaseRecord, Path | None]:
    """The record of a base about to be built, and its local weights file if any.

    A weights file may name its timm model and kwargs in its metadata (BASE_MODEL_KEY, BASE_KWARGS_KEY);
    explicit arguments win. The weights path is recorded relative to the folder `recorded_in`.
    """
    if weights is None:
        if not model:
            raise BaseModelError("--model is required")
        return BaseRecord(model, dict(model_kwargs), "hub" if pretrained else "none", init_seed=seed), None
    weights = Path(weights)
    if not weights.is_file():
        raise BaseModelError(f"{weights}: no such weights file")
    meta = _metadata(weights)
    model = model or meta.get(BASE_MODEL_KEY)
    if not model:
        raise BaseModelError(f"{weights}: the file does not record its timm model; give --model")
    kwargs = {**json.loads(meta.get(BASE_KWARGS_KEY, "{}")), **model_kwargs}
    try:
        relative = os.path.relpath(weights.resolve(), Path(recorded_in).resolve())
    except ValueError:  # another drive (Windows): only an absolute path can point there
        relative = str(weights.resolve())
    # The sha256 is filled in by build_model, from the same read that loads the weights.
    return BaseRecord(model, kwargs, "file", relative, init_seed=seed), weights


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier", "head") if hasattr(model, "pretrained_cfg") else "head"
    return (names,) if isinstance(names, str) else tuple(names)


def _load_base_weights(model: nn.Module, path: Path, sha256: str | None) -> str:
    """Load every weight but the classifier's (a new head is trained); anything else missing is an error.

    The file is read once: its sha256 (returned) is checked against `sha256`, when given, before any
    weight is loaded.
    """
    heads = _classifier_keys(model)
    is_head = lambda key: any(key == h or key.startswith(h + ".") for h in heads)  # noqa: E731
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256:
        raise BaseModelError(f"{path}: sha256 {digest[:16]}... differs from the base this classifier was "
                             f"trained on (sha256 {sha256[:16]}...); pass that base")
    tensors, _ = container.parse(data, path)
    del data
    wanted = {k: v for k, v in tensors.items() if not is_head(k)}
    model_keys = {k: v.shape for k, v in model.state_dict().items() if not is_head(k)}
    missing = sorted(set(model_keys) - set(wanted))
    extra = sorted(set(wanted) - set(model_keys))
    wrong = sorted(k for k in set(wanted) & set(model_keys) if wanted[k].shape != model_keys[k])
    if missing or extra or wrong:
        raise BaseModelError(f"{path}: the weights do not fit this model (missing {missing[:3]}, unexpected "
                             f"{extra[:3]}, other shapes {wrong[:3]}); give the --model and --model-kwargs they "
                             "were made with")
    model.load_state_dict(wanted, strict=False)
    return digest


def build_model(record: BaseRecord, num_classes: int, weights: str | os.PathLike | None = None) -> nn.Module:
    """The base model with a new `num_classes` head. `weights` is the local file for source "file": it must
    match `record.sha256`, or, where the record has none yet, gives it."""
    import timm

    torch.manual_seed(record.init_seed)  # the random parts (new head, or everything for "none") are seeded
    name = record.hub_tag if record.source == "hub" and record.hub_tag else record.model
    model = timm.create_model(name, pretrained=record.source == "hub", num_classes=num_classes,
                              **record.model_kwargs)
    if record.source == "file":
        if weights is None:
            raise BaseModelError("a base from a file needs its weights path")
        record.sha256 = _load_base_weights(model, Path(weights), record.sha256)
    return model


def hub_tag(model: nn.Module) -> str | None:
    """'architecture.tag' of a pretrained timm model: pins the exact weights, not just the family."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if cfg.get("architecture") and cfg.get("tag"):
        return f"{cfg['architecture']}.{cfg['tag']}"
    return cfg.get("architecture")


def base_title(base: BaseRecord) -> str:
    """What the base is, in words for a plot's title: a local file names itself and the timm architecture it
    was built as, with the kwargs that make it differ from that family's defaults; a hub base its pinned tag;
    a random init its seed."""
    custom = ", ".join(f"{k}={v}" for k, v in sorted(base.model_kwargs.items()))
    built = f"timm {base.model}" + (f" with {custom}" if custom else "")
    if base.source == "file":
        return f"{Path(base.weights).name if base.weights else 'local weights'} ({built})"
    if base.source == "hub":
        return f"{base.hub_tag or base.model} (pretrained{', ' + custom if custom else ''})"
    return f"{built}, random init (seed {base.init_seed})"


def describe(kind: str, base: BaseRecord, class_to_idx: dict[str, int], preprocess: Preprocess) -> dict[str, str]:
    """The metadata entry of a classifier file."""
    return {METADATA_KEY: json.dumps({"kind": kind, "base": asdict(base), "class_to_idx": class_to_idx,
                                      "preprocess": preprocess.to_dict()}, sort_keys=True)}


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Every weight of a plain timm model (no adapter layers) to safetensors, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return container.write(path, state, {"format": "pt", **metadata})


@dataclass
class Classifier:
    model: nn.Module
    classes: list[str]
    preprocess: Preprocess


def _resolve_weights(record: BaseRecord, recorded_in: Path, override: str | os.PathLike | None) -> Path | None:
    if record.source != "file":
        return None
    path = Path(override) if override else recorded_in.parent / (record.weights or "")
    if not path.is_file():
        raise BaseModelError(f"{path}: base weights not found (recorded as {record.weights!r}); "
                             "pass the base file with --weights FILE")
    return path  # build_model checks its sha256 as it reads it


def load_classifier(path: str | os.PathLike, *, weights: str | os.PathLike | None = None) -> Classifier:
    """Rebuild a classifier from a file the recipe wrote; `weights` overrides the recorded base path."""
    path = Path(path)
    tensors, meta = container.read(path)
    if METADATA_KEY not in meta:
        raise BaseModelError(f"{path}: no '{METADATA_KEY}' metadata; this file was not written by the "
                             "classification recipe")
    info = json.loads(meta[METADATA_KEY])
    base = BaseRecord.from_dict(info["base"])
    class_to_idx = info["class_to_idx"]
    classes = [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    if info["kind"] == "model":
        model = build_model(BaseRecord(base.model, base.model_kwargs), len(classes))
        model.load_state_dict(tensors)
    else:
        model = build_model(base, len(classes), _resolve_weights(base, path, weights))
        load_adapter(model, path, strict=True)
    return Classifier(model.eval(), classes, Preprocess.from_dict(info["preprocess"]))


@torch.no_grad()
def predict(classifier: Classifier, images: list[str | os.PathLike], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) per image, most likely first. Images decode as in training."""
    from ..images import decode_image

    transform = classifier.preprocess.eval_transform()
    batch = torch.stack([transform(decode_image(p)) for p in images])  # [N, 3, S, S]
    probs = classifier.model(batch).float().softmax(dim=-1)           # [N, classes]
    values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [[(classifier.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
            for vs, ix in zip(values, indices)]
