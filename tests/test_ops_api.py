"""Op registration (opcheck, torch.compile), backend choice, fallback, and argument validation."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import kacfast
from kacfast import ops
from kacfast.ops import _ext

needs_ext = pytest.mark.skipif(not _ext.available(), reason="C++ extension not built")


def sample_args():
    x0 = torch.rand(3, 2, 5) * 2 - 1
    t = torch.tensor([0.0, 0.4, 1.0])
    s = torch.rand(3) + 0.1
    return {
        "kac_velocity": (x0, s, 9.0, 3.0, 1e-4),
        "kac_noise": (torch.rand(4, 7), 9.0, 3.0, 5, 2, torch.float32),
        "kac_noise_target": (x0, t, 9.0, 3.0, 1.0, 1, 1e-4, 5, 2),
    }


@needs_ext
@pytest.mark.parametrize("name", ["kac_velocity", "kac_noise", "kac_noise_target"])
def test_opcheck_cpu(name):
    torch.library.opcheck(getattr(torch.ops.kacfast, name).default, sample_args()[name])


@pytest.mark.parametrize("backend", [b for b in ops.available_backends("cpu") if b != "triton"])
def test_compile_fullgraph(backend):
    proc = kacfast.KacProcess()

    def loss_terms(x0, t):
        x_t, u = proc.noise_target(x0, t, seed=1, offset=3)
        v = ops.kac_velocity(x_t, t[:, None], proc.a, proc.c)
        return x_t, u, v

    x0, t = torch.rand(4, 9) * 2 - 1, torch.rand(4)
    with ops.use_backend(backend):
        eager = loss_terms(x0, t)
        compiled = torch.compile(loss_terms, fullgraph=True, backend="aot_eager")(x0, t)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(e, c)


def test_backend_choice_and_pinning():
    expected = "cpu" if _ext.available() else "torch"
    assert ops.resolve_backend(torch.device("cpu")) == expected
    with ops.use_backend("torch"):
        assert ops.resolve_backend(torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="unknown kacfast backend"):
        with ops.use_backend("fast"):
            pass
    with ops.use_backend("cuda"), pytest.raises(RuntimeError, match="cannot run on cpu"):
        ops.kac_velocity(torch.zeros(3), 1.0, 9.0, 3.0)


def test_missing_extension_falls_back_to_reference_with_one_warning():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["kacfast._C"] = None  # makes `from kacfast import _C` fail like a missing build
        import torch, kacfast
        from kacfast import ops
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = ops.kac_noise(torch.full((10,), 0.5), 9.0, 3.0, seed=0)
            v = ops.kac_velocity(x, 0.5, 9.0, 3.0)
        assert ops.resolve_backend(torch.device("cpu")) == "torch"
        msgs = [str(w.message) for w in caught if "kacfast._C" in str(w.message)]
        assert len(msgs) == 1, msgs
        assert "pip install --no-build-isolation" in msgs[0]
        print("fallback-ok", ops._ext.why_unavailable())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fallback-ok ModuleNotFoundError" in out.stdout


def nan_at(x, index=(1, 2)):
    y = x.clone()
    y[index] = math.nan
    return y


@pytest.mark.parametrize("backend", [b for b in ops.available_backends("cpu") if b != "triton"])
def test_bad_inputs_raise_clear_errors(backend):
    x0 = torch.rand(4, 3)
    t = torch.rand(4)
    with ops.use_backend(backend):
        cases = [
            (lambda: ops.kac_velocity(x0, 0.5, -1.0, 3.0), ValueError, "rate a must be > 0"),
            (lambda: ops.kac_velocity(x0, 0.5, 9.0, 0.0), ValueError, "speed c must be > 0"),
            (lambda: ops.kac_velocity(x0, 0.5, 9.0, 3.0, eps=1.0), ValueError, "eps must lie"),
            (lambda: ops.kac_velocity(x0.long(), 0.5, 9.0, 3.0), TypeError, "floating-point"),
            (lambda: ops.kac_velocity(x0, torch.rand(3, 4), 9.0, 3.0), ValueError, "does not broadcast"),
            (lambda: ops.kac_velocity(x0, -0.1, 9.0, 3.0), ValueError, "s must lie in"),
            (lambda: ops.kac_noise(torch.rand(3), 9.0, 3.0, seed=-1), ValueError, "seed must be"),
            (lambda: ops.kac_noise(torch.rand(3), 9.0, 3.0, seed=0, offset=2**32), ValueError, "offset"),
            (lambda: ops.kac_noise(torch.rand(3), 9.0, 3.0, seed=0, dtype=torch.int32), TypeError, "dtype"),
            (lambda: ops.kac_noise(torch.tensor([0.1, float("nan")]), 9.0, 3.0, seed=0), ValueError, "s must lie"),
            (lambda: ops.kac_noise(torch.tensor([float("inf")]), 9.0, 3.0, seed=0), ValueError, "s must lie"),
            (lambda: ops.kac_noise_target(x0, t * 2, 9.0, 3.0, 1.0, seed=0), ValueError, r"t must lie in \[0"),
            (lambda: ops.kac_noise_target(x0, t[:3], 9.0, 3.0, seed=0), ValueError, "shape"),
            (lambda: ops.kac_noise_target(x0, t, 9.0, 3.0, T=0.0, seed=0), ValueError, "horizon T"),
            (lambda: ops.kac_noise_target(x0, t, 9.0, 3.0, clock="sqrt", seed=0), ValueError, "clock"),
            (lambda: ops.kac_velocity(nan_at(x0), 0.5, 9.0, 3.0), ValueError, "x must be finite; found nan"),
            (lambda: ops.kac_velocity(x0 / 0, 0.5, 9.0, 3.0), ValueError, "x must be finite; found inf"),
            (lambda: ops.kac_noise_target(nan_at(x0), t, 9.0, 3.0, seed=0), ValueError, "x0 must be finite"),
            (lambda: ops.guided_step(x0, x0, guidance=math.nan, h=0.1), ValueError, "guidance must be finite"),
            (lambda: ops.guided_step(x0, x0, alpha=math.inf, h=0.1), ValueError, "alpha must be finite"),
            (lambda: ops.guided_step(x0, x0, h=math.inf), ValueError, "h must be finite"),
            (lambda: ops.guided_step(x0, x0, h=math.nan), ValueError, "h must be finite"),
        ]
        for call, exc, msg in cases:
            with pytest.raises(exc, match=msg):
                call()


@needs_ext
def test_cpp_checks_reject_bad_raw_calls():
    """The C++ ops check their own arguments too (for callers that skip the Python layer)."""
    with pytest.raises(RuntimeError, match="does not divide"):
        torch.ops.kacfast.kac_velocity(torch.rand(10), torch.rand(3), 9.0, 3.0, 1e-4)
    with pytest.raises(RuntimeError, match="must be float32"):
        torch.ops.kacfast.kac_velocity(torch.rand(10), torch.rand(10).double(), 9.0, 3.0, 1e-4)
    with pytest.raises(RuntimeError, match="clock must be"):
        torch.ops.kacfast.kac_noise_target(torch.rand(2, 3), torch.rand(2), 9.0, 3.0, 1.0, 5, 1e-4, 0, 0)


def test_process_validation_and_roundtrip():
    with pytest.raises(ValueError, match="a must be a number > 0"):
        kacfast.KacProcess(a=0)
    with pytest.raises(ValueError, match="clock"):
        kacfast.KacProcess(clock="linear")
    proc = kacfast.KacProcess(a=25.0, c=2.0, clock="t2")
    assert kacfast.KacProcess.from_dict(proc.to_dict()) == proc


def test_zero_size_inputs():
    assert ops.kac_noise(torch.empty(0, 3), 9.0, 3.0, seed=0).shape == (0, 3)
    assert ops.kac_velocity(torch.empty(0), torch.empty(0), 9.0, 3.0).shape == (0,)
    xt, u = ops.kac_noise_target(torch.empty(0, 4), torch.empty(0), 9.0, 3.0, seed=0)
    assert xt.shape == u.shape == (0, 4)
