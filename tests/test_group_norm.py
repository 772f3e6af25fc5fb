"""kacfast::group_norm (C++ GroupNorm + SiLU for float32 CPU inference) against the reference,
its registration (opcheck, torch.compile), its fallbacks, and the inductor pass that puts it in the
compiled CPU samplers' graphs."""
import pytest
import torch
import torch.nn.functional as F

from kacfast import ops
from kacfast.compiled import FuseGroupNorm
from kacfast.ops import _ext, reference

needs_ext = pytest.mark.skipif(not _ext.available(), reason="C++ extension not built")

# (shape, groups): channels per group 1, 2, 3 and odd; odd and 1x1 images; 3-D and 2-D inputs
CASES = [((2, 32, 16, 16), 32), ((3, 64, 8, 8), 32), ((2, 96, 5, 7), 32), ((3, 6, 5, 7), 3),
         ((1, 10, 3, 3), 5), ((2, 64, 1, 1), 32), ((4, 10, 9), 5), ((5, 8), 2), ((2, 21, 13, 11), 7)]
# (scale, offset) of the input: unit, shifted, a mean 100x its spread, a spread far below eps
DATA = [(1.0, 0.0), (3.0, 1.0), (1.0, 100.0), (1e-4, 0.5)]


def _layouts(x):
    yield "contiguous", x
    last = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else None
    if last is not None:
        yield "channels_last", last
        yield "strided", x.transpose(2, 3)  # neither layout: the kernel makes it contiguous
    if x.shape[0] > 1:  # images 1.. of the batch: a storage offset, in either layout
        yield "offset", x.narrow(0, 1, x.shape[0] - 1)
        if last is not None:
            yield "channels_last offset", last.narrow(0, 1, x.shape[0] - 1)


def _rounding_bound(x, weight, groups):
    """What float32 rounding of x - mean can cost the output: a few ulp of max |x|, scaled by the
    tightest group's 1 / sqrt(var + eps) and the largest weight, plus 1e-6."""
    grouped = x.double().reshape(x.shape[0], groups, -1)
    rstd = (grouped.var(-1, unbiased=False) + 1e-5).rsqrt().max().item()
    gain = 1.0 if weight is None else max(1.0, weight.abs().max().item())
    return 8 * 2.0**-24 * x.abs().max().item() * rstd * gain + 1e-6


@needs_ext
@pytest.mark.parametrize("shape,groups", CASES)
@pytest.mark.parametrize("scale,offset", DATA)
def test_matches_the_reference(shape, groups, scale, offset):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * scale + offset
    channels = shape[1]
    affine = [(None, None), (torch.randn(channels, generator=gen), torch.randn(channels, generator=gen))]
    for name, xs in _layouts(x):
        for weight, bias in affine:
            for silu in (False, True):
                # the ground truth in float64 (torch's own channels-last GroupNorm is 0.02 off at
                # a mean 100x the spread: it takes E[x^2] - mean^2 in float32)
                expected = reference.group_norm(xs.double(), None if weight is None else weight.double(),
                                                None if bias is None else bias.double(), groups, 1e-5, silu).float()
                got = torch.ops.kacfast.group_norm(xs, weight, bias, groups, 1e-5, silu)
                # the fake kernel's layout rule is the kernel's: channels-last stays so
                fake = ops._fake.group_norm(xs, weight, bias, groups, 1e-5, silu)
                assert got.stride() == fake.stride(), name
                assert got.storage_offset() == 0 and got.shape == xs.shape
                torch.testing.assert_close(got, expected, atol=_rounding_bound(xs, weight, groups),
                                           rtol=2e-6, msg=f"{name} {silu}")


@needs_ext
def test_silu_at_extreme_values():
    x = torch.linspace(-1, 1, 64).reshape(1, 4, 4, 4)
    for shift in (-200.0, -87.0, -20.0, 0.0, 20.0, 87.0, 200.0):
        bias = torch.full((4,), shift)
        got = torch.ops.kacfast.group_norm(x, None, bias, 2, 1e-5, True)
        torch.testing.assert_close(got, F.silu(F.group_norm(x, 2, None, bias)), atol=1e-6, rtol=3e-7)
        assert got.isfinite().all()


@needs_ext
def test_empty_batch_and_opcheck():
    assert torch.ops.kacfast.group_norm(torch.zeros(0, 8, 4, 4), None, None, 4, 1e-5, True).shape == (0, 8, 4, 4)
    x = torch.randn(2, 8, 5, 3)
    w, b = torch.randn(8), torch.randn(8)
    for xs in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, 0]):
        torch.library.opcheck(torch.ops.kacfast.group_norm.default, (xs, w, b, 4, 1e-5, True))
        torch.library.opcheck(torch.ops.kacfast.group_norm.default, (xs, None, None, 2, 1e-3, False))


@needs_ext
def test_compiles_fullgraph():
    x = torch.randn(3, 12, 6, 6).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(12), torch.randn(12)

    def block(x):
        return ops.group_norm(x * 2, w, b, groups=4, silu=True) + 1

    with torch.no_grad():
        torch.testing.assert_close(torch.compile(block, fullgraph=True, backend="aot_eager")(x), block(x))


