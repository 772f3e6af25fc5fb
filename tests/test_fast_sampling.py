"""Fast sampling paths: chunked requests, network autocast, compiled samplers, streamed sample files
and the sampling CLI. A torch.compile costs tens of seconds on a CPU, so the compiled samplers are
built once per module (fixtures) and reused through kacfast's cache."""
import os
import platform
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import kacfast
import kacfast.images
from kacfast import _device, compiled
from kacfast.ops._ext import available as _ext_available
from kacfast.models import build_model
from kacfast.sample_files import SampleWriter

from test_sampling import LabelShiftModel

CLI = [sys.executable, "-m", "kacfast"]


def _random_output_layer(net):
    for p in net.parameters():  # the zero-initialized output layer would make every sample equal
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return _random_output_layer(build_model("unet-tiny", image_size=8))


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return _random_output_layer(build_model("mlp", num_classes=3))


LABELS = torch.arange(10) % 10


# ----------------------------------------------------------------------------------------------
# chunking, labels, dtype
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_batch", [1, 3, 7, 10, 64])
def test_chunked_request_equals_one_batch(max_batch):
    model = LabelShiftModel()
    labels = torch.arange(10) % 3
    whole = kacfast.sample(model, 4, labels=labels, seed=5, guidance=1.5, clamp=False)
    chunked = kacfast.sample(model, 4, labels=labels, seed=5, guidance=1.5, clamp=False,
                             max_batch=max_batch)
    assert torch.equal(whole, chunked)


def test_chunked_unet_request_matches_one_batch(unet):
    whole = kacfast.sample(unet, 2, labels=LABELS, seed=1, max_batch=10)
    chunked = kacfast.sample(unet, 2, labels=LABELS, seed=1, max_batch=4)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_default_chunk_size_per_device():
    assert kacfast.sampling.default_max_batch(torch.device("cpu"), 256) == 128
    assert kacfast.sampling.default_max_batch(torch.device("cpu"), 3 * 32 * 32) == 10
    assert kacfast.sampling.default_max_batch(torch.device("cpu"), 10**9) == 1
    assert kacfast.sampling.default_max_batch(torch.device("cuda"), 256) == 65536


def test_default_chunk_counts_the_guided_pair(monkeypatch):
    seen = []
    monkeypatch.setattr(kacfast.sampling, "run_plan",
                        lambda model, plan, x, labels, **kw: seen.append(len(x)) or x)
    labels = torch.arange(300) % 3
    kacfast.sample(LabelShiftModel(), 1, labels=labels, guidance=1.5, shape=(256,))
    assert seen == [64] * 4 + [44]  # 32,768 elements per network call on the CPU: 2 x 64 x 256
    seen.clear()
    kacfast.sample(LabelShiftModel(), 1, labels=labels, shape=(256,))
    assert seen == [128, 128, 44]


def test_progress_over_chunks(capsys):
    kacfast.sample(LabelShiftModel(), 2, labels=torch.arange(9) % 3, seed=0, max_batch=4,
                   progress=True)
    assert "img" in capsys.readouterr().err


@pytest.mark.parametrize("labels,match", [([1.5], "integer class indices"), ([], "empty"),
                                          (torch.tensor([True]), "integer class indices"),
                                          ([0, 3], r"\[0, 3\)")])
def test_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        kacfast.sample(LabelShiftModel(), 1, labels=labels)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_max_batch(bad):
    with pytest.raises(ValueError, match="max_batch"):
        kacfast.sample(LabelShiftModel(), 1, labels=[0], max_batch=bad)


@pytest.mark.parametrize("name,expected", [("bf16", torch.bfloat16), ("BFloat16", torch.bfloat16),
                                           ("fp16", torch.float16), ("fp32", None),
                                           (torch.float32, None), (None, None),
                                           (torch.float16, torch.float16)])
