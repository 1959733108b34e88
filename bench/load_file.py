"""Time and peak memory of reading a large adapter file, each measurement in a fresh process.

    python bench/load_file.py                 # makes /tmp/vislora-bench/adapter-300mb.safetensors once, then
                                              # reads it with read_adapter (every check, every value) and with
                                              # inspect's header-only read, 3 fresh processes each
    python bench/load_file.py --mb 1000 --runs 1
    python bench/load_file.py --layout kohya-flux --mb 600   # a kohya Flux.1-dev LoRA as kohya trains it: BFL's
                                              # fused layers (qkv, linear1) at one rank, bf16, split on reading
    python bench/load_file.py --root /tmp/old      # an older vislora (git archive OLD vislora | tar -x -C /tmp/old)

Wall time depends on what else the machine runs; CPU time (the process's own) much less so: compare that
on a shared machine. Peak memory is the process's maximum resident set (ru_maxrss) minus its resident set just before the read,
so the interpreter and torch do not count. The file is read once before timing so it sits in the page
cache: the figures are the reader's cost, not the disk's.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make(path: Path, mb: int) -> None:
    """A vislora-format LoRA of about `mb` MB: rank-64 modules on 4096-wide Linears, fp32, random factors."""
    import torch

    from vislora.formats import AdapterFile, ModuleWeights, write

    per_module = 2 * 64 * 4096 * 4
    gen = torch.Generator().manual_seed(0)
    modules = {f"blocks.{i}.mlp.fc": ModuleWeights("lora", {"down": torch.randn(64, 4096, generator=gen) * 0.01,
                                                           "up": torch.randn(4096, 64, generator=gen) * 0.01}, 64, 64.0)
               for i in range(max(1, mb * 1_000_000 // per_module))}
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, AdapterFile(str(path), "vislora", modules))


def make_kohya_flux(path: Path, mb: int) -> None:
    """A kohya Flux.1-dev LoRA of about `mb` MB as sd-scripts trains one: every original layer (fused qkv of both
    streams, fused single-block linear1, MLPs, modulation, embedders, final layer; 314 modules) at one rank,
    dense random factors (a LoRA trained on the fused layer), bf16. Shapes from the full-size model built on the
    meta device."""
    import torch
    from diffusers import FluxTransformer2DModel

    from vislora.formats import container
    from vislora.formats.kohya_flux import SECTIONS

    with torch.device("meta"):
        model = FluxTransformer2DModel(in_channels=64, guidance_embeds=True)
    shapes = {}
    for section in SECTIONS:
        group = section.kohya.partition("_blocks")[0].rpartition("_")[2]  # double / single / none
        blocks = {"double": model.transformer_blocks, "single": model.single_transformer_blocks}.get(group, [None])
        for i in range(len(blocks)):
            prefix = section.diffusers.format(i=i)
            for key, layer in section.layers.items():
                parts = [model.get_submodule(prefix + p) for p in layer.parts]
                shapes[section.kohya.format(i=i) + key] = (parts[0].in_features, sum(p.out_features for p in parts))
    rank = max(1, round(mb * 1e6 / (2 * sum(i + o for i, o in shapes.values()))))
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, (inp, out) in shapes.items():
        tensors[f"{name}.lora_down.weight"] = (torch.randn(rank, inp, generator=gen) * 0.01).bfloat16()
        tensors[f"{name}.lora_up.weight"] = (torch.randn(out, rank, generator=gen) * 0.01).bfloat16()
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    container.write(path, tensors, {"ss_network_module": "networks.lora_flux", "ss_network_dim": str(rank),
                                    "modelspec.architecture": "flux-1-dev/lora"})


MAKERS = {"vislora": make, "kohya-flux": make_kohya_flux}


def child(path: Path, how: str) -> None:
    import vislora  # noqa: F401  (imported before the baseline, as any caller has)
    from vislora import formats

    with open(path, "rb") as f:  # warm the page cache, 16 MB at a time (not counted in the peak)
        while f.read(1 << 24):
            pass
    before = rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    if how == "read":
        adapter = formats.read(path)
        touched = sum(float(t.float().abs().sum()) for w in adapter.modules.values() for t in w.factors.values())
    else:
        try:
            adapter = formats.read(path, values=False)
        except TypeError:  # a vislora without header-only reads: inspect read the whole file
            adapter = formats.read(path)
        touched = 0.0
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak - before, "modules": len(adapter.modules),
                      "checksum": touched, "vislora": vislora.__file__}))


def measure(path: Path, how: str, runs: int, root: Path | None) -> dict:
    results = []
    extra = ["--root", str(root)] if root else []
    for _ in range(runs):
        out = subprocess.run([sys.executable, __file__, "--child", how, "--path", str(path), *extra], check=True,
                             capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"seconds": statistics.median(r["seconds"] for r in results),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in results),
            "peak_mb": statistics.median(r["peak_mb"] for r in results), "vislora": results[0]["vislora"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=300)
    p.add_argument("--layout", choices=sorted(MAKERS), default="vislora", help="the file made when --path is not "
                   "given: vislora's own (rank-64 4096-wide modules, fp32) or a kohya Flux.1-dev LoRA")
    p.add_argument("--path", type=Path)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", choices=("read", "header"))
    p.add_argument("--root", type=Path, help="measure the vislora package in this folder (e.g. an older commit's "
                   "`git archive`) instead of the installed one")
    p.add_argument("--child", choices=("read", "header"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.root:  # the editable install's finder would win over sys.path: drop it
        sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        sys.path.insert(0, str(args.root))
    suffix = "" if args.layout == "vislora" else f"-{args.layout}"
    path = args.path or Path(f"/tmp/vislora-bench/adapter-{args.mb}mb{suffix}.safetensors")
    if args.child:
        child(path, args.child)
        return
    if not path.exists():
        MAKERS[args.layout](path, args.mb)
    size = path.stat().st_size / 1e6
    for how in (args.only,) if args.only else ("read", "header"):
        r = measure(path, how, args.runs, args.root)
        label = "read_adapter (all values)" if how == "read" else "header-only read (inspect)"
        print(f"{label:28s} {size:7.1f} MB file: {r['seconds']:.3f} s wall, {r['cpu_seconds']:.3f} s CPU, "
              f"peak RSS +{r['peak_mb']:.0f} MB "
              f"(median of {args.runs}; {r['vislora']})")


if __name__ == "__main__":
    main()