def test_falls_back_to_the_reference():
    x = torch.randn(2, 8, 4, 4)
    w = torch.randn(8, requires_grad=True)
    out = ops.group_norm(x, w, None, groups=4, silu=True)  # autograd: the reference
    out.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    half = ops.group_norm(x.bfloat16(), None, None, groups=4)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference.group_norm(x, None, None, 4), atol=0.05, rtol=0.02)
    with ops.use_backend("torch"):
        torch.testing.assert_close(ops.group_norm(x, groups=2), F.group_norm(x, 2), atol=0, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(groups=3), "divides the 8 channels"), (dict(groups=0), "divides"), (dict(groups=2.0), "divides"),
    (dict(groups=2, eps=0.0), "eps must be > 0"), (dict(groups=2, weight=torch.ones(4)), r"weight must have shape \(8,\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ops.group_norm(torch.zeros(2, 8, 3, 3), **kwargs)


def test_one_dimensional_input_is_refused():
    with pytest.raises(ValueError, match=r"\(N, C, ...\)"):
        ops.group_norm(torch.zeros(8), groups=2)


def test_another_pinned_backend_takes_the_reference():
    x = torch.randn(2, 8, 3, 3)
    with ops.use_backend("triton"):  # no triton kernel for it, on any device: the reference
        assert not ops.group_norm_kernel_runs(x.device)
        torch.testing.assert_close(ops.group_norm(x, groups=2), F.group_norm(x, 2), atol=0, rtol=0)


@needs_ext
def test_kernel_refuses_what_it_does_not_run():
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.kacfast.group_norm(torch.zeros(2, 4, 3, 3, dtype=torch.float64), None, None, 2, 1e-5, False)
    with pytest.raises(RuntimeError, match="divide"):
        torch.ops.kacfast.group_norm(torch.zeros(2, 4, 3, 3), None, None, 3, 1e-5, False)
    with pytest.raises(RuntimeError, match="one per channel"):
        torch.ops.kacfast.group_norm(torch.zeros(2, 4, 3, 3), torch.ones(3), None, 2, 1e-5, False)


class _Block(torch.nn.Module):
    """GroupNorm-SiLU-Conv, a GroupNorm over a 3-D view (as UNet attention), and a bf16 branch."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.GroupNorm(4, 16), torch.nn.GroupNorm(8, 16)
        self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        h = self.conv(F.silu(self.norm1(x)))
        b, c, height, width = h.shape
        h = self.norm2(h.reshape(b, c, height * width)).reshape(b, c, height, width)
        return h, F.group_norm(x.bfloat16(), 4)  # not float32: left to inductor


@needs_ext
def test_inductor_pass_fuses_float32_group_norms():
    torch.manual_seed(0)
    block = _Block().eval()
    x = torch.randn(3, 16, 6, 6)
    with torch.no_grad(), torch._inductor.config.patch(pre_grad_custom_pass=FuseGroupNorm(), freezing=True):
        compiled = torch.compile(block, fullgraph=True)
        out = compiled(x)
        with torch.profiler.profile() as prof:
            compiled(x)
    calls = sum(e.count for e in prof.key_averages() if e.key == "kacfast::group_norm")
    assert calls == 2  # norm1 (+ its SiLU: test_pass_folds_...) and norm2; the bf16 one stays inductor's
    eager = block(x)
    torch.testing.assert_close(out[0], eager[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], eager[1], atol=0.05, rtol=0)  # bf16 rounding
    assert isinstance(FuseGroupNorm().uuid(), bytes)  # inductor's FX graph cache keys on it


def _dynamo_graph(fn, *args):
    """fn's Dynamo graph (with the example values FuseGroupNorm reads) after the pass."""
    graphs = []

    def backend(gm, example_inputs):
        FuseGroupNorm()(gm.graph)
        gm.recompile()
        graphs.append(gm)
        return gm

    out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return graphs[0], out


def _targets(gm):
    return [(n.target, n.args[-1] if n.target is torch.ops.kacfast.group_norm.default else None)
            for n in gm.graph.nodes if n.op == "call_function"]


@needs_ext
def test_pass_folds_only_a_silu_that_is_the_only_user():
    fused = torch.ops.kacfast.group_norm.default
    w, b = torch.randn(8), torch.randn(8)
    x = torch.randn(2, 8, 4, 4)
    cases = {  # fn -> (group_norm calls as (silu folded?), F.silu calls left)
        lambda x: F.silu(F.group_norm(x, 4, w, b)): ([True], 0),
        lambda x: F.group_norm(x, 4, w, b) * 2: ([False], 0),
        lambda x: (lambda h: F.silu(h) + h)(F.group_norm(x, 4, w, b)): ([False], 1),  # two users
        lambda x: F.silu(F.group_norm(x, 4, w, b), inplace=True): ([False], 1),
    }
    for fn, (folded, silu_left) in cases.items():
        with torch.no_grad():
            gm, out = _dynamo_graph(fn, x)
            torch.testing.assert_close(out, fn(x), atol=1e-5, rtol=1e-5)
        targets = _targets(gm)
        assert [s for t, s in targets if t is fused] == folded
        assert sum(t is F.silu for t, _ in targets) == silu_left and F.group_norm not in dict(targets)


@needs_ext
def test_pass_leaves_graphs_that_need_gradients():
    w = torch.randn(8, requires_grad=True)
    x = torch.randn(2, 8, 4, 4)
    gm, out = _dynamo_graph(lambda x: F.silu(F.group_norm(x, 4, w)), x)
    assert torch.ops.kacfast.group_norm.default not in dict(_targets(gm))
    out.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