def test_network_dtype_names(name, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _device.network_dtype(name, torch.device("cpu")) == expected


@pytest.mark.parametrize("bad", ["int8", "fp8", torch.int32, 3])
def test_unknown_dtype_is_one_sentence(bad):
    with pytest.raises(ValueError, match="dtype must be"):
        kacfast.sample(LabelShiftModel(), 1, labels=[0], dtype=bad)


def test_bf16_warns_where_the_cpu_would_emulate_it(monkeypatch):
    monkeypatch.setattr(_device, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        _device.network_dtype("bf16", torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _device.network_dtype("bf16", torch.device("cuda"))  # a GPU has it: no warning


# In a fresh process: 48 MiB in 6 MiB blocks, allocated and freed three times; what each free
# hands back to the OS (by default at least the first round's, which then faults in again).
_REALLOCATE = """
import os, sys, torch, kacfast
applied = kacfast.tune_cpu_allocator() if sys.argv[1] == "tuned" else None
def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
for _ in range(3):
    blocks = [torch.ones(1536, 1024) for _ in range(8)]
    resident = resident_mib()
    del blocks
    print(applied, resident - resident_mib())
"""


def _run_reallocate(mode: str, **env) -> tuple[list[str], list[float]]:
    """(what tune_cpu_allocator returned, MiB each free handed back) per round, in a fresh process
    free of the caller's malloc settings."""
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", *_device._MALLOC_ENV)}
    lines = subprocess.run([sys.executable, "-c", _REALLOCATE, mode], capture_output=True, text=True,
                           check=True, env={**clean, **env}).stdout.splitlines()
    return [line.split()[0] for line in lines], [float(line.split()[1]) for line in lines]


_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
_JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt")
def test_tuned_allocator_keeps_freed_memory():
    _, default = _run_reallocate("default")
    applied, tuned = _run_reallocate("tuned")
    assert applied == ["True"] * 3
    assert default[0] > 40
    assert max(tuned) < 1


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt")
def test_tuned_allocator_leaves_a_users_malloc_settings_alone():
    applied, _ = _run_reallocate("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert applied == ["False"] * 3


@pytest.mark.skipif(not os.path.exists(_JEMALLOC), reason="needs libjemalloc2 (apt)")
def test_tuned_allocator_is_a_no_op_under_another_malloc():
    applied, _ = _run_reallocate("tuned", LD_PRELOAD=_JEMALLOC)
    assert applied == ["False"] * 3


def test_bf16_network_keeps_state_and_steps_float32(unet):
    seen = []

    class Spy(torch.nn.Module):
        num_classes, sample_shape = unet.num_classes, unet.sample_shape

        def forward(self, x, t, y=None):
            out = unet(x, t, y)
            seen.append((x.dtype, torch.get_autocast_dtype("cpu"), torch.is_autocast_enabled("cpu")))
            return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        low = kacfast.sample(Spy(), 2, labels=LABELS, seed=3, dtype="bf16", guidance=1.5)
    full = kacfast.sample(unet, 2, labels=LABELS, seed=3, guidance=1.5)
    assert seen == [(torch.float32, torch.bfloat16, True)] * 2  # x float32, the network autocast
    assert low.dtype == torch.float32
    assert 0 < (low - full).abs().max() < 0.1


# ----------------------------------------------------------------------------------------------
# compiled samplers
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled_unet_samples(unet):
    """(eager, compiled) samples of the UNet: 2 AB-2 steps, guidance 1.5, 10 labels."""
    args = dict(labels=LABELS, seed=11, guidance=1.5, solver="ab2")
    eager = kacfast.sample(unet, 2, **args)
    return eager, kacfast.sample(unet, 2, compile=True, **args)


def test_compiled_unet_sampler_matches_eager(compiled_unet_samples, unet):
    eager, fast = compiled_unet_samples
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=0)
    sampler, = _cached(unet)
    assert sampler.fused_group_norm == _ext_available()  # the default: kacfast's GroupNorm
    with torch.profiler.profile() as prof:
        kacfast.sample(unet, 2, labels=LABELS, seed=11, guidance=1.5, solver="ab2", compile=True)
    fused = sum(e.count for e in prof.key_averages() if e.key == "kacfast::group_norm")
    # every GroupNorm of unet-tiny (21: resblocks, attention, output) in each of the 2 network calls
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())
    assert norms == 21 and fused == (2 * norms if sampler.fused_group_norm else 0)


def test_compiled_bf16_unet_sampler_matches_eager():
    """The 16x16 UNet compiled under bf16 autocast (unet-tiny at 8x8 does not show it): torch
    2.13's 512-bit inductor kernels gave NaN here with frozen weights on an AVX-512 CPU with AMX;
    unfrozen, and with the build's check against eager, it agrees to rounding."""
    torch.manual_seed(0)
    net = _random_output_layer(build_model("unet-tiny", image_size=16))
    args = dict(labels=LABELS, seed=11, guidance=1.5, dtype="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated bf16 on a CPU without it
        eager = kacfast.sample(net, 2, **args)
        fast = kacfast.sample(net, 2, compile=True, **args)
    assert fast.isfinite().all()
    torch.testing.assert_close(fast, eager, atol=0.1, rtol=0)


def _cached(model):
    return [s for s in compiled._CACHE.values() if s.model is model]


def test_compiled_sampler_is_reused(unet, compiled_unet_samples):
    before = _cached(unet)
    again = kacfast.sample(unet, 2, labels=LABELS, seed=11, guidance=1.5, solver="ab2", compile=True)
    assert len(before) == 1 and _cached(unet) == before
    assert torch.equal(again, compiled_unet_samples[1])


def test_sampler_cache_is_bounded(mlp):
    for steps in range(1, compiled.CACHE_SIZE + 3):
        kacfast.sample(mlp, steps, labels=[0, 1], seed=0, compile=True)
    assert len(compiled._CACHE) == compiled.CACHE_SIZE


class DropoutNet(torch.nn.Module):
    """v = dropout(x) + label: in training mode every call differs."""

    num_classes, sample_shape = 3, (2,)

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x, t, y=None):
        return self.drop(x) + y[:, None].float()


def test_compiled_sampling_runs_the_model_in_eval_mode():
    net = DropoutNet().train()
    labels = torch.tensor([0, 1, 2])
    eager = kacfast.sample(net, 3, labels=labels, seed=1)
    assert net.training  # restored
    assert torch.equal(kacfast.sample(net, 3, labels=labels, seed=1), eager)  # no dropout
    torch.testing.assert_close(kacfast.sample(net, 3, labels=labels, seed=1, compile=True), eager,
                               atol=1e-6, rtol=0)
    sampler = kacfast.compile_sampler(net, 3, batch_size=3)
    torch.testing.assert_close(sampler(labels=labels, seed=1), eager, atol=1e-6, rtol=0)
    assert net.training


def test_new_sampler_after_an_update_compiles_the_new_weights(mlp):
    net = _random_output_layer(build_model("mlp", num_classes=3))
    labels = torch.tensor([0, 1, 2, 0])
    old = kacfast.compile_sampler(net, 2, batch_size=4)
    before = old(labels=labels, seed=5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    new = kacfast.compile_sampler(net, 2, batch_size=4)
    after = new(labels=labels, seed=5)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, kacfast.sample(net, 2, labels=labels, seed=5), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="build a new sampler"):
        old(labels=labels, seed=5)


def test_compile_sampler_same_seed_same_samples_as_sample(mlp):
    labels = torch.tensor([0, 1, 2, 0, 1])
    sampler = kacfast.compile_sampler(mlp, 3, batch_size=5, guidance=2.0)
    assert sampler.compile_seconds > 0 and not sampler.cuda_graph
    eager = kacfast.sample(mlp, 3, labels=labels, seed=7, guidance=2.0)
    torch.testing.assert_close(sampler(labels=labels, seed=7), eager, atol=1e-5, rtol=0)
    assert not torch.equal(sampler(labels=labels, seed=8), sampler(labels=labels, seed=7))
    with pytest.raises(ValueError, match="expected 5 labels"):
        sampler(labels=[0, 1])
    with pytest.raises(ValueError, match="needs labels"):
        sampler()
    with pytest.raises(ValueError, match="seed"):
        sampler(labels=labels, seed=-1)


def test_compiled_flow_map_sampler_matches_eager():
    """A flow map's compiled sampler passes each step's interval, as the eager one does."""
    from kacfast.models import as_flow_map
    flow_map = as_flow_map(build_model("mlp", num_classes=3))
    with torch.no_grad():
        for p in flow_map.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0])
    sampler = kacfast.compile_sampler(flow_map, 3, batch_size=4)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager = kacfast.sample(flow_map, 3, labels=labels, seed=3)
    torch.testing.assert_close(sampler(labels=labels, seed=3), eager, atol=1e-5, rtol=0)
    # the build compiled the graph its steps use (with an interval): sampling compiles nothing
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    with pytest.raises(ValueError, match="solver must be 'euler'"):
        kacfast.compile_sampler(flow_map, 3, batch_size=4, solver="heun")


