"""A diffusion recipe run in two CPU processes (gloo) and its adapter compared with a one-process run's: what
the data-parallel tests of every family share.

    done = launch(RECIPE, argv)                         # torchrun --standalone --nproc_per_node 2 RECIPE argv
    done = launch(RECIPE, argv, fsdp=True)              # accelerate launch --use_fsdp --fsdp_version 2 ...
    gap = adapter_gap(out / "adapter.safetensors", reference)   # max |difference|, after checking both moved
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from vislora.formats import container

PROCESSES = 2


def launch(script: Path, argv: list[str], *, fsdp: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script argv` in two CPU processes: with torchrun (what `accelerate launch` does for data parallel),
    or with `accelerate launch` configured for FSDP as `accelerate config` would write it (version 2: accelerate
    refuses its version 1 on CPUs)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    bin_dir = Path(sys.executable).parent
    if fsdp:
        command = [str(bin_dir / "accelerate"), "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes",
                   str(PROCESSES), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        command = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", str(PROCESSES)]
    return subprocess.run([*command, str(script), *argv], capture_output=True, text=True, env=env, timeout=timeout)

def adapter_gap(adapter: Path, reference: dict[str, torch.Tensor]) -> float:
    """The largest |difference| between the file's tensors and `reference`'s (the same names), once the run is
    known to have trained: its lora_B factors (zero at the start) moved."""
    got = container.read(adapter)[0]
    assert set(got) == set(reference)
    assert max(v.abs().max().item() for k, v in got.items() if "lora_B" in k) > 1e-3
    return max((got[k] - reference[k]).abs().max().item() for k in got)
