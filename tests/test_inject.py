"""inject / merge / unmerge / remove on tiny ViT, UNet and CLIP models."""

import copy

import pytest
import torch
from conftest import checksum, images, run_unet, tiny_pipeline, tiny_vit, tokens, unet_inputs

import vislora
from vislora import AdapterCompatError, AdapterLayer, AdapterStateError, NonFiniteError

MODELS = {
    "vit": (tiny_vit, "vit.all", lambda m: m(images())),
    "unet": (None, ["unet.attn_ff", "unet.conv"], None),
    "clip": (None, "text.all", None),
}


def _model(kind):
    from conftest import tiny_clip, tiny_unet

    if kind == "vit":
        return tiny_vit(), "vit.all", lambda m: m(images())
    if kind == "unet":
        inputs = unet_inputs()
        return tiny_unet(), ["unet.attn_ff", "unet.conv"], lambda m: run_unet(m, inputs)
    return tiny_clip(), "text.all", lambda m: m(tokens()).last_hidden_state


KINDS = ["vit", "unet", "clip"]


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_adapter_is_exact_noop_and_random_changes_output(kind):
    model, target, run = _model(kind)
    with torch.no_grad():
        base = run(model)
        vislora.inject(model, target, rank=4, name="fresh")
        assert torch.equal(run(model), base)
        vislora.inject(model, target, rank=4, name="random", init="random")
        assert not torch.allclose(run(model), base, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("conv", ["locon", "tucker"])
def test_merged_equals_unmerged_and_unmerge_is_exact(kind, conv):
    model, target, run = _model(kind)
    before = checksum(model)
    originals = {n: p for n, p in model.named_parameters()}
    with torch.no_grad():
        base = run(model)
        vislora.inject(model, target, rank=4, alpha=2, conv=conv, init="random")
        unmerged = run(model)
        assert not torch.allclose(unmerged, base, atol=1e-4)
        assert vislora.merge(model) > 0
        merged = run(model)
        tol = 1e-4 if kind == "unet" else 1e-5  # the UNet output passes through 3x3 convs
        torch.testing.assert_close(merged, unmerged, rtol=tol, atol=tol)
        vislora.unmerge(model)
        assert torch.equal(run(model), unmerged)
        vislora.remove(model)
    assert checksum(model) == before
    assert set(dict(model.named_parameters())) == set(originals)
    assert all(p is originals[n] for n, p in model.named_parameters())
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(run(model), base)


def test_remove_restores_state_dict_keys(vit):
    keys = list(vit.state_dict())
    vislora.inject(vit, "vit.attn", rank=2)
    assert any("base_layer" in k for k in vit.state_dict())
    vislora.remove(vit)
    assert list(vit.state_dict()) == keys
    assert type(vit.blocks[0].attn.qkv) is torch.nn.Linear


def test_remove_keep_merged_bakes_the_adapter(vit):
    x = images()
    vislora.inject(vit, "vit.all", rank=4, init="random")
    with torch.no_grad():
        adapted = vit(x)
        vislora.merge(vit)
        vislora.remove(vit, keep_merged=True)
        torch.testing.assert_close(vit(x), adapted, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, AdapterLayer) for m in vit.modules())


def test_only_adapter_parameters_train(vit):
    vit.train()
    vislora.inject(vit, "vit.all", rank=4, init="random", modules_to_save=["head"])
    params = vislora.trainable_parameters(vit)
    trainable_ids = {id(p) for p in params}
    frozen = {n: p.detach().clone() for n, p in vit.named_parameters() if id(p) not in trainable_ids}
    start = {id(p): p.detach().clone() for p in params}
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        vit(images()).logsumexp(-1).mean().backward()
        opt.step()
    for n, p in vit.named_parameters():
        if id(p) in trainable_ids:
            assert not torch.equal(p, start[id(p)]), n
        else:
            assert p.grad is None and torch.equal(p, frozen[n]), n
    names = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert all(".adapters." in n or n.startswith("head.") for n in names)


def test_qv_slices_leave_k_rows_alone(vit):
    qkv = vit.blocks[0].attn.qkv
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        base = qkv(x)
        vislora.inject(vit, "vit.qv", rank=4, init="random")
        out = vit.blocks[0].attn.qkv(x)
    d = 64
    assert torch.equal(out[..., d:2 * d], base[..., d:2 * d])
    assert not torch.allclose(out[..., :d], base[..., :d])
    assert not torch.allclose(out[..., 2 * d:], base[..., 2 * d:])
    layer = vit.blocks[0].attn.qkv
    assert layer.adapters["default"].down.shape == (8, 64) and layer.adapters["default"].up.shape == (128, 4)