def test_padded_last_chunk_and_updated_weights(mlp):
    """An explicit max_batch is the compiled batch: a short request is padded, not recompiled;
    weights updated in place (an optimizer step) are frozen into a new graph, never sampled stale."""
    net = build_model("mlp", num_classes=3).eval().requires_grad_(False)
    net.load_state_dict(mlp.state_dict())
    labels = torch.tensor([2, 1, 0, 2, 1, 0, 2])
    args = dict(labels=labels, seed=3, max_batch=4)
    fast = kacfast.sample(net, 2, compile=True, **args)
    torch.testing.assert_close(fast, kacfast.sample(net, 2, **args), atol=1e-5, rtol=0)
    assert len(_cached(net)) == 1  # chunks of 4 and 3 share one compiled batch of 4
    sampler = _cached(net)[0]
    with pytest.raises(ValueError, match="1 to 4 samples"):
        sampler.integrate(torch.zeros(5, 2), None)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    with pytest.raises(RuntimeError, match="build a new sampler"):  # frozen into the graph
        sampler.integrate(torch.zeros(4, 2), None)
    again = kacfast.sample(net, 2, compile=True, **args)
    assert not torch.allclose(again, fast)
    torch.testing.assert_close(again, kacfast.sample(net, 2, **args), atol=1e-5, rtol=0)


