"""Pure math: delta_forward == base op with delta_weight, for every kind and geometry."""

import pytest
import torch

from layer_cases import CASES, IDS
from layer_cases import params as _params
from vislora.functional import KINDS, RowLayout, op_for

torch.manual_seed(0)


@pytest.mark.parametrize("kind,layer,layout,x", CASES, ids=IDS)
def test_delta_forward_equals_delta_weight(kind, layer, layout, x):
    fn = KINDS[kind]
    params = _params(kind, layer, layout)
    delta = fn.delta_weight(params, layout)
    assert delta.shape == layer.weight.shape
    assert delta.abs().max() > 0  # the check below means something only for a non-zero delta
    by_weight = op_for(layer).forward(x, delta, None)
    by_factors = fn.delta_forward(x, params, layout)
    torch.testing.assert_close(by_factors, by_weight, rtol=1e-10, atol=1e-10)


def test_slices_touch_only_their_rows():
    layout = RowLayout(18, ((0, 6), (12, 18)))
    params = KINDS["lora"].init_params(torch.Size([18, 12]), 2, "random", layout)
    delta = KINDS["lora"].delta_weight(params, layout)
    assert delta[6:12].abs().max() == 0
    assert delta[:6].abs().min() > 0 and delta[12:].abs().min() > 0