def test_user_glob_regex_and_per_target_rank(vit):
    report = vislora.inject(vit, {"blocks.*.attn.qkv": 2, "re:blocks\\.1\\.mlp\\.fc[12]": {"rank": 6, "alpha": 3}})
    assert report.matched == ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    assert vit.blocks[0].attn.qkv.adapters["default"].rank == 2
    fc1 = vit.blocks[1].mlp.fc1.adapters["default"]
    assert (fc1.rank, fc1.alpha, fc1.scale) == (6, 3.0, 0.5)


def test_later_rule_overrides_rank(vit):
    vislora.inject(vit, {"vit.attn": 4, "blocks.1.attn.qkv": 8})
    assert vit.blocks[0].attn.qkv.adapters["default"].rank == 4
    assert vit.blocks[1].attn.qkv.adapters["default"].rank == 8


def test_target_matching_nothing_is_an_error_listing_names(vit):
    before = checksum(vit)
    with pytest.raises(AdapterCompatError, match="blocks.0.attn.qkv"):
        vislora.inject(vit, ["vit.attn", "blocks.*.attn.qkvx"])
    assert checksum(vit) == before and not any(isinstance(m, AdapterLayer) for m in vit.modules())
    with pytest.raises(AdapterCompatError, match="matches no"):
        vislora.inject(vit, "unet.cross_attn")


def test_duplicate_and_bad_names(vit):
    vislora.inject(vit, "vit.attn", name="a")
    with pytest.raises(AdapterStateError):
        vislora.inject(vit, "vit.attn", name="a")
    with pytest.raises(ValueError):
        vislora.inject(vit, "vit.attn", name="has.dot")


def test_rslora_scale(vit):
    vislora.inject(vit, "vit.attn", rank=16, alpha=8, rslora=True)
    assert vit.blocks[0].attn.qkv.adapters["default"].scale == pytest.approx(2.0)


def test_strength_is_linear_and_zero_is_exact(vit):
    x = images()
    with torch.no_grad():
        base = vit.blocks[0].attn.qkv(x.new_ones(2, 5, 64))
        vislora.inject(vit, "vit.attn", rank=4, init="random")
        layer = vit.blocks[0].attn.qkv
        inp = x.new_ones(2, 5, 64)
        vislora.set_strength(vit, "default", 1.0)
        unit = layer(inp) - base
        for w in (-1.0, 0.37, 2.5):
            vislora.set_strength(vit, "default", w)
            torch.testing.assert_close(layer(inp) - base, w * unit, rtol=1e-5, atol=1e-6)
        vislora.set_strength(vit, "default", 0.0)
        assert torch.equal(layer(inp), base)


def test_blend_is_additive_and_order_free(vit):
    x = images()
    with torch.no_grad():
        base = vit(x)
        vislora.inject(vit, "vit.all", rank=4, init="random", name="a")
        vislora.inject(vit, "vit.all", rank=2, init="random", name="b")
        vislora.set_strength(vit, "a", 0.5)
        vislora.set_strength(vit, "b", -0.8)
        both = vit(x)
        layer = vit.blocks[0].mlp.fc1
        inp = torch.randn(2, 5, 64)
        b0 = layer.base_layer(inp)
        da = layer.adapters["a"].delta_forward(inp) * layer.adapters["a"].coef
        db = layer.adapters["b"].delta_forward(inp) * layer.adapters["b"].coef
        torch.testing.assert_close(layer(inp), b0 + da + db, rtol=1e-5, atol=1e-6)
        # Merging one and not the other gives the same model output.
        vislora.merge(vit, "a")
        torch.testing.assert_close(vit(x), both, rtol=1e-5, atol=1e-5)
        vislora.merge(vit, "b")
        torch.testing.assert_close(vit(x), both, rtol=1e-5, atol=1e-5)
        vislora.unmerge(vit)
        assert not torch.allclose(both, base, atol=1e-4)


def _at_strength(model, x, strength):
    vislora.set_strength(model, "default", strength)
    return model(x)