def test_compiled_sampler_refuses_a_miscompiled_network(mlp, monkeypatch):
    """A compiled network that disagrees with the eager one fails the build, never returns
    wrong samples (torch 2.13's 512-bit CPU kernels gave NaN for half a bf16 UNet batch)."""
    def miscompile(model, **kwargs):
        return lambda *args, **kw: model(*args, **kw) * float("nan")

    monkeypatch.setattr(torch, "compile", miscompile)
    with pytest.raises(RuntimeError, match="compiled network disagrees with the eager one"):
        kacfast.compile_sampler(mlp, 2, batch_size=3, guidance=1.5)


def test_reduced_precision_avoids_wide_cpu_kernels(monkeypatch, mlp):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def simdlen_inside(device, dtype):
        with _device.narrow_cpu_kernels(device, dtype):
            return torch._inductor.config.cpp.simdlen

    monkeypatch.setattr(_device, "_inductor_cpu_simdlen", lambda: 512)
    assert simdlen_inside(cpu, torch.bfloat16) == simdlen_inside(cpu, torch.float16) == 256
    assert torch._inductor.config.cpp.simdlen is None  # restored
    assert simdlen_inside(cpu, None) is None and simdlen_inside(cuda, torch.bfloat16) is None
    with torch._inductor.config.patch({"cpp.simdlen": 512}):  # a user's own setting stays
        assert simdlen_inside(cpu, torch.bfloat16) == 512
    plan = dict(batch_size=2, dtype="bf16", cuda_graph=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated bf16 on a CPU without it
        assert not kacfast.compile_sampler(mlp, 1, **plan).frozen  # the sampler: no freezing
        assert kacfast.compile_sampler(mlp, 1, batch_size=2).frozen  # float32 freezes
        monkeypatch.setattr(_device, "_inductor_cpu_simdlen", lambda: 256)  # AVX2: all safe
        assert simdlen_inside(cpu, torch.bfloat16) is None
        assert kacfast.compile_sampler(mlp, 1, **plan).frozen


def test_compile_bad_arguments(mlp, monkeypatch):
    with pytest.raises(ValueError, match="compile must be"):
        kacfast.sample(mlp, 1, labels=[0], compile="fastest")
    with pytest.raises(ValueError, match="callback"):
        kacfast.sample(mlp, 1, labels=[0], compile=True, callback=lambda d: None)
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        kacfast.compile_sampler(mlp, 1, batch_size=2, cuda_graph=True)
    with pytest.raises(ValueError, match="mode must be"):
        kacfast.compile_sampler(mlp, 1, batch_size=2, mode=False)
    with pytest.raises(ValueError, match="unconditional"):
        kacfast.sample(build_model("mlp"), 1, labels=[0, 1])
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(RuntimeError, match="torch.compile cannot run"):
        kacfast.sample(mlp, 1, labels=[0], compile=True)


def test_sampler_integrate_checks_its_labels(mlp):
    """Sampler.integrate (prior draws given) checks labels as __call__ does and takes lists."""
    sampler = kacfast.compile_sampler(mlp, 2, batch_size=4, guidance=2.0)
    x = kacfast.KacProcess().prior((3, 2), seed=1)
    eager = kacfast.sample(mlp, 2, labels=[0, 1, 2], guidance=2.0, seed=1)
    torch.testing.assert_close(sampler.integrate(x, [0, 1, 2]), eager, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="expected 3 labels"):
        sampler.integrate(x, [0, 1])
    with pytest.raises(ValueError, match="needs labels"):
        sampler.integrate(x)


def test_a_plain_function_with_labels_compiles_padded(monkeypatch):
    """A velocity function (no num_classes) with labels: the padded rows of a short chunk take a
    given label, and the result is the eager one. Its sampler is built without a CUDA graph
    (whose static label buffer needs a null label) and is not the one an unlabeled request gets."""
    def velocity(x, t, y=None):
        return -x if y is None else -x + y[:, None].float() / 4
    built = []
    sampler_class = compiled.Sampler
    monkeypatch.setattr(compiled, "Sampler",
                        lambda *args, **kwargs: built.append(kwargs) or sampler_class(*args, **kwargs))
    args = dict(shape=(2,), labels=[1, 2, 3], seed=2)
    eager = kacfast.sample(velocity, 2, **args)
    torch.testing.assert_close(kacfast.sample(velocity, 2, compile=True, max_batch=2, **args), eager,
                               atol=1e-6, rtol=0)
    kacfast.sample(velocity, 2, shape=(2,), batch_size=3, seed=2, compile=True, max_batch=2)
    assert built == [{"cuda_graph": False}, {"cuda_graph": None}] and len(_cached(velocity)) == 2
    with pytest.raises(ValueError, match="has no num_classes"):
        _cached(velocity)[0](labels=[1, 2])


def test_bad_batch_size_and_warnings_at_the_callers_line(mlp):
    with pytest.raises(ValueError, match="batch_size must be an int"):
        kacfast.sample(mlp, 1, batch_size=True)
    student = kacfast.load_pretrained("mnist16-distillkac-1step")
    with pytest.warns(UserWarning, match="absorbed guidance") as record:
        kacfast.sample(student, 1, labels=[1], guidance=1.5, seed=0)  # torch.no_grad adds a frame
    assert [w.filename for w in record] == [__file__]


# ----------------------------------------------------------------------------------------------
# sample files
# ----------------------------------------------------------------------------------------------
def _images(n, seed=0):
    return torch.rand((n, 1, 4, 5), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_npz_streams_uint8_images_and_labels(tmp_path):
    path = tmp_path / "s.npz"
    images, labels = _images(7), torch.arange(7) % 3
    with SampleWriter(str(path), 7, (1, 4, 5)) as writer:
        for part in (slice(0, 3), slice(3, 6), slice(6, 7)):
            writer.write(images[part], labels[part])
    data = np.load(path)
    assert data["arr_0"].shape == (7, 4, 5, 1) and data["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(data["arr_0"], kacfast.images.to_uint8(images))
    np.testing.assert_array_equal(data["labels"], labels.numpy())
    assert os.listdir(tmp_path) == ["s.npz"]


def test_npy_and_points(tmp_path):
    points = torch.randn(5, 2)
    with SampleWriter(str(tmp_path / "p.npy"), 5, (2,)) as writer:
        writer.write(points[:2])
        writer.write(points[2:])
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), points.numpy())
    with SampleWriter(str(tmp_path / "p.npz"), 5, (2,)) as writer:
        writer.write(points)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npz")["arr_0"], points.numpy())


@pytest.mark.parametrize("ext", [".npz", ".npy", ".png"])
def test_interrupted_write_leaves_no_file(tmp_path, ext):
    path = tmp_path / f"s{ext}"
    with pytest.raises(KeyboardInterrupt):
        with SampleWriter(str(path), 6, (1, 4, 5)) as writer:
            writer.write(_images(3))
            raise KeyboardInterrupt
    with pytest.raises(ValueError, match="3 of 6 samples"):
        with SampleWriter(str(path), 6, (1, 4, 5)) as writer:
            writer.write(_images(3))
    assert os.listdir(tmp_path) == []


def test_sample_writer_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="must end in"):
        SampleWriter(str(tmp_path / "s.jpg"), 3, (1, 4, 5))
    with pytest.raises(ValueError, match="PNG output needs image samples"):
        SampleWriter(str(tmp_path / "s.png"), 3, (2,))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SampleWriter(str(tmp_path / "no" / "s.npz"), 3, (1, 4, 5))
    with pytest.raises(ValueError, match=">= 1"):
        SampleWriter(str(tmp_path / "s.npz"), 0, (1, 4, 5))
    with pytest.raises(ValueError, match="nrow"):  # checked before any sampling
        SampleWriter(str(tmp_path / "s.png"), 3, (1, 4, 5), nrow=0)
    with pytest.raises(ValueError, match="expected up to 3"):
        with SampleWriter(str(tmp_path / "s.npz"), 3, (1, 4, 5)) as writer:
            writer.write(_images(4))


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=600)


