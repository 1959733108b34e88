"""AdapterBank: linear blends, stacked == one by one, fused == unfused, exact re-blends, block strengths."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import vislora
from vislora import AdapterBank, AdapterCompatError, AdapterFormatError, AdapterLayer, AdapterStateError
from vislora.functional import KINDS, RowLayout, op_for
from vislora.targets.blocks import ldm_block

from conftest import checksum, images, run_unet, tiny_pipeline, tiny_unet, tiny_vit, unet_inputs


def _adapter_file(tmp_path, build, target, name, seed, **kw):
    """An adapter with random (non-zero) factors trained on nothing, saved to a file."""
    model = build()
    torch.manual_seed(seed)
    vislora.inject(model, target, name=name, init="random", **kw)
    path = tmp_path / f"{name}.safetensors"
    vislora.save_adapter(model, path, name)
    return path


def _layer_io(model_root: nn.Module, run) -> dict[str, tuple[AdapterLayer, torch.Tensor]]:
    """Every AdapterLayer with the input it got in one run (to compare layers at a fixed input)."""
    seen, hooks = {}, []
    for path, m in model_root.named_modules():
        if isinstance(m, AdapterLayer):
            hooks.append(m.register_forward_hook(lambda mod, args, out, p=path: seen.setdefault(p, (mod, args[0]))
                                                 and None))
    run()
    for h in hooks:
        h.remove()
    return seen


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second thread only adds waits at every op (worst on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def unet_files(tmp_path):
    return {n: _adapter_file(tmp_path, tiny_unet, ["unet.all"], n, seed, rank=r, conv=conv)
            for n, seed, r, conv in (("a", 1, 4, "locon"), ("b", 2, 2, "tucker"), ("c", 3, 3, "locon"))}


# -- the math of stacking -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "lora_sliced", "locon", "tucker"])
def test_stack_delta_forward_is_the_weighted_sum(kind):
    torch.manual_seed(0)
    if kind.startswith("lora"):
        base = nn.Linear(12, 9)
        layout = RowLayout(9, ((0, 3), (6, 9))) if kind == "lora_sliced" else RowLayout.full(9)
        x = torch.randn(5, 12)
        functions = KINDS["lora"]
    else:
        base = nn.Conv2d(6, 7, 3, stride=2, padding=1)
        layout = op_for(base)
        x = torch.randn(2, 6, 9, 9)
        functions = KINDS[kind]
    params = [functions.init_params(base.weight.shape, r, "random", layout) for r in (2, 3, 5)]
    coefs = [0.7, -0.3, 1.9]
    want = sum(c * functions.delta_forward(x, p, layout) for p, c in zip(params, coefs))
    assert want.abs().max() > 1e-2  # the adapters change the output
    got = functions.delta_forward(x, functions.stack(params, coefs, layout), layout)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    delta = sum(c * functions.delta_weight(p, layout) for p, c in zip(params, coefs))
    assert torch.allclose(functions.delta_weight(functions.stack(params, coefs, layout), layout), delta, atol=1e-5)


# -- blends --------------------------------------------------------------------------------------------------
def test_blend_is_linear_at_every_layer(unet_files):
    """Output delta at strengths (w1, w2) == w1 * delta1 + w2 * delta2 at each layer (fp32, 1e-5)."""
    unet = tiny_unet()
    bank = AdapterBank(unet)
    bank.load("a", unet_files["a"])
    bank.load("b", unet_files["b"])
    inputs = unet_inputs()
    layers = _layer_io(unet, lambda: run_unet(unet, inputs))
    assert len(layers) > 20

    def deltas(spec):
        bank.set_strengths(spec)
        with torch.no_grad():
            return {p: m(x) - m.base_layer(x) for p, (m, x) in layers.items()}

    d1, d2 = deltas({"a": 1.0, "b": 0.0}), deltas({"a": 0.0, "b": 1.0})
    mixed = deltas({"a": 0.7, "b": -0.45})
    assert min(d.abs().max() for d in d1.values()) > 1e-4 and min(d.abs().max() for d in d2.values()) > 1e-4
    for p in layers:
        want = 0.7 * d1[p] + -0.45 * d2[p]
        assert (mixed[p] - want).abs().max() <= 1e-5 * max(1.0, want.abs().max()), p


def test_zero_strength_is_the_base_exactly_and_load_order_does_not_matter(unet_files):
    inputs = unet_inputs()
    base_out = run_unet(tiny_unet(), inputs)
    one, two = tiny_unet(), tiny_unet()
    bank1, bank2 = AdapterBank(one), AdapterBank(two)
    for n in ("a", "b", "c"):
        bank1.load(n, unet_files[n], strength=0.0)
    for n in ("c", "a", "b"):
        bank2.load(n, unet_files[n], strength=0.0)
    assert torch.equal(run_unet(one, inputs), base_out)
    mix = {"a": 0.6, "b": 0.3, "c": -0.2}
    bank1.set_strengths(mix)
    bank2.set_strengths(mix)
    out1 = run_unet(one, inputs)
    assert (out1 - base_out).abs().max() > 1e-3
    assert torch.equal(out1, run_unet(two, inputs))  # stacked in name order: bit-identical
    bank1.set_strengths({"a": 0.0, "b": 0.0, "c": 0.0})
    assert torch.equal(run_unet(one, inputs), base_out)


def test_stacked_inference_equals_one_adapter_at_a_time(unet_files):
    """The stacked no-grad path against the per-adapter path (which autograd takes with grad enabled)."""
    unet = tiny_unet()
    bank = AdapterBank(unet)
    for n, s in (("a", 0.8), ("b", -0.5), ("c", 1.3)):
        bank.load(n, unet_files[n], strength=s)
    inputs = unet_inputs()
    stacked = run_unet(unet, inputs)
    with torch.enable_grad():
        one_by_one = unet(**inputs).sample.detach()
    assert torch.allclose(stacked, one_by_one, atol=1e-5)


def test_fused_equals_unfused_on_a_pipeline(tmp_path):
    pipe_files = {n: _adapter_file(tmp_path, tiny_pipeline, ["unet.all", "text.attn"], n, seed, rank=3)
                  for n, seed in (("a", 1), ("b", 2))}
    pipe = tiny_pipeline()
    before = {c: checksum(m) for c, m in (("unet", pipe.unet), ("te", pipe.text_encoder))}
    bank = AdapterBank(pipe)
    bank.load("a", pipe_files["a"], strength=0.7)
    bank.load("b", pipe_files["b"], strength={"unet": 0.4, "text_encoder": -0.6, "up": 0.5})
    inputs = unet_inputs()
    ids = torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(0))

    def outputs():
        with torch.no_grad():
            return run_unet(pipe.unet, inputs), pipe.text_encoder(ids).last_hidden_state

    unfused = outputs()
    bank.fuse()
    fused = outputs()
    for u, f in zip(unfused, fused):
        assert torch.allclose(u, f, atol=1e-4, rtol=1e-4)
    bank.set_strengths({"a": 0.1})
    bank.unfuse()
    bank.set_strengths({"a": 0.7})
    for u, f in zip(unfused, outputs()):
        assert torch.equal(u, f)
    bank.unload("a")
    bank.unload("b")
    assert before == {c: checksum(m) for c, m in (("unet", pipe.unet), ("te", pipe.text_encoder))}


class _Small(nn.Module):
    """Two Linears and two convs (3x3 and 1x1): every adapter kind, small enough for 1,000 re-blends."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 24), nn.Linear(24, 16)
        self.conv3, self.conv1 = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 4, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_thousand_reblends_leave_every_base_tensor_bit_identical(dtype):
    torch.manual_seed(0)
    model = _Small()
    original = {k: v.clone() for k, v in model.to(dtype).state_dict().items()}
    for i in range(20):
        vislora.inject(model, ["fc1", "fc2", "conv3", "conv1"], rank=1 + i % 4, name=f"a{i}", init="random",
                       conv="tucker" if i % 3 == 0 else "locon")
    bank = AdapterBank(model)
    rng = random.Random(0)
    x = torch.randn(2, 4, 5, 5, dtype=dtype)
    for step in range(1000):
        picks = rng.sample(bank.names, rng.randint(1, 5))
        bank.set_strengths({n: rng.choice([0.0, rng.uniform(-2, 2), {"fc1": rng.uniform(-1, 1)}]) for n in picks})
        if step % 50 == 0:
            bank.fuse() if not bank.fused else bank.unfuse()
        if step % 97 == 0:
            with torch.no_grad():
                assert torch.isfinite(model.conv1(model.conv3(x))).all()
    if bank.fused:
        bank.unfuse()
    for n in bank.names:
        bank.unload(n)
    after = model.state_dict()
    assert after.keys() == original.keys()
    for k, v in original.items():
        assert after[k].dtype == dtype and torch.equal(after[k].view(torch.uint8), v.view(torch.uint8)), k


