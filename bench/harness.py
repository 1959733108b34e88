"""Side-by-side timing and memory for benchmarks: interleaved rounds, ratios taken within each round.

CPU timings drift (thermal, other processes), so every variant runs once per round, in a rotating order,
and each variant's ratio to the reference is the median over rounds of (variant time / reference time in
the same round).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch


def interleaved(steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each step, `rounds` times, in rotating order. `clock=time.process_time` counts
    only the CPU time this process got (for single-threaded runs on a machine shared with other work)."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            start = clock()
            steps[n]()
            times[n].append(clock() - start)
    return times


def add_clock_option(parser) -> None:
    parser.add_argument("--cpu-time", action="store_true", help="one thread; time.process_time instead of wall time")


def clock_of(args) -> Callable[[], float]:
    """The clock --cpu-time picks: one thread and this process's CPU time (a machine shared with other work),
    else wall time."""
    if getattr(args, "cpu_time", False):
        torch.set_num_threads(1)
        return time.process_time
    return time.perf_counter


def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep freed memory for reuse instead of handing it back to the kernel.

    By default, blocks above a size threshold are mmap-ed and unmapped on free, so the next step touches
    fresh pages and pays page faults in whichever op first writes them. tcmalloc and jemalloc keep such
    memory; this gives glibc the same habit, so times reflect the arithmetic rather than the allocator.
    Returns False where there is no glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    # mallopt takes a C int: the largest one, not 2**40 (which would wrap to 0 and trim on every free).
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


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


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def step_peak_mib(step: Callable[[], None]) -> float:
    """Peak resident memory one call of `step` adds on top of what the process already holds (Linux).

    The kernel's high-water mark is reset just before the call (clear_refs 5), so model construction and
    earlier steps do not count. Run under MALLOC_MMAP_THRESHOLD_ (see in_subprocess) so freed tensors are
    returned to the system rather than kept in the heap.
    """
    step()  # warm up: lazy state, optimizer moments
    before = status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return status_mib("VmHWM") - before


def in_subprocess(script: str, args: list[str], for_memory: bool = False) -> dict:
    """Run `script args` in a fresh interpreter; it prints one JSON line last.

    for_memory: big blocks come from mmap and go back on free, so the peak-RSS counter sees each step's own
    memory (see step_peak_mib). Timing runs keep the allocator's defaults, as a user's process has them.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if for_memory else None
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def bar_chart(panels: dict[str, dict[str, float]], path: str, xlabel: str, reference: float | None = 1.0) -> None:
    """One horizontal bar panel per case: value per variant, vislora in blue, peers in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 0.5 * max(map(len, panels.values())) + 1.5),
                             squeeze=False)
    for ax, (title, values) in zip(axes[0], panels.items()):
        names = list(values)[::-1]
        colors = ["tab:blue" if n.startswith("vislora") else "0.6" for n in names]
        ax.barh(names, [values[n] for n in names], color=colors)
        for i, n in enumerate(names):
            ax.text(values[n], i, f" {values[n]:.3f}", va="center", fontsize=8)
        if reference is not None:
            ax.axvline(reference, color="k", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        lo = min(values.values())
        ax.set_xlim(min(lo, reference or lo) * 0.95, max(values.values()) * 1.08)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
