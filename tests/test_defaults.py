"""The diffusion recipes' defaults learn on the two shipped digits bases, the UNet here and the SD3 transformer
in tests/test_defaults_dit.py, with nothing tuned (docs/defaults.md): a DreamBooth subject is drawn by its trigger while the other digits
keep their prompts, and a style moves the drawings toward its training pictures while they stay legible.
Also the trigger-word warning."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
sys.path.insert(0, str(SAMPLES))
pytest.importorskip("sklearn")

import vislora  # noqa: E402
from digit_scorer import classify  # noqa: E402
from digit_styles import STYLES, stroke_width, write_style_folder  # noqa: E402
from digits import DIGIT_WORDS, paper_digits, to_rgb_uint8  # noqa: E402
from vislora.diffusion.bases import load_pipeline  # noqa: E402
from vislora.diffusion.pipeline import generate  # noqa: E402
from vislora.diffusion.triggers import TriggerWarning, check_trigger, pieces, trigger_words  # noqa: E402
from vislora.recipes import dreambooth_sd  # noqa: E402
from stopped_runs import stopped_before  # noqa: E402

BASE = SAMPLES / "digits_sd"
QUIET = ["--threads", "1", "--no-progress", "--sample-steps", "2", "--validation-seeds", "0", "--eval-images", "0"]
N, STEPS, GUIDANCE = 32, 10, 5.0
SUBJECT = 5
# The scorecard's goals (issue 23), asserted on one subject and one style with the defaults on each base:
# (fidelity, other digits' mean, their worst, bold's share of the way). This test's own runs measured, on the
# UNet: fidelity 1.0, every other digit 1.0, bold 108% of the way; on the transformer: 1.0, 1.0, 93%.
GOALS = (0.9, 0.9, 0.75, 0.8)
LEGIBLE = 0.85


def _draw(pipe, prompts: list[str]) -> np.ndarray:
    images = generate(pipe, prompts, [1000 + i for i in range(len(prompts))], steps=STEPS, guidance=GUIDANCE)
    return np.stack([np.asarray(im.convert("L")) for im in images]).astype(np.float32) / 255.0


def _subject(folder: Path, digit: int) -> Path:
    from PIL import Image

    paper, labels = paper_digits(32)
    folder.mkdir(parents=True)
    index = np.flatnonzero(labels == digit)[-5:]  # five real scans
    for i, rgb in zip(index, to_rgb_uint8(paper[index])):
        Image.fromarray(rgb, mode="RGB").save(folder / f"{int(i):04d}.png")
    return folder


@pytest.fixture(scope="module")
def base() -> Path:
    """The UNet base here; tests/test_defaults_dit.py runs the same two checks on the transformer base."""
    return SAMPLES / "digits_sd"


@pytest.fixture(scope="module")
def pipe(base):
    torch.set_num_threads(2)
    return load_pipeline(str(base)).pipe


def test_dreambooth_defaults_learn_the_subject_and_keep_the_other_digits(base, pipe, tmp_path):
    fidelity_least, mean_least, worst_least, _ = GOALS
    data = _subject(tmp_path / "subject", SUBJECT)
    assert dreambooth_sd.main(["--model", str(base), "--instance-data", str(data), "--instance-prompt",
                               "a sks digit", "--prior-preservation", "--class-prompt", "a handwritten digit",
                               "--out", str(tmp_path / "run"), *QUIET]) == 0
    vislora.load_adapter(pipe, tmp_path / "run" / "adapter.safetensors", name="subject")
    try:
        fidelity = float((classify(_draw(pipe, ["a sks digit"] * N)) == SUBJECT).mean())
        others = [d for d in range(10) if d != SUBJECT]
        drawn = classify(_draw(pipe, [f"a handwritten digit {DIGIT_WORDS[d]}" for d in others for _ in range(N)]))
        kept = (drawn.reshape(len(others), N) == np.array(others)[:, None]).mean(axis=1)
    finally:
        vislora.remove(pipe, "subject")
    print("MEASURED dreambooth", base.name, fidelity, dict(zip(others, kept)))
    assert fidelity >= fidelity_least, fidelity
    assert kept.mean() >= mean_least and kept.min() >= worst_least, dict(zip(others, kept))


def test_style_defaults_move_toward_the_pictures_and_stay_legible(base, pipe, tmp_path):
    caption = "a handwritten digit {word} in bold style"
    data = write_style_folder(tmp_path / "bold", "bold", per_digit=8, template=caption)
    assert dreambooth_sd.main(["--model", str(base), "--data", str(data), "--out", str(tmp_path / "run"), *QUIET],
                              task="style") == 0
    asked = np.arange(N) % 10
    prompts = [caption.format(word=DIGIT_WORDS[d]) for d in asked]
    plain = _draw(pipe, prompts)
    vislora.load_adapter(pipe, tmp_path / "run" / "adapter.safetensors", name="bold")
    try:
        drawn = {}
        for strength in (0.0, 0.5, 1.0):
            vislora.set_strength(pipe, "bold", strength)
            drawn[strength] = _draw(pipe, prompts)
    finally:
        vislora.remove(pipe, "bold")
    assert np.array_equal(drawn[0.0], plain)  # strength 0 is the base, pixel for pixel
    width = {k: float(np.mean(stroke_width(v))) for k, v in drawn.items()}
    paper, _ = paper_digits(32)
    target = float(np.mean(stroke_width(STYLES["bold"](paper[:300]))))  # the training pictures' stroke width
    print("MEASURED style", base.name, width, target)
    assert width[0.0] < width[0.5] < width[1.0]
    assert (width[1.0] - width[0.0]) / (target - width[0.0]) >= GOALS[3], (width, target)
    assert float((classify(drawn[1.0]) == asked).mean()) >= LEGIBLE


def test_a_trigger_split_into_pieces_warns_and_suggests_single_tokens():
    tokenizer = load_pipeline(str(BASE)).pipe.tokenizer
    assert trigger_words("a zkq digit", "a handwritten digit") == ["zkq"]
    with pytest.warns(TriggerWarning, match=r"'zkq' is 3 tokens .* e\.g\. sks") as caught:
        lines = check_trigger(tokenizer, ["zkq"], "--instance-prompt")
    assert len(lines) == 1 and "\n" not in lines[0] and len(caught) == 1
    suggested = lines[0].rsplit("e.g. ", 1)[1].split(", ")
    assert suggested and all(len(pieces(tokenizer, w)) == 1 for w in suggested)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TriggerWarning)
        assert check_trigger(tokenizer, trigger_words("a sks digit", "a handwritten digit"), "--instance-prompt") == []


def test_a_resumed_prodigy_run_equals_an_unbroken_one(tmp_path):
    """Prodigy's own state (its step-size estimate d and the sums behind it) is checkpointed with the rest."""
    import json

    from vislora.formats import container

    data = _subject(tmp_path / "subject", SUBJECT)

    def args(out: Path) -> list[str]:
        return ["--model", str(BASE), "--instance-data", str(data), "--instance-prompt", "a sks digit",
                "--prior-preservation", "--class-prompt", "a handwritten digit", "--steps", "6", "--batch-size", "2",
                "--checkpoint-every", "3", "--keep", "10", "--out", str(out), *QUIET]

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert dreambooth_sd.main(args(whole)) == 0
    stopped_before(whole, resumed, 6)  # a run stopped after step 3: its folder less what steps 4-6 wrote
    assert dreambooth_sd.main([*args(resumed), "--resume"]) == 0
    a, b = (container.read(d / "adapter.safetensors")[0] for d in (whole, resumed))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (whole, resumed))
    assert first["optimizer"] == "prodigy" and first["preservation"] == "base-prediction"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(first["history"]) == strip(second["history"])
    assert first["history"][-1]["lr"] != first["history"][0]["lr"]  # the step size moved (estimate, schedule)


