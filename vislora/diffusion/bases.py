"""Where a Stable Diffusion base comes from, loaded the ways users have it, and what it is.

    base = load_pipeline("runwayml/stable-diffusion-v1-5")   # hub id, diffusers folder, or one .safetensors file
    base = load_pipeline("model.safetensors", config="sd15-configs/")   # a single file, offline
    base.arch, base.prediction, base.record  -> "sd1", "epsilon", {"source": "hub", "commit": ...}

Pickled weights (.ckpt, .bin, .pt) are refused with the same `UnsafeFormatError` as adapter files, by their
first bytes, before any library can unpickle them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import UnsafeFormatError, VisloraError
from ..formats.container import sniff
from ..basics import sha256_file
from ..quiet import DropWarnings
from .quantize import describe as describe_quantization, lean_backward, quantization

# Cross-attention width -> architecture (SD1.x: CLIP ViT-L; SD2.x: OpenCLIP ViT-H). SDXL has text_encoder_2.
ARCH_BY_CROSS_WIDTH = {768: "sd1", 1024: "sd2"}
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# Keys only an SDXL single-file checkpoint has (its second text encoder, in the original layout).
_SDXL_KEYS = ("conditioner.embedders.1.",)
_UNET_PREFIX = "model.diffusion_model."  # the UNet in a single-file (LDM layout) checkpoint


def _dtype_keyword() -> str:
    """diffusers renamed from_pretrained's `torch_dtype` to `dtype` (and warns on the old name)."""
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


class BaseModelError(VisloraError):
    """The diffusion base cannot be loaded as given (missing, unsafe, or not a Stable Diffusion pipeline)."""


@dataclass
class DiffusionBase:
    """A loaded pipeline and what it is: arch "sd1" | "sd2" | "sdxl" | "custom" (other widths, e.g. tiny
    test pipelines), prediction "epsilon" | "v_prediction", and the provenance recorded in adapter files."""

    pipe: Any
    arch: str
    prediction: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.arch == "sdxl"


def refuse_pickle(path: Path) -> None:
    """UnsafeFormatError for a pickle or zip-of-pickles (any suffix), by its first bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
    try:
        sniff(path, head)
    except UnsafeFormatError:
        raise
    except VisloraError as e:
        if path.suffix.lower() in PICKLE_SUFFIXES:  # unknown bytes under a pickle's name: still refuse it
            raise UnsafeFormatError(f"{path.suffix} files are pickles; vislora loads .safetensors only",
                                    path=path, category="pickle") from None
        raise BaseModelError(str(e)) from None


def _check_folder(root: Path) -> None:
    """Every weights file in a diffusers folder must have a safetensors form; a component with pickles only is refused."""
    for part in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [p for p in part.iterdir() if p.is_file()]
        if any(p.suffix == ".safetensors" for p in files):
            continue
        for p in files:
            if p.suffix.lower() in PICKLE_SUFFIXES:
                refuse_pickle(p)  # raises for a real pickle
                raise UnsafeFormatError("only pickled weights here; convert them to .safetensors",
                                        path=p, category="pickle")


def _single_file_class(path: Path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:  # reads the header only
        keys = list(f.keys())
    if not any(k.startswith(_UNET_PREFIX) for k in keys):  # else diffusers guesses a repo and asks the hub
        what = ("it looks like an adapter file (pass it with --lora)" if any("lora" in k.lower() for k in keys)
                else f"its {len(keys)} tensors are named like {keys[0] if keys else 'nothing'!r}")
        raise BaseModelError(f"--model {path}: not a diffusion model: a Stable Diffusion checkpoint keeps its "
                             f"UNet under {_UNET_PREFIX}*, and {what}. Give a diffusers pipeline folder "
                             "(with model_index.json) or an A1111/ComfyUI checkpoint")
    sdxl = any(k.startswith(_SDXL_KEYS) for k in keys)
    return StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline


def _first_line(error: BaseException) -> str:
    """The error's first line, without diffusers' pointer to a stack trace the user is not shown."""
    text = str(error).replace(" Please check out the root cause in the stacktrace above.", "").strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def _quiet(logger_name: str, *phrases: str) -> Iterator[None]:
    """The logger's records that contain any of `phrases` dropped for the block only."""
    logger = logging.getLogger(logger_name)
    quiet = DropWarnings(phrases)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _quiet_fp32_cast_warning() -> contextlib.AbstractContextManager:
    """from_single_file casts each model with `.to(dtype)`, and diffusers then warns that modules "should be
    kept in float32" (listing none, []). Bases load in float32 here, so nothing is cast below it and the
    warning never applies; it is dropped for this call only."""
    return _quiet("diffusers.models.modeling_utils", "should be kept in float32")


