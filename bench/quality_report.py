"""The quality scorecard's one table (markdown) and its sample grids, from bench/quality.py's results."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

TRAINERS = ("vislora", "peer")


def _num(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _yes(flag) -> str:
    return "—" if flag is None else ("yes" if flag else "**no**")


def _row(task: str, measure: str, goal: str, base, values: dict, meets, better) -> list[str]:
    """One table line: values maps trainer -> shown text; meets maps trainer -> bool (the goal)."""
    return [task, measure, goal, base, *(values.get(t, "—") for t in TRAINERS),
            " / ".join(_yes(meets.get(t)) if t in values else "—" for t in TRAINERS), _yes(better)]


def _at_least(values: dict, goal: float) -> dict:
    return {t: v >= goal for t, v in values.items() if v is not None}


def _vs_peer(values: dict, higher_is_better: bool = True):
    if "vislora" not in values or "peer" not in values:
        return None
    return values["vislora"] >= values["peer"] if higher_is_better else values["vislora"] <= values["peer"]


def _seconds_rows(task: str, runs: list[dict], goals: dict) -> list[list[str]]:
    """Steps the defaults give and CPU seconds per run (max, with the mean and the wall time's max)."""
    steps, shown, meets = {}, {}, {}
    for t in TRAINERS:
        mine = [r[t] for r in runs if t in r and r[t]["cpu_s"] is not None]  # None: reused, not timed
        if mine:
            steps[t] = "/".join(sorted({str(m["steps"]) for m in mine}, key=int))
            cpu = [m["cpu_s"] for m in mine]
            shown[t] = f"{max(cpu):.0f} (mean {statistics.mean(cpu):.0f}; wall max {max(m['wall_s'] for m in mine):.0f})"
            meets[t] = max(cpu) <= goals["seconds"]
    return [_row(task, "training steps the defaults give", "", "", steps, {}, None),
            _row(task, "CPU s per run, max", f"≤ {goals['seconds']:.0f}", "", shown, meets, None)]


def dreambooth_rows(runs: list[dict], goals: dict) -> list[list[str]]:
    rows = []
    for mode, label in (("prior", "preservation on"), ("no_prior", "no preservation")):
        mine = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["subject"])
        if not mine:
            continue
        task = f"DreamBooth, {label} (subjects {' '.join(str(r['subject']) for r in mine)})"
        fidelity = {t: [r[t]["fidelity"] for r in mine] for t in ("base", *TRAINERS) if all(t in r for r in mine)}
        kept = {t: [v for r in mine for v in r[t]["preservation"].values()] for t in ("base", *TRAINERS)
                if all(t in r for r in mine)}
        for measure, values, reduce, goal in (
                ("fidelity, mean", fidelity, statistics.mean, "fidelity_mean"),
                ("fidelity, worst subject", fidelity, min, "fidelity_worst"),
                ("preservation, mean over other digits", kept, statistics.mean, "preservation_mean"),
                ("preservation, worst digit", kept, min, "preservation_worst")):
            reduced = {t: reduce(v) for t, v in values.items()}
            trained = {t: v for t, v in reduced.items() if t != "base"}
            rows.append(_row(task, measure, f"≥ {goals[goal]:.2f}", _num(reduced.get("base")),
                             {t: _num(v) for t, v in trained.items()}, _at_least(trained, goals[goal]),
                             _vs_peer(trained)))
        rows += _seconds_rows(task, mine, goals)
    return rows


def style_rows(runs: list[dict], goals: dict) -> list[list[str]]:
    rows = []
    for r in runs:
        task = f"style {r['style']}, {'trigger' if r['captions'] == 'trigger' else 'no style word'} captions"
        span = f"{r['measure']}: base {r['base']['value']:.2f} -> pictures {r['training_value']:.2f}"
        moved, shown, legible, meets, meets_legible = {}, {}, {}, {}, {}
        for t in TRAINERS:
            if t not in r:
                continue
            at = r[t]["strengths"]
            moved[t] = at["1.0"]["moved"]
            steps = " / ".join(f"{at[s]['moved']:.2f}" for s in ("0.0", "0.5", "1.0"))
            shown[t] = f"{moved[t]:.2f} ({steps})"
            if not at["0.0"]["equals_base"]:
                shown[t] += ", 0 ≠ base"
            meets[t] = moved[t] >= goals["style_move"] and r[t]["monotone"] and at["0.0"]["equals_base"]
            legible[t] = at["1.0"]["legibility"]
            meets_legible[t] = legible[t] >= goals["style_legibility"]
        rows.append(_row(task, f"moved at strength 1 (0 / 0.5 / 1); {span}",
                         f"≥ {goals['style_move']:.2f}, rising, 0 = base", "0", shown, meets, _vs_peer(moved)))
        rows.append(_row(task, "legibility at strength 1", f"≥ {goals['style_legibility']:.2f}",
                         _num(r["base"]["legibility"]), {t: _num(v) for t, v in legible.items()}, meets_legible,
                         _vs_peer(legible)))
    if runs:
        rows += _seconds_rows(f"styles ({len(runs)} runs)", runs, goals)
    return rows


