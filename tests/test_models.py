"""kacfast.models: presets, the model contract, config round-trip, compile, input checks."""
import json
import math

import pytest
import torch

import kacfast
from kacfast.models import MLP, PRESETS, UNet, build_model, model_from_config
from kacfast.models.unet import AttentionBlock, timestep_embedding

SMALL_PRESETS = ["mlp", "unet-tiny", "unet-small"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread. On a shared, oversubscribed CPU two OpenMP threads make
    each small op wait for a descheduled partner (100x slower forwards here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(model, batch=2, seed=0, size=None):
    g = torch.Generator().manual_seed(seed)
    shape = model.sample_shape if size is None else (model.sample_shape[0], size, size)
    x = torch.randn((batch,) + tuple(shape), generator=g)
    t = torch.rand(batch, generator=g)
    y = None if model.num_classes is None else torch.randint(0, model.num_classes, (batch,),
                                                             generator=g)
    return x, t, y


def _randomize(model, seed=0, std=0.1):
    """Overwrite every parameter (the zero-initialized ones too) with noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def _nparams(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# presets and shapes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_preset_shapes_and_zero_init(name):
    model = build_model(name)
    assert model.kind == PRESETS[name]["kind"]
    x, t, y = _inputs(model, batch=3)
    out = model(x, t, y)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.count_nonzero(out) == 0  # zero-initialized output layer
    out.sum().backward()  # differentiable end to end


def test_preset_defaults():
    mlp = build_model("mlp")
    assert mlp.sample_shape == (2,) and mlp.num_classes is None
    assert 150_000 < _nparams(mlp) < 250_000
    tiny = build_model("unet-tiny")
    assert tiny.sample_shape == (1, 28, 28) and tiny.num_classes == 10
    assert tiny.config["attention_resolutions"] == [14]
    small = build_model("unet-small")
    assert small.sample_shape == (1, 28, 28) and small.config["attention_resolutions"] == [7]
    assert small.level_sizes == (28, 14, 7)
    assert _nparams(tiny) < _nparams(small)


def test_unet_cifar10_reference_config():
    model = build_model("unet-cifar10")
    assert model.sample_shape == (3, 32, 32) and model.num_classes == 10
    assert model.config["attention_resolutions"] == [16]
    assert 35_000_000 < _nparams(model) < 36_500_000  # ADM/DDPM CIFAR-10 UNet: 35.7M
    # attention: 2 down blocks + 3 up blocks at 16x16, + the middle block
    assert sum(isinstance(m, AttentionBlock) for m in model.modules()) == 6
    x, t, y = _inputs(model, batch=1)
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (1, 3, 32, 32) and torch.count_nonzero(out) == 0


@pytest.mark.parametrize("size", [8, 7, 27])
def test_unet_tiny_overrides_and_odd_sizes(size):
    model = _randomize(build_model("unet-tiny", image_size=size, in_channels=3))
    assert model.sample_shape == (3, size, size)
    lowest = (size + 1) // 2
    assert model.config["attention_resolutions"] == [lowest]
    x, t, y = _inputs(model, batch=2)
    assert model(x, t, y).shape == (2, 3, size, size)
    # fully convolutional: another input size works too
    x2, _, _ = _inputs(model, batch=2, size=size + 3)
    assert model(x2, t, y).shape == x2.shape


def test_unet_small_odd_chain():
    model = _randomize(build_model("unet-small", num_res_blocks=1))
    x, t, y = _inputs(model, batch=2)
    out = model(x, t, y)
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()


def test_scale_shift_norm_and_unconditional():
    model = _randomize(UNet(in_channels=2, image_size=8, model_channels=16, channel_mult=(1, 2),
                            attention_resolutions=(4, 8), num_heads=2,
                            use_scale_shift_norm=True))
    assert model.num_classes is None and not hasattr(model, "label_emb")
    x, t, _ = _inputs(model)
    assert model(x, t).shape == x.shape
    with pytest.raises(ValueError, match="y must be None"):
        model(x, t, torch.zeros(2, dtype=torch.long))


def test_mlp_conditional_override():
    model = _randomize(build_model("mlp", num_classes=8, dim=3))
    assert model.sample_shape == (3,) and model.num_classes == 8
    x, t, y = _inputs(model, batch=5)
    assert model(x, t, y).shape == (5, 3)


# ----------------------------------------------------------------------------------------------
# config round trip, determinism
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_config_round_trip(name):
    model = _randomize(build_model(name))
    config = json.loads(json.dumps(model.config))  # plain JSON-able
    clone = model_from_config(model.kind, config)
    assert type(clone) is type(model) and clone.config == model.config
    a, b = model.state_dict(), clone.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    clone.load_state_dict(a)
    clone.eval()
    x, t, y = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(clone(x, t, y), model(x, t, y), rtol=0, atol=0)
    assert type(model)(**config).config == model.config


def test_model_from_config_errors():
    with pytest.raises(ValueError, match="kind"):
        model_from_config("resnet", {})
    with pytest.raises(ValueError, match="config"):
        model_from_config("mlp", {"bogus": 1})
    with pytest.raises(ValueError, match="preset"):
        build_model("unet-huge")
    with pytest.raises(ValueError, match="override"):
        build_model("unet-tiny", channels=3)
    with pytest.raises(ValueError, match="num_heads"):
        build_model("unet-tiny", num_heads=3)  # 64 channels at the attention layer
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(channel_mult=())
    with pytest.raises(ValueError, match="dropout"):
        UNet(dropout=1.5)
    with pytest.raises(ValueError, match=r"attention_resolutions \[16\] match no level"):
        UNet(image_size=28, channel_mult=(1, 2, 2), attention_resolutions=(16,))


def test_determinism_under_seed():
    torch.manual_seed(123)
    a = build_model("unet-tiny", image_size=8, dropout=0.2)
    torch.manual_seed(123)
    b = build_model("unet-tiny", image_size=8, dropout=0.2)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    _randomize(a), _randomize(b)
    a.train(), b.train()
    x, t, y = _inputs(a)
    torch.manual_seed(7)
    out_a = a(x, t, y)
    torch.manual_seed(7)
    out_b = b(x, t, y)
    assert torch.equal(out_a, out_b)  # same dropout masks under the same seed
    a.eval()
    assert torch.equal(a(x, t, y), a(x, t, y))


# ----------------------------------------------------------------------------------------------
# time and label conditioning
# ----------------------------------------------------------------------------------------------

def test_time_embedding_scale():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(t, 32)  # time_scale 1000: raw t in [0, 1] ~ ADM steps 0..1000
    torch.testing.assert_close(emb, timestep_embedding(t * 1000, 32, time_scale=1.0))
    half = torch.exp(-math.log(10000.0) * torch.arange(16) / 16)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(250 * half), torch.sin(250 * half)]))
    assert timestep_embedding(t, 7).shape == (3, 7)


@pytest.mark.parametrize("name", ["mlp", "unet-tiny"])
def test_time_fed_raw(name):
    model = _randomize(build_model(name, **({"image_size": 8} if name != "mlp" else {})))
    x, _, y = _inputs(model, batch=2)
    ones = torch.ones(2)
    with torch.no_grad():
        out = {s: model(x, s * ones, y) for s in (0.0, 0.01, 0.5, 1.0)}
        scale = out[0.5].abs().mean()
        # raw t in [0, 1] moves the output, already for a 1% step of the horizon
        assert (out[0.0] - out[1.0]).abs().mean() > 0.05 * scale
        assert (out[0.0] - out[0.01]).abs().mean() > 0.01 * scale
        # a number or a 0-d tensor is broadcast over the batch
        assert torch.equal(model(x, 0.5, y), out[0.5])
        assert torch.equal(model(x, torch.tensor(0.5), y), out[0.5])


@pytest.mark.parametrize("name", ["mlp", "unet-tiny"])
def test_null_label(name):
    overrides = {"num_classes": 4} if name == "mlp" else {"image_size": 8}
    model = _randomize(build_model(name, **overrides))
    x, t, y = _inputs(model, batch=3)
    null = torch.full((3,), model.num_classes, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, None), model(x, t, null), rtol=0, atol=0)
        assert not torch.allclose(model(x, t, y), model(x, t, null))
        assert not torch.allclose(model(x, t, torch.zeros_like(y)), model(x, t, torch.ones_like(y)))
        # int32 labels work
        torch.testing.assert_close(model(x, t, y.int()), model(x, t, y))


def test_guided_sampling_contract():
    model = build_model("unet-tiny", image_size=8)
    _randomize(model, std=0.02)
    out = kacfast.sample(model, steps=2, labels=[0, 3], guidance=2.0, seed=0)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    mlp = _randomize(build_model("mlp"), std=0.05)
    assert kacfast.sample(mlp, steps=2, batch_size=4, seed=0).shape == (4, 2)


# ----------------------------------------------------------------------------------------------
# compile
# ----------------------------------------------------------------------------------------------

def test_compile_fullgraph_unet_tiny():
    torch._dynamo.reset()
    model = _randomize(build_model("unet-tiny"))
    x, t, y = _inputs(model, batch=2)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled(x, t, None), model(x, t, None), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# input errors
# ----------------------------------------------------------------------------------------------

def test_bad_inputs_unet():
    model = build_model("unet-tiny", image_size=8)
    x, t, y = _inputs(model, batch=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, \*, \*\)"):
        model(torch.randn(2, 3, 8, 8), t, y)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(2, 64), t, y)
    with pytest.raises(ValueError, match="x must be a floating-point"):
        model(torch.zeros(2, 1, 8, 8, dtype=torch.long), t, y)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        model(x, torch.rand(3), y)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 9\]"):
        model(x, t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="y must hold labels"):
        model(x, t, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="y must be an integer tensor"):
        model(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        model(x, t, torch.tensor([1]))
    model(x, t, torch.tensor([10, 10]))  # the null label is allowed


def test_bad_inputs_mlp():
    model = build_model("mlp", num_classes=3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        model(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="y must hold labels"):
        model(torch.randn(2, 2), torch.rand(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="y must be None"):
        build_model("mlp")(torch.randn(2, 2), torch.rand(2), torch.tensor([0, 1]))


def test_dtype_follows_input():
    model = _randomize(build_model("mlp"))
    x = torch.randn(3, 2, dtype=torch.float64)
    assert model(x, torch.rand(3)).dtype == torch.float64


# ----------------------------------------------------------------------------------------------
# flow maps (interval-conditioned models)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,overrides", [("mlp", {"num_classes": 3}),
                                            ("unet-tiny", {"image_size": 8})])
def test_flow_map_starts_as_its_model(name, overrides):
    """as_flow_map keeps every weight and adds a zero interval embedding: the same velocity for
    every interval, until trained; its config rebuilds a flow map."""
    from kacfast.models import as_flow_map, is_flow_map
    model = _randomize(build_model(name, **overrides))
    flow_map = as_flow_map(model)
    assert is_flow_map(flow_map) and not is_flow_map(model)
    assert flow_map.config == {**model.config, "interval_conditioned": True}
    rebuilt = model_from_config(flow_map.kind, json.loads(json.dumps(flow_map.config)))
    assert is_flow_map(rebuilt) and rebuilt.state_dict().keys() == flow_map.state_dict().keys()
    x, t, y = _inputs(model, batch=3)
    with torch.no_grad():
        for interval in (None, 0.0, t / 2, t):
            torch.testing.assert_close(flow_map(x, t, y, interval=interval), model(x, t, y))
        # a trained interval embedding makes the interval matter; None is h = 0
        _randomize(flow_map, seed=1)
        assert not torch.allclose(flow_map(x, t, y, interval=t), flow_map(x, t, y, interval=0.0))
        torch.testing.assert_close(flow_map(x, t, y), flow_map(x, t, y, interval=0.0))
    with pytest.raises(ValueError, match="interval= needs an interval-conditioned model"):
        model(x, t, y, interval=0.5)
    with pytest.raises(ValueError, match=r"interval must have shape \(3,\)"):
        flow_map(x, t, y, interval=torch.rand(2))
    with pytest.raises(ValueError, match="interval must be a"):
        flow_map(x, t, y, interval="long")


def test_flow_map_needs_a_built_in_network():
    from kacfast.models import as_flow_map

    class Foreign(torch.nn.Module):
        kind = "diffusers"

    with pytest.raises(ValueError, match="built into the 'unet' and 'mlp' models"):
        as_flow_map(Foreign())


# ----------------------------------------------------------------------------------------------
# Kac preconditioning (a teacher lever)
# ----------------------------------------------------------------------------------------------
PRECONDITION = dict(a=9.0, c=3.0, T=2.0, clock="t", rms_data=0.9)


def test_preconditioned_unet_is_c_out_times_the_network_at_c_in_x():
    """A UNet built with precondition= computes c_out(t) F(c_in(t) x, t, y) with F the same weights
    unpreconditioned, (c_in, c_out) from kacfast.formulas.kac_preconditioning (interpolated from a
    table that is rebuilt, not saved); the config rebuilds it, a flow map keeps it."""
    from kacfast.formulas import kac_preconditioning
    from kacfast.models import as_flow_map

    model = _randomize(build_model("unet-tiny", image_size=8, precondition=dict(PRECONDITION)))
    plain = build_model("unet-tiny", image_size=8)
    assert model.state_dict().keys() == plain.state_dict().keys()   # the table is not a weight
    plain.load_state_dict(model.state_dict())
    assert model.config == {**plain.config, "precondition": PRECONDITION}
    x, _, y = _inputs(model, batch=4)
    t = torch.tensor([0.0, 0.3, 1.7, 2.0])
    c_in, c_out = (v.float()[:, None, None, None] for v in kac_preconditioning(t, 9.0, 3.0, 2.0, "t", 0.9))
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), c_out * plain(c_in * x, t, y), rtol=1e-4, atol=1e-5)
        rebuilt = model_from_config("unet", json.loads(json.dumps(model.config)))
        rebuilt.load_state_dict(model.state_dict())
        torch.testing.assert_close(rebuilt(x, t, y), model(x, t, y))
        flow_map = as_flow_map(model)
        assert flow_map.config["precondition"] == PRECONDITION
        torch.testing.assert_close(flow_map(x, t, y, interval=t / 2), model(x, t, y))
    assert c_in[0].item() == pytest.approx(1 / 0.9) and c_out[0].item() == pytest.approx(math.sqrt(0.81 / 4 + 9))


@pytest.mark.parametrize("bad, match", [({"a": 9.0}, "precondition must be None or a dict"),
                                        ({**PRECONDITION, "rms_data": 0.0}, r"rms_data .* must be a number > 0"),
                                        ({**PRECONDITION, "clock": "t3"}, "clock must be one of"),
                                        ({**PRECONDITION, "a": -1.0}, "a must be a number > 0")])
def test_preconditioning_settings_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        build_model("unet-tiny", image_size=8, precondition=bad)


@pytest.mark.parametrize("a, T", [(9.0, 1.0), (25.0, 1.0), (9.0, 10.0)])
def test_preconditioner_table_follows_the_formula_on_any_device_and_dtype(a, T):
    """The interpolated table is within 5e-5 relative of kac_preconditioning at random times for
    any a T (its size grows with a T); it is built on the CPU even inside `with torch.device("meta")`
    (how the diffusers wrapper builds networks), and a module cast to bf16 still returns float32."""
    from kacfast.formulas import kac_preconditioning
    from kacfast.models.precondition import KacPreconditioner

    scales = KacPreconditioner(a, 3.0, T, "t", 0.8)
    t = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * T
    exact = kac_preconditioning(t, a, 3.0, T, "t", 0.8)
    for got, want in zip(scales(t.float()), exact):
        assert got.dtype == torch.float32
        assert ((got.double() - want) / want).abs().max().item() < 5e-5
    with torch.device("meta"):
        built = build_model("unet-tiny", image_size=8, precondition=dict(a=a, c=3.0, T=T, clock="t", rms_data=0.8))
    assert built.preconditioner.table.device.type == "cpu"
    torch.testing.assert_close(built.preconditioner.table, scales.table)
    halved = scales.to(torch.bfloat16)(t[:4].float())
    assert all(v.dtype == torch.float32 for v in halved)
