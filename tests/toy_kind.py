"""A toy adapter kind, all in one file: delta W = b @ a on Linear layers, with its file-facing facts.

tests/test_kinds.py adds it to KINDS with one line and round-trips it through the vislora and kohya/LyCORIS
formats: nothing else in vislora names it.
"""

import math

import torch
from torch import nn

FACTORS = ("a", "b")
BASES = (nn.Linear,)

LYCORIS_PARTS = {"a": "toy_a.weight", "b": "toy_b.weight"}
ALGO = "toy"
NETWORK = "lycoris.kohya"


def shapes(weight_shape, rank, layout):
    return {"a": (rank, weight_shape[1]), "b": (weight_shape[0], rank)}


def init_params(weight_shape, rank, init, layout):
    want = shapes(weight_shape, rank, layout)
    a, b = torch.empty(want["a"]), torch.zeros(want["b"])
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    if init == "random":
        nn.init.normal_(b, std=1.0 / rank)
    return {"a": a, "b": b}


def delta_weight(params, layout):
    return params["b"] @ params["a"]


def delta_forward(x, params, layout):
    return x @ params["a"].T.to(x.dtype) @ params["b"].T.to(x.dtype)


def file_rank(params):
    return params["a"].shape[0]


def in_features(params):
    return params["a"].shape[1]
