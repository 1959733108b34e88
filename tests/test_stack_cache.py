"""The inference stack of a layer follows its factors however they are written: an optimizer that steps through
`p.data` (Prodigy, bitsandbytes' 8-bit Adam) bumps no version counter, and the next no-grad forward must still
see the new factors."""

from __future__ import annotations

import torch
from torch import nn

import vislora


def test_a_data_write_to_trained_factors_is_seen_by_the_next_inference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    vislora.inject(model, ["0"], rank=2, alpha=2)
    x = torch.randn(4, 8)
    with torch.no_grad():
        before = model(x)
    for p in vislora.trainable_parameters(model):
        p.data.add_(0.5)  # as Prodigy steps: no version bump
    with torch.no_grad():
        after = model(x)
        plain = model[0].base_layer(x)
    assert not torch.equal(before, after)  # the adapter changed what the model computes
    up, down = [p for n, p in model.named_parameters() if "up" in n][0], [p for n, p in model.named_parameters() if "down" in n][0]
    torch.testing.assert_close(after, plain + x @ down.T @ up.T, rtol=1e-5, atol=1e-6)
