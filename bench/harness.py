"""Side-by-side timing and memory for benchmarks: interleaved rounds, ratios taken within each round.

CPU timings drift (thermal, other processes), so every variant runs once per round, in a rotating order,
and each variant's ratio to the reference is the median over rounds of (variant time / reference time in
the same round).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch


def interleaved(steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each step, `rounds` times, in rotating order."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            start = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


class SavedActivations:
    """Bytes autograd saves for backward, excluding parameters (deduplicated by storage)."""

    def __init__(self, params) -> None:
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.param_ptrs:
            self.seen[storage.data_ptr()] = storage.nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def mib(self) -> float:
        return sum(self.seen.values()) / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def in_subprocess(script: str, args: list[str]) -> dict:
    """Run `script args` in a fresh interpreter (a clean peak-RSS counter); it prints one JSON line last."""
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
