"""The embedded digits Stable Diffusion base (samples/digits_sd), its tokenizer, scorer and style tools."""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
sys.path.insert(0, str(SAMPLES))

pytest.importorskip("sklearn")

import digit_scorer  # noqa: E402
import digit_styles  # noqa: E402
from digits import digit_caption, paper_digits  # noqa: E402
from make_digits_sd import WORDS, build_tokenizer  # noqa: E402

MODEL = SAMPLES / "digits_sd"


@pytest.fixture(scope="module")
def real():
    """Held-out real scans as 32x32 paper images and their labels."""
    paper, labels = paper_digits(32)
    _, held = digit_scorer.split()
    return paper[held], labels[held]


def test_tokenizer_reads_any_lowercase_ascii_without_unk(tmp_path):
    tok = build_tokenizer(tmp_path)
    eos = tok.eos_token_id  # CLIP's <unk> is <|endoftext|>: inside a sequence it would mean an unknown piece
    rng = np.random.default_rng(0)
    alphabet = np.array(list(string.printable.lower()))
    texts = [string.printable.lower(), "a handwritten digit three in bold italic style"]
    texts += ["".join(rng.choice(alphabet, 30)) for _ in range(50)]
    for text in texts:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == eos and eos not in ids[1:-1], text
    assert all(len(tok(w).input_ids) == 3 for w in WORDS)  # every listed word is one token
    assert len(tok("a handwritten digit three in bold italic style").input_ids) == 10 <= tok.model_max_length


def test_shipped_tokenizer_is_the_builder_s(tmp_path):
    build_tokenizer(tmp_path)
    shipped = json.loads((MODEL / "tokenizer" / "vocab.json").read_text())
    assert shipped == json.loads((tmp_path / "vocab.json").read_text())


def test_scorer_reads_real_scans(real):
    images, labels = real
    assert (digit_scorer.classify(images) == labels).mean() >= 0.97  # measured 0.994
    rgb = np.repeat(np.rint(images * 255).astype(np.uint8)[..., None], 3, axis=-1)
    assert np.array_equal(digit_scorer.classify(rgb), digit_scorer.classify(images))


def test_styles_move_their_measures_by_stated_amounts(real):
    images, _ = real
    width, lean = digit_styles.stroke_width(images).mean(), digit_styles.slant(images)
    assert 6.5 < width < 8.5  # measured 7.41 px on the 32x32 drawings
    assert digit_styles.stroke_width(digit_styles.bold(images)).mean() - width > 1.2  # measured +1.77 px
    assert digit_styles.stroke_width(digit_styles.thin(images)).mean() - width < -0.6  # measured -0.97 px
    rise = digit_styles.slant(digit_styles.italic(images, angle=15.0)) - lean
    assert abs(rise.mean() - 15.0) < 1.5  # measured +14.9 degrees
    assert np.allclose(digit_styles.slant(digit_styles.mirror(images)), -lean, atol=1e-6)
    for name, style in digit_styles.STYLES.items():  # the paper stays white: most pixels are still paper
        out = style(images)
        assert out.shape == images.shape and (out > 0.9).mean() > 0.4 and out.max() == 1.0, name  # bold: 0.49


def test_write_style_folder_writes_captioned_images(tmp_path):
    from PIL import Image

    root = digit_styles.write_style_folder(tmp_path / "bold", ["bold", "italic"], digits=[3, 7], per_digit=2)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["text"] == "a handwritten digit three in bold italic style"
    for row in rows:
        image = Image.open(root / row["file_name"])
        assert image.mode == "RGB" and image.size == (32, 32)
        assert (root / row["file_name"]).with_suffix(".txt").read_text().strip() == row["text"]
    with pytest.raises(ValueError, match="unknown style"):
        digit_styles.write_style_folder(tmp_path / "x", "wavy")


def test_shipped_pipeline_loads_and_draws_the_asked_digits():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None and pipe.unet.dtype == torch.float32
    for digit in (3, 7):
        images = pipe([digit_caption(digit)] * 6, num_inference_steps=10, guidance_scale=7.0,
                      generator=torch.Generator().manual_seed(digit), output_type="np").images
        assert images.shape == (6, 32, 32, 3)
        # Dark ink on white paper: the side columns are paper (real scans: 0.997), the page mostly light (0.69).
        assert images[:, :, [0, -1]].mean() > 0.9 and images.mean() > 0.5
        assert digit_scorer.accuracy(images, digit) >= 5 / 6


def _train_a_few_steps(tmp_path, **options):
    """Three UNet steps of make_digits_sd's recipe on the shipped VAE; returns (unet, text_encoder).

    Batch 32, the script's: 96 timesteps in all, so some have an SNR above 5, where min-SNR weighting acts, and
    enough rows per caption that a backward summing them in a thread-dependent order shows (text[caption] did)."""
    from diffusers import AutoencoderKL
    from make_digits_sd import train_unet

    vae = AutoencoderKL.from_pretrained(MODEL / "vae", torch_dtype=torch.float32).eval()
    tokenizer = build_tokenizer(tmp_path / "tokenizer")
    return train_unet(vae, tokenizer, steps=3, batch=32, lr=3e-3, drop=0.1, seed=0, progress=False, **options)


def test_base_recipe_repeats_and_each_option_acts(tmp_path):
    default = dict(snr_gamma=5.0, ema=0.99, text_lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the script's default; the order of multi-threaded sums must not depend on timing
    try:
        unet, text = _train_a_few_steps(tmp_path, **default)
        again, text_again = _train_a_few_steps(tmp_path, **default)
    finally:
        torch.set_num_threads(threads)
    for a, b in ((unet, again), (text, text_again)):  # seeded: the same run twice is bit for bit the same
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    def differs(a, b):
        return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    for change in ({"ema": 0.0}, {"snr_gamma": 0.0}, {"text_lr": 0.0}):
        other, other_text = _train_a_few_steps(tmp_path, **{**default, **change})
        assert differs(unet, other), change
    # text_lr 0 freezes the text encoder: its weights stay at the seeded start, unlike a training one.
    assert not any(p.requires_grad for p in other_text.parameters())
    assert differs(text, other_text)