def _from_single_file(path: Path, config: str | None) -> Any:
    """diffusers' from_single_file, with its hub failures as one BaseModelError that says what to pass.

    A single file holds weights only; diffusers takes the architecture's configs (and tokenizer) from `config`,
    or else from the hub repo of the architecture it recognises, which fails offline."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled

    kwargs = {"config": config} if config else {}
    try:
        with _quiet_fp32_cast_warning():
            return _single_file_class(path).from_single_file(str(path), **{_dtype_keyword(): torch.float32}, **kwargs)
    except (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, ConnectionError) as e:
        reason = _first_line(e)
        if config:
            raise BaseModelError(f"--model-config {config}: its configs do not load ({reason})") from None
        raise BaseModelError(f"--model {path}: a single .safetensors checkpoint needs its architecture's diffusers "
                             f"configs, and fetching them from the hub failed ({reason}). Offline, pass "
                             "--model-config with a diffusers folder of the same architecture") from None


def _from_folder(path: Path, flag: str, quantize: str | None) -> Any:
    """DiffusionPipeline.from_pretrained on a folder in fp32, the denoiser quantized as `quantize` names (None:
    not); a damaged component (a truncated or corrupt weights file, a bad config) is a BaseModelError in one
    line, not diffusers' traceback."""
    from diffusers import DiffusionPipeline

    try:
        components = json.loads((path / "model_index.json").read_text())
        kwargs = {"quantization_config": quantization(quantize, components)} if quantize else {}
        return DiffusionPipeline.from_pretrained(str(path), use_safetensors=True,
                                                 **{_dtype_keyword(): torch.float32}, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise BaseModelError(f"{flag}: a component does not load ({_first_line(e)}); the folder is "
                             "damaged or incomplete: copy or download it again") from None


def _load(model: str, config: str | None, revision: str | None,
          quantize: str | None = None) -> tuple[Any, dict[str, Any]]:
    from diffusers import DiffusionPipeline

    path = Path(model)
    if revision and path.exists():
        raise BaseModelError(f"--revision {revision}: it picks a hub commit, and --model {model} is a local "
                             f"{'file' if path.is_file() else 'folder'}")
    if quantize and path.is_file():
        raise BaseModelError(f"--quantize-base {quantize}: quantizes a diffusers folder or hub id as it loads, and "
                             f"--model {model} is a single file; convert it to a diffusers folder first")
    if path.is_file():
        refuse_pickle(path)
        pipe = _from_single_file(path, config)
        local = config and Path(config).exists()  # a folder (made absolute, as the path is) or a hub id
        return pipe, {"source": "file", "path": str(path.resolve()), "sha256": sha256_file(path),
                      "config": str(Path(config).resolve()) if local else config}
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise BaseModelError(f"--model {path}: not a diffusion model: a diffusers pipeline folder has a "
                                 "model_index.json, and this folder has none")
        _check_folder(path)
        pipe = _from_folder(path, f"--model {model}", quantize)
        weights = sorted((path / "unet").glob("*.safetensors"))
        return pipe, {"source": "folder", "path": str(path.resolve()),
                      "unet_sha256": sha256_file(weights[0]) if weights else None}
    if path.suffix.lower() in PICKLE_SUFFIXES + (".safetensors",) or not _HUB_ID.match(model):
        raise BaseModelError(f"--model {model}: no such file or folder (nor a hub id like 'owner/name')")
    # The hub, for users who are online (or offline, from their cache): safetensors files only are fetched, at
    # `revision` (a branch, tag or commit; main by default), then loaded from the snapshot folder, whose name
    # is the commit they came from.
    try:
        snapshot = Path(DiffusionPipeline.download(model, use_safetensors=True, revision=revision))
    except OSError as e:  # the hub's errors (not found, gated, offline, no connection) are OSErrors
        raise BaseModelError(f"--model {model}: not a local file or folder, and the hub id does not load "
                             f"({_first_line(e)})") from None
    _check_folder(snapshot)
    pipe = _from_folder(snapshot, f"--model {model}", quantize)
    return pipe, {"source": "hub", "name": model, "commit": snapshot.name}


def thread_count(text: str) -> int:
    """argparse type for --threads: a whole number, 1 or more (torch.set_num_threads)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of CPU threads, 1 or more")
    return int(text)


def add_threads_option(parser: Any) -> None:
    """--threads, as the training recipes have it: CPU threads for torch (its own choice when left out)."""
    parser.add_argument("--threads", type=thread_count, help="CPU threads (default: torch's choice)")


def add_source_options(parser: Any) -> None:
    """load_pipeline's `config` and `revision` as --model-config and --revision, on an argparse parser or
    group (every command that takes --model has them)."""
    parser.add_argument("--model-config", help="for a single file: a diffusers folder or hub id with its configs")
    parser.add_argument("--revision", help="for a hub id: the branch, tag or commit to use (default: main); the "
                        "commit it resolves to is recorded")


def architecture(pipe: Any) -> str:
    """"sd3" / "flux1" / "flux2" (by the transformer's class), "sdxl" (two text encoders), "sd1"/"sd2" by
    cross-attention width, else "custom"."""
    from .flow_text import transformer_family

    family = transformer_family(pipe)
    if family is not None:
        return family.lower().replace(".", "")
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return ARCH_BY_CROSS_WIDTH.get(pipe.unet.config.cross_attention_dim, "custom")


@contextlib.contextmanager
def _loading_bars(show: bool) -> Iterator[None]:
    """diffusers' and transformers' loading bars on or off for the block (their switches are global)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    show = show and sys.stderr.isatty()  # bars in a log file are noise
    for lib, on in ((dlog, show), (tlog, show)):
        lib.enable_progress_bar() if on else lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, on in zip((dlog, tlog), before):
            lib.enable_progress_bar() if on else lib.disable_progress_bar()


def load_sampler(model: str, *, config: str | None = None, revision: str | None = None,
                 progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Any diffusers pipeline, loaded from the same sources under the same checks as `load_pipeline`, for
    drawing only: UNet pipelines and diffusion transformers (Flux.1, Flux.2, SD3) alike. (pipe, provenance)."""
    with _loading_bars(progress):
        pipe, record = _load(model, config, revision)
    pipe.set_progress_bar_config(disable=True)
    record.update(pipeline=type(pipe).__name__)
    return pipe, record


def load_pipeline(model: str, *, config: str | None = None, revision: str | None = None,
                  progress: bool = False, quantize: str | None = None) -> DiffusionBase:
    """A Stable Diffusion pipeline from a diffusers folder, a hub id (at `revision`: a branch, tag or commit),
    or one .safetensors checkpoint (`config`: a local diffusers folder or hub id giving its configs, for
    offline use), in fp32; with `quantize` (vislora.diffusion.quantize: "int8", "nf4"), a folder's or hub id's
    denoiser quantized as it loads, recorded as the record's "quantized"."""
    with _loading_bars(progress):
        pipe, record = _load(model, config, revision, quantize)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is None or getattr(pipe, "vae", None) is None:
        raise BaseModelError(f"--model {model}: a {type(pipe).__name__} has no unet (or transformer) and vae to "
                             "train on")
    if quantize:
        record["quantized"] = describe_quantization(quantize)
        lean_backward(denoiser)  # no dense copy of each weight kept from forward to backward
    pipe.set_progress_bar_config(disable=True)
    flow = getattr(pipe, "unet", None) is None  # SD3 and Flux: flow matching (vislora.diffusion.flow)
    prediction = "flow" if flow else pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction", "flow"):
        raise BaseModelError(f"--model {model}: prediction type {prediction!r} is not trained here "
                             "(epsilon and v_prediction are)")
    arch = architecture(pipe)
    record.update(arch=arch, prediction=prediction, pipeline=type(pipe).__name__)
    return DiffusionBase(pipe, arch, prediction, record)