def classify_rows(entry: dict, goals: dict) -> list[list[str]]:
    task = f"classify, {entry['images']} images of 5 digits, top-1 on {entry['held_out']} held out"
    default = entry["vislora"]
    rows = [_row(task, "top-1 with the defaults", "", "", {"vislora": _num(default["val_top1"], 3)}, {}, None)]
    if entry["sweep"]:
        best = max(entry["sweep"], key=lambda s: s["val_top1"])
        gap = 100 * (best["val_top1"] - default["val_top1"])
        rows.append(_row(task, f"best of a {len(entry['sweep'])}-run sweep: {best['flags']}", "", "",
                         {"vislora": _num(best["val_top1"], 3)}, {}, None))
        rows.append(_row(task, "defaults behind the best, points", f"≤ {goals['classify_gap_points']:.0f}", "",
                         {"vislora": f"{gap:.1f}"}, {"vislora": gap <= goals["classify_gap_points"]}, None))
    rows.append(_row(task, "CPU s, defaults (wall)", f"≤ {goals['seconds']:.0f}", "",
                     {"vislora": f"{default['cpu_s']:.0f} ({default['wall_s']:.0f})"},
                     {"vislora": default["cpu_s"] <= goals["seconds"]}, None))
    return rows


def table(results: dict, goals: dict) -> str:
    runs = list(results["runs"].values())
    rows = dreambooth_rows([r for r in runs if r["task"] == "dreambooth"], goals)
    rows += style_rows([r for r in runs if r["task"] == "style"], goals)
    if "classify" in results["runs"]:
        rows += classify_rows(results["runs"]["classify"], goals)
    head = ["task", "measure", "goal", "base", "vislora", "peer (diffusers example)", "goal met (vislora / peer)",
            "vislora ≥ peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def pictures(results: dict, folder: Path, copy_to: str | None = None) -> list[Path]:
    """One grid per task: each row a run, each cell several drawings (upscaled nearest-neighbour)."""
    from PIL import Image, ImageOps

    from vislora.train.plots import save_grid

    runs = list(results["runs"].values())
    grids = []
    plans = {
        "dreambooth-prior": ([r for r in runs if r["task"] == "dreambooth" and r["mode"] == "prior"],
                             ("base", "vislora", "peer", "vislora others", "peer others"),
                             "DreamBooth, preservation on. Cells: 'a <trigger> digit' by base | vislora | peer; "
                             "then the nine other digits by vislora | peer"),
        "dreambooth-no_prior": ([r for r in runs if r["task"] == "dreambooth" and r["mode"] == "no_prior"],
                                ("base", "vislora", "peer", "vislora others", "peer others"),
                                "DreamBooth, no preservation. Cells: 'a <trigger> digit' by base | vislora | peer; "
                                "then the nine other digits by vislora | peer"),
        "styles": ([r for r in runs if r["task"] == "style"],
                   ("training", "base", "vislora 0.5", "vislora 1", "peer 0.5", "peer 1"),
                   "Styles. Cells: training pictures | base | vislora at 0.5, 1 | peer at 0.5, 1"),
    }
    for name, (mine, cells, title) in plans.items():
        if not mine:
            continue
        if not any(c.startswith("peer") for r in mine for c in r["cells"]):  # a vislora-only scorecard
            title = title.replace(" | peer at 0.5, 1", "").replace(" | peer", "")
        rows, labels = [], []
        for r in mine:
            rows.append([ImageOps.expand(Image.open(r["cells"][c]), border=4, fill="white")  # a margin between cells
                         for c in cells if c in r["cells"]])
            labels.append(f"subject {r['subject']}, {r['trigger']!r}" if r["task"] == "dreambooth"
                          else f"{r['style']}, {r['captions']} captions: {r['prompt']!r}")
        grids.append(save_grid(folder / f"{name}.png", rows, labels, title, scale=2))
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        for grid in grids:
            shutil.copyfile(grid, Path(copy_to) / grid.name)
    return grids