@pytest.mark.parametrize("flags, optimizer, lr", [
    ([], "prodigy", 1.0),                                   # the default: Prodigy finds its own step size
    (["--lr", "1e-2"], "adamw", 1e-2),                      # an lr alone is a fixed step size, as it always was
    (["--optimizer", "prodigy", "--lr", "0.5"], "prodigy", 0.5),
    (["--optimizer", "adamw"], "adamw", 1e-4),
])
def test_an_lr_given_alone_means_adamw_at_that_lr(tmp_path, flags, optimizer, lr):
    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image
    Image.new("RGB", (32, 32), "white").save(data / "0.png")
    args = dreambooth_sd.parse_args(["--model", str(BASE), "--instance-data", str(data), "--instance-prompt",
                                     "a sks digit", "--out", str(tmp_path / "out"), *flags])
    dreambooth_sd.check_args(args)
    assert (args.optimizer, args.lr) == (optimizer, lr)
    assert args.lr_schedule == ("cosine" if optimizer == "prodigy" else "constant")


@pytest.mark.parametrize("task, flags, weight", [
    ("dreambooth", ["--prior-preservation", "--class-prompt", "a handwritten digit"], 0.1),
    ("dreambooth", [], 0.0),      # no preservation: guidance would amplify every other prompt's drift too
    ("dreambooth", ["--keep-unconditional", "0.3"], 0.3),
    ("style", [], 0.1),
    ("style", ["--keep-unconditional", "0"], 0.0),
])
def test_the_empty_prompt_is_held_where_something_else_is(tmp_path, task, flags, weight):
    from PIL import Image

    from vislora.recipes import style_sd

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (32, 32), "white").save(data / "0.png")
    (data / "0.txt").write_text("a white square")
    out = ["--out", str(tmp_path / "out")]
    if task == "dreambooth":
        args = dreambooth_sd.parse_args(["--model", str(BASE), "--instance-data", str(data), "--instance-prompt",
                                         "a sks digit", *out, *flags])
        dreambooth_sd.check_args(args)
    else:
        args = style_sd.parse_args(["--model", str(BASE), "--data", str(data), *out, *flags])
        style_sd.check_args(args)
    assert args.keep_unconditional == weight
