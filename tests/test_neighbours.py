"""Base-prediction preservation keeps the class prompt's neighbours: the class prompt followed by one whole
word of the vocabulary, drawn per sample from the sample's own seed (vislora/diffusion/preserve.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vislora.diffusion.batches import neighbour_seeds
from vislora.diffusion.preserve import NeighbourPrompts, vocabulary_words

BASE = Path(__file__).resolve().parents[1] / "samples" / "digits_sd"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(BASE / "tokenizer")


def test_the_neighbours_are_the_class_prompt_and_it_followed_by_each_vocabulary_word(tokenizer):
    words = vocabulary_words(tokenizer)
    assert {"two", "eight", "bold", "photo"} <= set(words)
    assert all(w.isalpha() and len(w) >= 2 for w in words)  # no byte tokens, no punctuation
    neighbours = NeighbourPrompts("a handwritten digit", tokenizer, avoid={"sks"})
    assert neighbours.prompts[0] == "a handwritten digit"
    extra = [p.removeprefix("a handwritten digit ") for p in neighbours.prompts[1:]]
    assert "a handwritten digit eight" in neighbours.prompts
    assert "sks" not in extra and "digit" not in extra and "handwritten" not in extra  # trigger, class words
    assert len(extra) == len(set(extra)) == len(words) - 3


def test_a_sample_draws_the_same_prompt_from_the_same_seed_in_any_batch(tokenizer):
    neighbours = NeighbourPrompts("a handwritten digit", tokenizer)
    whole = neighbours(neighbour_seeds(0, 7, 0, 4))
    halves = neighbours(neighbour_seeds(0, 7, 0, 2)) + neighbours(neighbour_seeds(0, 7, 2, 2))
    assert whole == halves  # two processes with two samples each draw what one process with four draws
    assert neighbours(neighbour_seeds(0, 8, 0, 4)) != whole or neighbours(neighbour_seeds(0, 9, 0, 4)) != whole
    many = neighbours(neighbour_seeds(0, 0, 0, 2000))
    assert len(set(many)) == len(neighbours.prompts)  # every neighbour comes up


def test_a_large_vocabulary_is_sampled_once_to_a_fixed_pool():
    class Vocabulary:
        def get_vocab(self):
            return {f"w{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}{chr(97 + i // 676)}</w>": i for i in range(5000)}

    a, b = NeighbourPrompts("a dog", Vocabulary(), pool=64), NeighbourPrompts("a dog", Vocabulary(), pool=64)
    assert len(a.prompts) == 65 and a.prompts == b.prompts