def test_cli_streams_a_shipped_model_to_npz(tmp_path):
    out = tmp_path / "student.npz"
    run = _cli("sample", "--ckpt", "mnist16-distillkac-1step", "--steps", "1", "--n", "23",
               "--batch-size", "10", "--out", str(out), "--device", "cpu")
    assert run.returncode == 0, run.stderr
    data = np.load(out)
    assert data["arr_0"].shape == (23, 16, 16, 1)
    np.testing.assert_array_equal(data["labels"], np.arange(23) % 10)
    # batch k draws from seed + k * 1_000_003: the first batch is kacfast.sample at seed 0
    model = kacfast.load_pretrained("mnist16-distillkac-1step")
    first = kacfast.sample(model, 1, labels=torch.arange(10), seed=0)
    np.testing.assert_array_equal(data["arr_0"][:10], kacfast.images.to_uint8(first))


def test_cli_compiled_stream_pads_the_last_batch(tmp_path):
    out = tmp_path / "student.npy"
    run = _cli("sample", "--ckpt", "mnist16-distillkac-1step", "--n", "13", "--batch-size", "8",
               "--compile", "--out", str(out), "--device", "cpu", "--quiet")
    assert run.returncode == 0, run.stderr
    samples = np.load(out)
    assert samples.shape == (13, 1, 16, 16)
    # batch 1 (5 samples, padded to the compiled 8) is kacfast.sample's eager result at its seed
    model = kacfast.load_pretrained("mnist16-distillkac-1step")
    second = kacfast.sample(model, 1, labels=torch.arange(8, 13) % 10, seed=1_000_003)
    np.testing.assert_allclose(samples[8:], second.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("args,message", [
    (["--ckpt", "/no/such/run"], "neither a run directory"),
    (["--ckpt", "mnist16-distillkac-1step", "--dtype", "int8"], "dtype must be"),
    (["--ckpt", "mnist16-distillkac-1step", "--compile", "fastest"], "compile must be"),
    (["--ckpt", "mnist16-distillkac-1step", "--nrow", "0"], "nrow"),
])
def test_cli_user_errors_are_one_line(tmp_path, args, message):
    out = tmp_path / "s.npz"
    run = _cli("sample", *args, "--n", "3", "--out", str(out), "--device", "cpu")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kacfast sample: error:") and message in lines[0]
    assert not out.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", [["eval", "--ckpt"], ["distill", "--out", "{tmp}/student", "--teacher"]])
def test_cli_checkpoint_without_its_dataset_is_one_line(tmp_path, command):
    from kacfast.checkpoints import read_checkpoint, write_checkpoint
    meta, tensors = read_checkpoint(kacfast.pretrained.pretrained_path("mnist16-kac-teacher"))
    meta.pop("run")
    write_checkpoint(str(tmp_path / "teacher.safetensors"), tensors, meta)
    run = _cli(*(word.format(tmp=tmp_path) for word in command), str(tmp_path / "teacher.safetensors"))
    assert run.returncode == 2 and not (tmp_path / "student").exists()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"kacfast {command[0]}: error:" in lines[0]
    assert "does not record the dataset it was trained on" in lines[0]


def test_cli_labels_for_an_unconditional_model_are_refused():
    from types import SimpleNamespace

    from kacfast import cli
    with pytest.raises(ValueError, match="unconditional"):
        cli._labels(SimpleNamespace(labels=[1]), build_model("mlp"), 3)


def test_cli_debug_shows_the_traceback(tmp_path):
    run = _cli("--debug", "sample", "--ckpt", "/no/such/run", "--out", str(tmp_path / "s.npz"))
    assert run.returncode != 0 and "Traceback" in run.stderr


# ----------------------------------------------------------------------------------------------
# the GPU speed script, on tiny shapes (keeps benchmarks/gpu_check.sh's code paths working)
# ----------------------------------------------------------------------------------------------
def test_gpu_speed_script_smoke():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import gpu_speed

    cpu = torch.device("cpu")
    rows = gpu_speed.sampler_rows("unet-tiny", 8, 2, cpu)
    names = [r["row"] for r in rows]
    assert names[:3] == ["network forward fp32", "network forward bf16",
                         "network forward bf16 compiled"]
    assert all(r["ms"] > 0 and r["batch"] == 2 for r in rows)
    assert all(0 < r["share_of_ceiling"] for r in rows if r["row"].startswith("1-step"))
    big = gpu_speed.fifty_thousand("unet-tiny", 8, 5, 2, cpu)
    assert big["finite"] and big["n"] == 5 and big["second call s"] > 0
    train = gpu_speed.training_rows("unet-tiny", 8, 2, 2, cpu,
                                    settings=(("fp32", False), ("bf16", False)))
    assert [r["row"] for r in train] == ["train fp32", "train bf16"] and train[0]["x_fp32_eager"] == 1
    assert "| 1-step bf16 compiled |" in "\n".join(gpu_speed.markdown_table("t", rows))


def test_cli_export_takes_a_shipped_name(tmp_path):
    out = tmp_path / "student.safetensors"
    umask = os.umask(0o027)  # the CLI inherits it; neither the usual 0o022 nor mkstemp's 0o600
    try:
        run = _cli("export", "--ckpt", "mnist16-distillkac-1step", "--out", str(out))
    finally:
        os.umask(umask)
    assert run.returncode == 0, run.stderr
    from kacfast.checkpoints import load_trained
    model, _ = load_trained(str(out))
    shipped = kacfast.load_pretrained("mnist16-distillkac-1step")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 shipped.state_dict().values()))
    assert os.stat(out).st_mode & 0o777 == 0o640  # a new file's mode under that umask
