"""Trigger words: a made-up word that the tokenizer splits into several pieces is several unrelated tokens,
and can take over the prompt before any training (on the digits base "zkq, a handwritten digit seven" drew a
three 31 times in 32). A trigger that is one token is one new meaning to learn.

    pieces(tokenizer, "zkq") -> ["z", "k", "q</w>"]      how the tokenizer splits a word
    trigger_words(instance_prompt, class_prompt) -> ["sks"]   the instance prompt's words the class lacks
    single_token_words(tokenizer, avoid) -> ["sks", ...]  words that are one token, to suggest instead
    check_trigger(tokenizer, words, where, avoid)         warns (TriggerWarning, one line) for each split word
"""

from __future__ import annotations

import re
import warnings
from typing import Any

# Triggers in common use (DreamBooth's "sks", kohya's "ohwx"...); suggested first where they are one token.
USUAL = ("sks", "ohwx", "zwx", "xyz", "phol", "tok")


class TriggerWarning(UserWarning):
    """A trigger word that the tokenizer splits into several tokens."""


def pieces(tokenizer: Any, word: str) -> list[str]:
    """The tokens `word` becomes on its own (no start/end tokens)."""
    return list(tokenizer.tokenize(word))


def trigger_words(prompt: str, class_prompt: str | None = None) -> list[str]:
    """The words of `prompt` that are not in `class_prompt` (all of them without one): the new ones."""
    known = set(re.findall(r"[\w'-]+", (class_prompt or "").lower()))
    return [w for w in re.findall(r"[\w'-]+", prompt.lower()) if w not in known]


def single_token_words(tokenizer: Any, avoid: set[str] = frozenset(), count: int = 3) -> list[str]:
    """Up to `count` words that are one token here and not in `avoid`: the usual triggers first, then the
    vocabulary's rarest whole-word entries (BPE gives rare merges the highest ids)."""
    found = [w for w in USUAL if w not in avoid and len(pieces(tokenizer, w)) == 1]
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for token, _ in sorted(vocab.items(), key=lambda kv: -kv[1]):
        if len(found) >= count:
            break
        word = token.removesuffix("</w>")
        if (token.endswith("</w>") and word.isalpha() and word.isascii() and 3 <= len(word) <= 6
                and word not in avoid and word not in found and len(pieces(tokenizer, word)) == 1):
            found.append(word)
    return found[:count]


def check_trigger(tokenizer: Any, words: list[str], where: str, avoid: set[str] = frozenset()) -> list[str]:
    """Warn once per word of `words` that splits into several tokens; returns the warning lines."""
    lines = []
    for word in words:
        split = pieces(tokenizer, word)
        if len(split) > 1:
            better = single_token_words(tokenizer, set(avoid) | set(words))
            lines.append(f"{where}: the trigger {word!r} is {len(split)} tokens {split} in this tokenizer, which "
                         f"can take over the prompt; use a word that is one token, e.g. {', '.join(better)}")
            warnings.warn(lines[-1], TriggerWarning, stacklevel=2)
    return lines