# -- per-block strengths ----------------------------------------------------------------------------------
def test_zero_on_up_blocks_leaves_attention_and_conv_layers_at_the_base(unet_files):
    unet = tiny_unet()
    bank = AdapterBank(unet)
    bank.load("a", unet_files["a"], strength={"unet.up": 0.0})
    layers = _layer_io(unet, lambda: run_unet(unet, unet_inputs()))
    up = {p: v for p, v in layers.items() if p.startswith("up_blocks.")}
    kinds = {type(m.base_layer) for m, _ in up.values()}
    assert kinds == {nn.Linear, nn.Conv2d}
    with torch.no_grad():
        for p, (m, x) in layers.items():
            same = torch.equal(m(x), m.base_layer(x))
            assert same == p.startswith("up_blocks."), p
    weights = {p: m.base_layer.weight.clone() for p, (m, _) in up.items()}
    bank.fuse()
    assert any(m.merged for m, _ in layers.values())
    for p, (m, x) in up.items():
        assert not m.merged and torch.equal(m.base_layer.weight, weights[p])


def test_lbw_string_equals_the_equivalent_dict(tmp_path):
    path = _adapter_file(tmp_path, tiny_pipeline, ["unet.all", "text.attn"], "a", 1, rank=2)
    # The tiny UNet (layers_per_block 1): down_blocks.0 = IN01, IN02 (downsampler); down_blocks.1 = IN03;
    # mid = M00; up_blocks.0 = OUT00, OUT01 (+ upsampler); up_blocks.1 = OUT02, OUT03. BASE = text encoder.
    values = dict.fromkeys(("BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12))), 1.0)
    values.update(BASE=0.3, IN03=0.5, M00=0.0, OUT00=0.25, OUT01=0.25, OUT02=0.75, OUT03=0.75)
    lbw = "lbw:" + ",".join(f"{v:g}" for v in values.values())
    as_dict = {"text_encoder": 0.3, "down.1": 0.5, "mid": 0.0, "up.0": 0.25, "unet.up_blocks.1": 0.75}
    pipe1, pipe2 = tiny_pipeline(), tiny_pipeline()
    b1, b2 = AdapterBank(pipe1), AdapterBank(pipe2)
    b1.load("a", path, strength=lbw)
    b2.load("a", path, strength=as_dict)
    s1, s2 = b1.layer_strengths("a"), b2.layer_strengths("a")
    assert s1 == s2 and set(s1.values()) == {0.0, 0.25, 0.3, 0.5, 0.75, 1.0}
    inputs = unet_inputs()
    assert torch.equal(run_unet(pipe1.unet, inputs), run_unet(pipe2.unet, inputs))
    # lbw ids as dict keys, and a named preset
    b2.set_strengths({"a": {"IN03": 0.5, "BASE": 0.3}})
    assert b2.layer_strengths("a")["unet.down_blocks.1.resnets.0.conv1"] == 0.5
    assert {v for p, v in b2.layer_strengths("a").items() if p.startswith("text_encoder.")} == {0.3}
    with pytest.warns(UserWarning, match="give none for"):
        b2.set_strengths({"a": "lbw:OUTD"})


def test_ldm_block_ids_match_the_sd15_layout():
    """diffusers paths of SD1.5 (layers_per_block 2) against the LDM names in specs/formats.md 1.2."""
    cases = {
        "conv_in": "IN00",
        "down_blocks.0.resnets.0.conv1": "IN01", "down_blocks.0.attentions.1.proj_in": "IN02",
        "down_blocks.0.downsamplers.0.conv": "IN03", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": "IN04",
        "down_blocks.2.downsamplers.0.conv": "IN09", "down_blocks.3.resnets.1.conv2": "IN11",
        "mid_block.attentions.0.proj_out": "M00",
        "up_blocks.0.resnets.0.conv1": "OUT00", "up_blocks.0.upsamplers.0.conv": "OUT02",
        "up_blocks.1.attentions.2.proj_out": "OUT05", "up_blocks.2.upsamplers.0.conv": "OUT08",
        "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2": "OUT11",
        "conv_out": None, "time_embedding.linear_1": None,
    }
    assert {p: ldm_block(p, 2) for p in cases} == cases


# -- ViT ----------------------------------------------------------------------------------------------------
def test_vit_bank_blends_two_task_adapters(tmp_path):
    files = {n: _adapter_file(tmp_path, tiny_vit, "vit.all", n, seed, rank=4) for n, seed in (("cats", 1), ("cars", 2))}
    x = images()
    vit = tiny_vit()
    with torch.no_grad():
        base = vit(x)
    bank = AdapterBank(vit)
    bank.load("cats", files["cats"], strength=0.6)
    bank.load("cars", files["cars"], strength=0.4)
    with torch.no_grad():
        blended = vit(x)
    reference = tiny_vit()  # the same blend through load_adapter and the per-adapter path
    vislora.load_adapter(reference, files["cats"], "cats", strength=0.6)
    vislora.load_adapter(reference, files["cars"], "cars", strength=0.4)
    want = reference(x).detach()
    assert (blended - base).abs().max() > 1e-2
    assert torch.allclose(blended, want, atol=1e-5)
    bank.set_strengths({"cats": 0.0, "cars": {"blocks.1": 0.0}})
    with torch.no_grad():
        half = vit(x)
    assert bank.layer_strengths("cars")["blocks.0.attn.qkv"] == 1.0
    assert not torch.equal(half, base)
    bank.fuse()
    with torch.no_grad():
        assert torch.allclose(vit(x), half, atol=1e-4)


def test_the_stack_is_reused_until_the_set_or_a_strength_changes(unet_files):
    """Unfused inference builds each layer's stacked factors once; later calls reuse them. A strength change
    rebuilds only the layers whose strength changed (here the up blocks), and unloading an adapter only the
    layers it was on."""
    unet = tiny_unet()
    bank = AdapterBank(unet)
    bank.load("a", unet_files["a"], strength=0.5)
    bank.load("b", unet_files["b"], strength=0.25)
    inputs = unet_inputs()
    names, layers = zip(*[(n, m) for n, m in unet.named_modules() if isinstance(m, AdapterLayer)])

    def stacks() -> list:
        run_unet(unet, inputs)
        return [layer._stack if layer._stack_key is not None else None for layer in layers]

    first = stacks()
    built = [i for i, stack in enumerate(first) if stack is not None]
    assert len(built) > len(layers) // 2
    second = stacks()
    assert all(second[i] is first[i] for i in built)  # reused, not rebuilt
    bank.set_strengths({"a": {"*": 0.5, "up": 1.4}})  # a changes in the up blocks only (0.5 -> 0.7)
    third = stacks()
    up = {i for i in built if ".up_blocks." in f".{names[i]}"}
    assert up and set(built) - up
    assert all((third[i] is second[i]) == (i not in up) for i in built)
    had_b = {i for i in built if "b" in layers[i].adapters}
    bank.unload("b")
    fourth = stacks()
    assert all((fourth[i] is third[i]) == (i not in had_b) for i in built if "a" in layers[i].adapters)


def test_training_step_invalidates_the_stack():
    vit = tiny_vit()
    vislora.inject(vit, "vit.attn", rank=4, init="random")
    x = images()
    with torch.no_grad():
        vit(x)  # builds the cached stack
    opt = torch.optim.SGD(vislora.trainable_parameters(vit), lr=0.5)
    vit(x).square().mean().backward()
    opt.step()
    with torch.no_grad():
        after = vit(x)
    assert torch.allclose(after, vit(x).detach(), atol=1e-5)  # grad mode: the per-adapter path


# -- bad input ------------------------------------------------------------------------------------------------
def test_bad_input_errors_and_leaves_the_model(unet_files, tmp_path):
    unet = tiny_unet()
    bank = AdapterBank(unet)
    bank.load("a", unet_files["a"], strength=0.5)
    before, strengths = checksum(unet), bank.layer_strengths("a")

    def unchanged():
        return checksum(unet) == before and bank.layer_strengths("a") == strengths and bank.names == ["a"]

    with pytest.raises(AdapterStateError, match="no adapter named"):
        bank.set_strengths({"a": 0.1, "nope": 0.3})
    with pytest.raises(ValueError, match="lbw list has"):
        bank.set_strengths({"a": "lbw:1,0,1"})
    with pytest.raises(ValueError, match="names none of its layers"):
        bank.set_strengths({"a": {"up.7": 0.0}})
    with pytest.raises(ValueError, match="finite number"):
        bank.set_strengths({"a": float("nan")})
    with pytest.raises(ValueError, match="names none of its layers"):
        bank.load("b", unet_files["b"], strength={"sideways": 1.0})
    other = _adapter_file(tmp_path, lambda: tiny_unet(cross_dim=32), ["unet.attn"], "wide", 5)
    with pytest.raises(AdapterCompatError):
        bank.load("wide", other)
    nan_model = tiny_unet()
    vislora.inject(nan_model, "unet.attn", name="nan", init="random")
    with torch.no_grad():
        next(m for m in nan_model.modules() if isinstance(m, AdapterLayer)).adapters["nan"].up[0, 0] = float("nan")
    nan_path = tmp_path / "nan.safetensors"
    vislora.save_adapter(nan_model, nan_path, "nan")
    with pytest.raises(AdapterFormatError, match="NaN"):
        bank.load("nan", nan_path)
    with pytest.raises(AdapterStateError):
        bank.unload("nope")
    assert unchanged()
    with pytest.warns(UserWarning, match="nothing is fused"):
        bank.unfuse()
    bank.fuse()
    fused = checksum(unet)
    with pytest.warns(UserWarning, match="already fused"):
        bank.fuse()
    assert checksum(unet) == fused
    bank.unfuse()
    assert unchanged()


def test_lbw_lists_of_each_length_map_to_their_block_ids():
    from vislora.strengths import parse_lbw

    sd17, n = parse_lbw(",".join(str(i) for i in range(17)), "t")
    assert n == 17 and sd17["BASE"] == 0 and sd17["IN01"] == 1 and sd17["IN04"] == 3 and sd17["M00"] == 7
    assert sd17["OUT03"] == 8 and sd17["OUT11"] == 16 and sd17["IN03"] == 0 and sd17["OUT00"] == 0
    xl12, _ = parse_lbw(",".join(str(i + 1) for i in range(12)), "t")  # BASE IN04 IN05 IN07 IN08 M00 OUT00-05
    assert (xl12["IN04"], xl12["IN08"], xl12["M00"], xl12["OUT00"], xl12["OUT05"]) == (2, 5, 6, 7, 12)
    assert xl12["IN01"] == 0 and xl12["OUT06"] == 0
    xl20, _ = parse_lbw(",".join(str(i + 1) for i in range(20)), "t")  # BASE IN00-08 M00 OUT00-08
    assert (xl20["IN00"], xl20["IN08"], xl20["M00"], xl20["OUT00"], xl20["OUT08"], xl20["OUT09"]) == (2, 10, 11, 12, 20, 0)
    assert parse_lbw("OUTD", "t")[0]["OUT03"] == 1.0 and parse_lbw(" MIDD ", "t")[0]["OUT07"] == 0.0
    with pytest.raises(ValueError, match="presets|preset"):
        parse_lbw("SIDEWAYS", "t")


def test_bank_adopts_adapters_on_the_model_and_keeps_pristine_on_the_cpu():
    vit = tiny_vit()
    vislora.inject(vit, "vit.attn", rank=2, name="one", init="random")
    vislora.set_strength(vit, "one", 0.5)
    x = images()
    with torch.no_grad():
        before = vit(x)
    bank = AdapterBank(vit, pristine_device="cpu")
    assert bank.names == ["one"] and bank.strengths == {"one": 0.5}
    bank.fuse()
    layer = vit.blocks[0].attn.qkv
    assert layer.merged == ["one"] and layer._pristine.device.type == "cpu"
    with torch.no_grad():
        assert torch.allclose(vit(x), before, atol=1e-4)
    bank.unfuse()
    with torch.no_grad():
        assert torch.equal(vit(x), before)


def test_set_strength_takes_the_banks_specs_and_checks_them_first(tmp_path):
    """vislora.set_strength on the model resolves specs exactly as AdapterBank.set_strengths does."""
    path = _adapter_file(tmp_path, tiny_pipeline, ["unet.all", "text.attn"], "a", 1, rank=2)
    pipe1, pipe2 = tiny_pipeline(), tiny_pipeline()
    bank = AdapterBank(pipe1)
    bank.load("a", path)
    vislora.load_adapter(pipe2, path, "a")
    spec = {"*": 0.8, "text_encoder": 0.5, "up.0": 0.25, "IN03": 0.0}
    bank.set_strengths({"a": spec})
    vislora.set_strength(pipe2, "a", spec)
    direct = AdapterBank(pipe2).layer_strengths("a")
    assert direct == bank.layer_strengths("a") and set(direct.values()) == {0.0, 0.2, 0.4, 0.8}
    inputs = unet_inputs()
    assert torch.equal(run_unet(pipe1.unet, inputs), run_unet(pipe2.unet, inputs))
    # One component only: the other keeps its strengths.
    vislora.set_strength(pipe2, "a", 0.9, component="text_encoder")
    after = AdapterBank(pipe2).layer_strengths("a")
    assert all(v == (0.9 if p.startswith("text_encoder.") else direct[p]) for p, v in after.items())
    # A bad spec changes nothing.
    for bad, match in (({"up.7": 0.5}, "names none"), ("lbw:1,2", "values"), (float("nan"), "finite")):
        with pytest.raises(ValueError, match=match):
            vislora.set_strength(pipe2, "a", bad)
        assert AdapterBank(pipe2).layer_strengths("a") == after
    with pytest.raises(ValueError, match="no layers in component"):
        vislora.set_strength(pipe2, "a", 0.5, component="vae")


def test_set_strength_on_a_fused_bank_reblends_from_the_kept_original(tmp_path):
    path = _adapter_file(tmp_path, tiny_unet, ["unet.all"], "a", 1, rank=2)
    unet = tiny_unet()
    before = checksum(unet)
    inputs = unet_inputs()
    bank = AdapterBank(unet, pristine_device="cpu")
    bank.load("a", path, strength=0.5)
    unfused = run_unet(unet, inputs)
    bank.fuse()
    vislora.set_strength(unet, "a", 1.0)
    vislora.set_strength(unet, "a", {"*": 0.5})
    assert torch.allclose(run_unet(unet, inputs), unfused, atol=1e-4, rtol=1e-4)
    bank.unfuse()
    bank.unload("a")
    assert checksum(unet) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the kept originals' device is the point")
def test_pristine_stays_on_the_cpu_for_a_model_on_the_gpu(tmp_path):
    path = _adapter_file(tmp_path, tiny_unet, ["unet.all"], "a", 1, rank=2)
    unet = tiny_unet().cuda()
    bank = AdapterBank(unet, pristine_device="cpu")
    bank.load("a", path, strength=0.5)
    bank.fuse()
    layers = [m for m in unet.modules() if isinstance(m, AdapterLayer) and m.merged]
    assert layers and all(m._pristine.device.type == "cpu" and m.base_layer.weight.is_cuda for m in layers)
    vislora.set_strength(unet, "a", 0.7)   # a re-merge through the model, not the bank
    bank.set_strengths({"a": 0.3})
    unet.half()                            # a dtype change keeps them where they are
    assert all(m._pristine.device.type == "cpu" and m._pristine.dtype == torch.float16 for m in layers)
    bank.unfuse()
    assert all(m._pristine is None and m.base_layer.weight.is_cuda for m in layers)