def test_merge_twice_warns_and_strength_change_refreshes_merge(vit):
    x = images()
    vislora.inject(vit, "vit.attn", rank=4, init="random")
    with torch.no_grad():
        vislora.merge(vit)
        first = vit(x)
        with pytest.warns(UserWarning, match="nothing to merge"):
            vislora.merge(vit)
        assert torch.equal(vit(x), first)
        vislora.unmerge(vit)
        half_unmerged = _at_strength(vit, x, 0.5)
        base = _at_strength(vit, x, 0.0)
        vislora.set_strength(vit, "default", 1.0)
        vislora.merge(vit)
        vislora.set_strength(vit, "default", 0.5)  # a merged adapter's weight follows its strength
        torch.testing.assert_close(vit(x), half_unmerged, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(vit(x), first, atol=1e-3)
        vislora.set_strength(vit, "default", 0.0)
        torch.testing.assert_close(vit(x), base, rtol=1e-5, atol=1e-5)
        vislora.unmerge(vit)
        with pytest.warns(UserWarning, match="nothing is merged"):
            vislora.unmerge(vit)


def test_merge_with_nonfinite_delta_raises_and_leaves_weights(vit):
    vislora.inject(vit, "vit.attn", rank=4, init="random")
    with torch.no_grad():
        vit.blocks[1].attn.proj.adapters["default"].up[0, 0] = float("nan")
    before = checksum(vit)
    with pytest.raises(NonFiniteError):
        vislora.merge(vit)
    assert checksum(vit) == before
    assert all(not m.merged for m in vit.modules() if isinstance(m, AdapterLayer))


def test_merge_does_not_alias_callers_state_dict(vit):
    taken = vit.state_dict()
    saved = {k: v.clone() for k, v in taken.items()}
    vislora.inject(vit, "vit.attn", rank=4, init="random")
    vislora.merge(vit)
    vislora.unmerge(vit)
    vislora.merge(vit)
    for k, v in taken.items():
        assert torch.equal(v, saved[k]), k


def test_disabled_context_restores_even_after_error(vit):
    x = images()
    with torch.no_grad():
        base = vit(x)
        vislora.inject(vit, "vit.attn", rank=4, init="random")
        adapted = vit(x)
        with vislora.disabled(vit):
            assert torch.equal(vit(x), base)
        with pytest.raises(RuntimeError):
            with vislora.disabled(vit):
                raise RuntimeError("boom")
        assert torch.equal(vit(x), adapted)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_base(dtype):
    vit = tiny_vit().to(dtype)
    x = images().to(dtype)
    vislora.inject(vit, "vit.all", rank=4, init="random")
    slot = vit.blocks[0].attn.qkv.adapters["default"]
    assert slot.down.dtype == torch.float32
    with torch.no_grad():
        out = vit(x)
        vislora.merge(vit)
        merged = vit(x)
        vislora.unmerge(vit)
    assert torch.isfinite(out).all() and torch.isfinite(merged).all()
    torch.testing.assert_close(merged.float(), out.float(), rtol=5e-2, atol=5e-2)
    vit.train()
    vit(x).float().sum().backward()
    assert slot.up.grad is not None and slot.up.grad.dtype == torch.float32


def test_dropout_trains_and_is_off_in_eval(vit):
    x = images()
    vislora.inject(vit, "vit.all", rank=4, init="random", dropout=0.5)
    vit.eval()
    with torch.no_grad():
        a, b = vit(x), vit(x)
    assert torch.equal(a, b)
    vit.train()
    torch.manual_seed(0)
    out1 = vit(x)
    out1.sum().backward()
    torch.manual_seed(1)
    with torch.no_grad():
        out2 = vit(x)
    assert not torch.allclose(out1, out2)


def test_pipeline_components_and_prefixed_paths():
    pipe = tiny_pipeline()
    unet_report = vislora.inject(pipe, ["unet.cross_attn", "text.attn"], rank=2, init="random")
    assert any(p.startswith("unet.") for p in unet_report.matched)
    assert any(p.startswith("text_encoder.") for p in unet_report.matched)
    assert isinstance(pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k, AdapterLayer)
    names = {n for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert names and all(".adapters." in n for n in names)
    with pytest.raises(ValueError, match="component"):
        vislora.inject(pipe, "down_blocks.*.attn2.to_k", name="x")
    report = vislora.inject(pipe, "unet.down_blocks.*.attn1.to_q", name="y")
    assert report.matched == ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]


def test_deit_and_eva_relatives():
    import timm

    for name in ("deit_tiny_patch16_224", "eva02_tiny_patch14_224"):
        torch.manual_seed(0)
        m = timm.create_model(name, pretrained=False, img_size=28 if "eva" in name else 32,
                              patch_size=14 if "eva" in name else 8, num_classes=3, depth=2).eval()
        x = images(size=28 if "eva" in name else 32)
        with torch.no_grad():
            base = m.forward_features(x)  # features: the heads start near zero
            # qkv only: EVA's attention reads qkv.weight and never calls the layer, so the output changes
            # only if the adapter's .weight path works
            report = vislora.inject(m, "blocks.*.attn.qkv", rank=2, init="random")
            assert report.matched == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"], (name, report.matched)
            adapted = m.forward_features(x)
            assert not torch.allclose(adapted, base, atol=1e-2), name
            vislora.merge(m)  # the merged weight is what any host code reads: same output
            torch.testing.assert_close(m.forward_features(x), adapted, rtol=1e-5, atol=1e-5, msg=name)
