"""The quality scorecard: do the recipes, run with their defaults as a user runs them, train adapters that learn
what they are shown? On the shipped digits base (samples/digits_sd), read back by samples/digit_scorer.py.

    python bench/quality.py --out runs/quality                       # everything (long: see bench/README.md)
    python bench/quality.py --quick --out runs/quality               # subjects 3 and 7, three styles, no sweep
    python bench/quality.py --tasks dreambooth --subjects 3 7 --out runs/quality
    python bench/quality.py --tasks style --styles rot90 bold --captions trigger --out runs/quality

Every training is a `vislora dreambooth|style|classify` process given only data, prompts and --out (plus
--threads and --no-progress): the recipe's defaults decide the rest, whatever they are. The peer, in the same
run, is diffusers' train_dreambooth_lora.py with its defaults (bench/peer_dreambooth.py), on the same data.

- DreamBooth: each subject digit in turn, from 5 real scans the scorer was not fitted on (the base saw all
  1,797 scans), taught as "a <trigger> digit" with a made-up trigger the tokenizer keeps as one token, with
  prior preservation ("a handwritten digit") and without. Fidelity: share of "a <trigger> digit" drawings read
  as the subject. Preservation: share of "a handwritten digit X" drawings read as X, for the nine other digits.
- Styles: 300 captioned pictures of a transformed style (samples/digit_styles.py), captioned with a trigger
  ("a handwritten digit three in <trigger> style") or with no style word at all. At strengths 0, 0.5 and 1:
  how far the style's measure moved from the base's drawings (0) to the training pictures (1), and the
  legibility of the asked digit (a geometric style's drawing is read after undoing it).
- Classification: 150 digit images of 5 classes (30 each), top-1 on 269 held-out images, with the defaults,
  and the best of a small sweep (--quick skips it).

Drawings: DPM-Solver++ 15 steps, guidance 5, fixed seeds, the same for base, vislora and peer. Seconds per task:
the training process's wall time and CPU time (user + system); on a machine shared with other work the CPU
time is the honest one. Writes OUT/quality.md (the table), OUT/quality.json (every number), OUT/pictures/*.png,
and each run's folder under OUT/runs/.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality_scores import (GOALS, ROOT, STYLE_MEASURES, legibility, monotone, moved, one_token,  # noqa: E402
                            pixels_equal, reads, style_value)
from quality_report import pictures, table  # noqa: E402
from vislora.train.plots import tile  # noqa: E402
from digit_scorer import split  # noqa: E402
from digit_styles import write_style_folder  # noqa: E402
from digits import DIGIT_WORDS, digit_caption, paper_digits, to_rgb_uint8, write_digits  # noqa: E402

BASE = ROOT / "samples" / "digits_sd"
VIT_BASE = ROOT / "samples" / "digits_base.safetensors"
CLASS_PROMPT = "a handwritten digit"
# Made-up words; each run takes the next one the base's tokenizer keeps whole (checked before use).
TRIGGERS = ("zwx", "ohwx", "sks", "q", "z", "x", "k", "j", "v", "w", "y", "u")
STYLES = ("rot90", "upside_down", "mirror", "bold", "thin", "italic")
CAPTIONS = {"trigger": "a handwritten digit {word} in TRIGGER style", "plain": "a handwritten digit {word}"}
STRENGTHS = (0.0, 0.5, 1.0)
DRAW_STEPS, GUIDANCE, SEED = 15, 5.0, 1000
PER_DIGIT = 30  # style pictures per digit: 300 in all
SWEEP = (["--epochs", "40", "--lr", "1e-2", "--batch-size", "16", "--hflip", "0"],
         ["--epochs", "40", "--lr", "3e-3", "--batch-size", "16", "--hflip", "0"],
         ["--epochs", "80", "--lr", "1e-2", "--batch-size", "16", "--hflip", "0"],
         ["--epochs", "40", "--lr", "1e-2", "--batch-size", "32", "--hflip", "0"],
         ["--epochs", "40", "--lr", "3e-2", "--batch-size", "16", "--hflip", "0"],
         ["--epochs", "20", "--lr", "1e-2", "--batch-size", "16"])


class Scorecard:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.out).resolve()
        args.base = str(Path(args.base).resolve())  # the training processes run in the repository root
        self.n_fidelity, self.n_preserve, self.n_style = (16, 8, 30) if args.quick else (32, 16, 50)
        self.common = ["--no-progress", *(["--threads", str(args.threads)] if args.threads else []),
                       *shlex.split(args.recipe_flags)]
        self.results: dict = {"runs": {}, "base": {}, "recipe_flags": args.recipe_flags}
        import torch

        torch.set_num_threads(1)  # drawing 32 px digits gains nothing from a second thread on shared cores
        self._pipes: dict = {}
        self.triggers = self._one_token_triggers()

    # -- processes ---------------------------------------------------------------------------------------------
    def timed(self, name: str, command: list[str]) -> dict:
        """Run one training process; its wall and CPU seconds. A failure stops the scorecard with its log."""
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        with log.open("w") as sink:
            status = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if status:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise SystemExit(f"{name}: exit status {status}; the log ({log}) ends:\n{tail}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(cpu, 1)}

    def trained(self, name: str, command: list[str]) -> tuple[Path, dict]:
        """Train into OUT/runs/NAME (or, with --reuse, take a finished run there as it is); its seconds."""
        run = self.out / "runs" / name
        record = run / "seconds.json"
        if self.args.reuse and (run / "metrics.json").is_file():
            return run, json.loads(record.read_text()) if record.is_file() else {"wall_s": None, "cpu_s": None}
        shutil.rmtree(run, ignore_errors=True)
        seconds = self.timed(name, [*command, "--out", str(run)])
        record.write_text(json.dumps(seconds))
        return run, seconds

    def vislora(self, verb: str, name: str, flags: list[str]) -> dict:
        run, seconds = self.trained(name, [sys.executable, "-m", "vislora.cli", verb, *flags, *self.common])
        metrics = json.loads((run / "metrics.json").read_text())
        keep = ("steps", "eval_loss_before", "eval_loss_after", "val_top1", "verdict")
        return {**seconds, **{k: metrics[k] for k in keep if k in metrics}, "adapter": str(run / "adapter.safetensors")}

    def peer(self, name: str, flags: list[str]) -> dict:
        threads = ["--threads", str(self.args.threads)] if self.args.threads else []
        run, seconds = self.trained(name, [sys.executable, str(HERE / "peer_dreambooth.py"), *flags, *threads])
        metrics = json.loads((run / "metrics.json").read_text())
        return {**seconds, "steps": metrics["steps"], "class_images_s": round(metrics["class_images_s"], 1),
                "adapter": str(run)}

    # -- drawing -----------------------------------------------------------------------------------------------
    def pipe(self, trainer: str):
        """One pipeline per trainer: vislora's adapters go in with vislora, the peer's with diffusers/PEFT."""
        if trainer not in self._pipes:
            if trainer == "vislora":
                from vislora.diffusion.bases import load_pipeline

                self._pipes[trainer] = load_pipeline(str(self.args.base)).pipe
            else:
                import torch
                from diffusers import StableDiffusionPipeline

                pipe = StableDiffusionPipeline.from_pretrained(self.args.base, torch_dtype=torch.float32,
                                                               safety_checker=None)
                pipe.set_progress_bar_config(disable=True)
                self._pipes[trainer] = pipe
        return self._pipes[trainer]

    def draw(self, trainer: str, prompts: list[str]) -> list:
        from vislora.diffusion.pipeline import generate

        pipe, drawn = self.pipe(trainer), []
        for start in range(0, len(prompts), 64):
            chunk = prompts[start:start + 64]
            drawn += generate(pipe, chunk, [SEED + i for i in range(start, start + len(chunk))], steps=DRAW_STEPS,
                              guidance=GUIDANCE)
        return drawn

    def load(self, trainer: str, adapter: str, name: str) -> None:
        if trainer == "vislora":
            import vislora

            vislora.load_adapter(self.pipe(trainer), adapter, name=name)
        else:
            self.pipe(trainer).load_lora_weights(adapter, weight_name="pytorch_lora_weights.safetensors",
                                                 adapter_name=name)

    def strength(self, trainer: str, name: str, value: float) -> None:
        if trainer == "vislora":
            import vislora

            vislora.set_strength(self.pipe(trainer), name, value)
        else:
            self.pipe(trainer).set_adapters([name], adapter_weights=[value])

    def unload(self, trainer: str, name: str) -> None:
        if trainer == "vislora":
            import vislora

            vislora.remove(self.pipe(trainer), name)
        else:
            self.pipe(trainer).delete_adapters(name)

    def _one_token_triggers(self) -> list[str]:
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(Path(self.args.base) / "tokenizer")
        kept = [w for w in TRIGGERS if one_token(tokenizer, w)]
        if len(kept) < 10:
            raise SystemExit(f"only {kept} of {TRIGGERS} are one token for {self.args.base}'s tokenizer")
        return kept

    # -- DreamBooth --------------------------------------------------------------------------------------------
    def subject_folder(self, digit: int) -> Path:
        """5 real scans of `digit` from the scorer's held-out split, as 32x32 PNGs."""
        from PIL import Image

        folder = self.out / "data" / f"subject-{digit}"
        folder.mkdir(parents=True, exist_ok=True)
        paper, labels = paper_digits(32)
        held = split(0)[1]
        picks = held[labels[held] == digit][:5]
        for index, rgb in zip(picks, to_rgb_uint8(paper[picks])):
            Image.fromarray(rgb, mode="RGB").save(folder / f"{int(index):04d}.png")
        return folder

    def base_preservation(self) -> dict[int, float]:
        if "preservation" not in self.results["base"]:
            self.results["base"]["preservation"] = self.preservation("vislora", range(10))[0]
        return {int(k): v for k, v in self.results["base"]["preservation"].items()}

    def preservation(self, trainer: str, digits) -> tuple[dict[int, float], list]:
        """Share of "a handwritten digit X" drawings read as X, per digit; and one drawing of each."""
        digits = list(digits)
        prompts = [digit_caption(d) for d in digits for _ in range(self.n_preserve)]
        drawn = self.draw(trainer, prompts)
        ok = reads(drawn, np.repeat(digits, self.n_preserve))
        shares = {d: float(ok[i * self.n_preserve:(i + 1) * self.n_preserve].mean()) for i, d in enumerate(digits)}
        return shares, drawn[::self.n_preserve]

    def dreambooth(self, subject: int) -> None:
        data, trigger = self.subject_folder(subject), self.triggers[subject]
        prompt = f"a {trigger} digit"
        others = [d for d in range(10) if d != subject]
        base_drawn = self.draw("vislora", [prompt] * self.n_fidelity)
        base = {"fidelity": float(reads(base_drawn, [subject] * self.n_fidelity).mean()),
                "preservation": {d: self.base_preservation()[d] for d in others}}
        for prior in (False, True):  # the shorter run first: a scorecard cut short keeps it
            mode = "prior" if prior else "no_prior"
            key = f"dreambooth-{subject}-{mode}"
            vislora_flags = ["--model", str(self.args.base), "--instance-data", str(data), "--instance-prompt", prompt]
            peer_flags = list(vislora_flags)
            if prior:
                vislora_flags += ["--prior-preservation", "--class-prompt", CLASS_PROMPT]
                peer_flags += ["--with-prior-preservation", "--class-prompt", CLASS_PROMPT,
                               "--class-data", str(self.out / "data" / "peer-class-images")]
            runs = {"vislora": self.vislora("dreambooth", f"{key}-vislora", vislora_flags)}
            if not self.args.no_peer:
                runs["peer"] = self.peer(f"{key}-peer", peer_flags)
            entry = {"task": "dreambooth", "subject": subject, "mode": mode, "trigger": prompt, "base": base,
                     "samples": {"base": tile(base_drawn[:10], columns=5)}}
            for trainer, run in runs.items():
                self.load(trainer, run["adapter"], "subject")
                drawn = self.draw(trainer, [prompt] * self.n_fidelity)
                kept, examples = self.preservation(trainer, others)
                self.unload(trainer, "subject")
                entry[trainer] = {**run, "fidelity": float(reads(drawn, [subject] * self.n_fidelity).mean()),
                                  "preservation": kept}
                entry["samples"][trainer] = tile(drawn[:10], columns=5)
                entry["samples"][f"{trainer} others"] = tile(examples, columns=5)
            self.record(key, entry)

    # -- styles ------------------------------------------------------------------------------------------------
    def style(self, style: str, captions: str) -> None:
        from PIL import Image

        trigger = self.triggers[STYLES.index(style)]
        template = CAPTIONS[captions].replace("TRIGGER", trigger)
        key = f"style-{style}-{captions}"
        data = write_style_folder(self.out / "data" / key, style, per_digit=PER_DIGIT, template=template)
        pictures_ = sorted(data.glob("*.png"))
        labels = paper_digits(32)[1][[int(p.stem) for p in pictures_]]
        training = [Image.open(p).convert("RGB") for p in pictures_]
        target = style_value(training, labels, style)
        digits = np.arange(self.n_style) % 10
        prompts = [template.format(word=DIGIT_WORDS[d]) for d in digits]
        runs = {"vislora": self.vislora("style", f"{key}-vislora", ["--model", str(self.args.base), "--data",
                                                                     str(data)])}
        if not self.args.no_peer:
            runs["peer"] = self.peer(f"{key}-peer", ["--model", str(self.args.base), "--instance-data", str(data)])
        base_drawn = self.draw("vislora", prompts)
        base_value = style_value(base_drawn, digits, style)
        entry = {"task": "style", "style": style, "captions": captions, "prompt": template,
                 "measure": STYLE_MEASURES[style][0], "training_value": target, "training_legibility":
                 legibility(training, labels, style), "base": {"value": base_value,
                                                               "legibility": legibility(base_drawn, digits, style)},
                 "samples": {"training": tile([training[list(labels).index(d)] for d in range(10)], columns=5),
                             "base": tile(base_drawn[:10], columns=5)}}
        for trainer, run in runs.items():
            base_here = base_drawn if trainer == "vislora" else self.draw(trainer, prompts)
            self.load(trainer, run["adapter"], "style")
            at = {}
            for strength in STRENGTHS:
                self.strength(trainer, "style", strength)
                drawn = self.draw(trainer, prompts)
                value = style_value(drawn, digits, style)
                at[str(strength)] = {"value": value, "moved": moved(value, base_value, target),
                                     "legibility": legibility(drawn, digits, style)}
                if strength == 0.0:
                    at[str(strength)]["equals_base"] = pixels_equal(drawn, base_here)
                else:
                    entry["samples"][f"{trainer} {strength:g}"] = tile(drawn[:10], columns=5)
            self.unload(trainer, "style")
            entry[trainer] = {**run, "strengths": at,
                              "monotone": monotone([at[str(s)]["moved"] for s in STRENGTHS])}
        self.record(key, entry)

    # -- classification ----------------------------------------------------------------------------------------
    def classify(self) -> None:
        train, val = write_digits(self.out / "data" / "digits59", range(5, 10))
        few = self.out / "data" / "classify150"
        for folder in sorted(train.iterdir()):
            (few / folder.name).mkdir(parents=True, exist_ok=True)
            for image in sorted(folder.iterdir())[:30]:
                shutil.copyfile(image, few / folder.name / image.name)
        data = ["--data", str(few), "--val-data", str(val), "--weights", str(VIT_BASE)]
        entry = {"task": "classify", "images": 150, "held_out": sum(1 for _ in val.rglob("*.png")),
                 "vislora": self.vislora("classify", "classify-default", data), "sweep": []}
        for i, flags in enumerate(() if self.args.quick else SWEEP):
            entry["sweep"].append({"flags": " ".join(flags), **self.vislora("classify", f"classify-sweep-{i}",
                                                                            data + flags)})
        self.record("classify", entry)

    # -- results -----------------------------------------------------------------------------------------------
    def record(self, key: str, entry: dict) -> None:
        """Keep the run's numbers (and its sample cells as PNGs beside it); rewrite OUT/quality.json at once,
        so a long scorecard that stops keeps what it measured."""
        cells = entry.pop("samples", {})
        folder = self.out / "cells" / key
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in cells.items():
            image.save(folder / f"{name.replace(' ', '_')}.png")
        entry["cells"] = {name: str(folder / f"{name.replace(' ', '_')}.png") for name in cells}
        self.results["runs"][key] = entry
        (self.out / "quality.json").write_text(json.dumps(self.results, indent=1, default=float))
        print(f"  {key}: done ({time.perf_counter() - self.started:.0f} s so far)", flush=True)

    def run(self) -> int:
        self.started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        previous = self.out / "quality.json"
        if self.args.keep and previous.is_file():  # add these pieces to the runs measured before
            self.results = json.loads(previous.read_text())
        tasks = self.args.tasks
        if "dreambooth" in tasks:
            for subject in self.args.subjects:
                self.dreambooth(subject)
        if "style" in tasks:
            for style in self.args.styles:
                for captions in self.args.captions:
                    self.style(style, captions)
        if "classify" in tasks:
            self.classify()
        seconds = time.perf_counter() - self.started
        self.results.setdefault("scorecard_s", {})[" ".join(sys.argv[1:])] = round(seconds, 1)
        text = table(self.results, GOALS)
        grids = pictures(self.results, self.out / "pictures", self.args.pictures)
        footer = f"\nscorecard time: {seconds:.0f} s wall for this invocation; training processes: " \
            f"{training_seconds(self.results)}\npictures: " + \
            ", ".join(str(g) for g in grids)
        (self.out / "quality.md").write_text(text + "\n")
        (self.out / "quality.json").write_text(json.dumps(self.results, indent=1, default=float))
        print("\n" + text + footer)
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(BASE), help="diffusers folder of a digits base (default samples/digits_sd)")
    p.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--tasks", nargs="+", choices=("dreambooth", "style", "classify"),
                   default=["dreambooth", "style", "classify"])
    p.add_argument("--subjects", type=int, nargs="+", choices=range(10), help="DreamBooth subjects (default 0-9)")
    p.add_argument("--styles", nargs="+", choices=STYLES, help=f"default: all ({', '.join(STYLES)})")
    p.add_argument("--captions", nargs="+", choices=tuple(CAPTIONS), default=list(CAPTIONS))
    p.add_argument("--quick", action="store_true", help="subjects 3 and 7, styles rot90 bold italic, fewer "
                   "drawings, no classification sweep (flags given explicitly still win)")
    p.add_argument("--no-peer", action="store_true", help="vislora only")
    p.add_argument("--reuse", action="store_true", help="score runs already trained under OUT/runs instead of "
                   "training them again (their seconds are those recorded when they were trained)")
    p.add_argument("--keep", action="store_true", help="add to OUT/quality.json instead of starting afresh")
    p.add_argument("--recipe-flags", default="", help="flags added to every vislora training, to measure an "
                   "alternative to the defaults (e.g. \"--preset transformer.blocks\"); the scorecard passes none")
    p.add_argument("--threads", type=int, default=1, help="per training process (default 1: shared cores)")
    p.add_argument("--pictures", help="also copy the sample grids to this folder (e.g. docs/quality)")
    p.add_argument("--report-from", nargs="+", metavar="OUT", help="train nothing: merge these folders' "
                   "quality.json (pieces run apart, e.g. at once in several processes) into --out's table")
    args = p.parse_args(argv)
    args.subjects = args.subjects or ([3, 7] if args.quick else list(range(10)))
    args.styles = args.styles or (["rot90", "bold", "italic"] if args.quick else list(STYLES))
    return args


def training_seconds(results: dict) -> str:
    """CPU and wall seconds of every training process in the results, summed."""
    runs = [run for entry in results["runs"].values() for key in ("vislora", "peer") if key in entry
            for run in [entry[key]]] + [s for entry in results["runs"].values() for s in entry.get("sweep", [])]
    runs = [r for r in runs if r["cpu_s"] is not None]
    return (f"{len(runs)} runs, {sum(r['cpu_s'] for r in runs):.0f} CPU s, "
            f"{sum(r['wall_s'] for r in runs):.0f} s wall")


def report_from(args: argparse.Namespace) -> int:
    """One table and one set of grids from pieces of the scorecard run apart."""
    merged: dict = {"runs": {}, "base": {}, "scorecard_s": {}}
    for folder in args.report_from:
        piece = json.loads((Path(folder) / "quality.json").read_text())
        merged["runs"].update(piece["runs"])
        merged["base"].update(piece.get("base", {}))
        merged["scorecard_s"].update({f"{folder}: {k}": v for k, v in piece.get("scorecard_s", {}).items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(merged, GOALS)
    grids = pictures(merged, out / "pictures", args.pictures)
    (out / "quality.md").write_text(text + "\n")
    (out / "quality.json").write_text(json.dumps(merged, indent=1, default=float))
    pieces = "; ".join(f"{k} {v:.0f} s" for k, v in merged["scorecard_s"].items())
    print(text + f"\n\nscorecard time per piece (wall): {pieces}\ntraining processes: {training_seconds(merged)}"
          "\npictures: " + ", ".join(map(str, grids)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_from(args) if args.report_from else Scorecard(args).run()


if __name__ == "__main__":
    sys.exit(main())
