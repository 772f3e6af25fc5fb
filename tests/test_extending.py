"""CONTRIBUTING.md's claims: a solver, a dataset, a distillation loss and a backend are each added
by one table entry, and the samplers, the CLI (help and choices included) and training take them."""
import json

import numpy as np
import pytest
import torch

import kacfast
from kacfast import cli, ops
from kacfast.checkpoints import CHECKPOINT_NAME, load_trained, read_checkpoint
from kacfast.data import DATASETS, Dataset, dataset_info, dataset_names
from kacfast.sampling import SOLVERS, Solver, nfe
from kacfast.training.distill_objectives import DISTILL_OBJECTIVES, DistillObjective


def ralston(velocity, x, t, t_next, history, *, guidance, clamp):
    """Ralston's second-order Runge-Kutta step as two fused guided steps (the CONTRIBUTING
    example): x' = x - h (v1 / 4 + 3 v2 / 4), v2 at x - (2h/3) v1."""
    h = t - t_next
    x_mid, v1 = ops.guided_step(x, velocity(x, t), guidance=guidance, h=2 * h / 3, return_v=True)
    x, _ = ops.guided_step(x, velocity(x_mid, t - 2 * h / 3), v1, guidance=guidance, h=h,
                           alpha=0.75, beta=0.25, clamp=clamp)
    return x, None


def line_dataset(name, split, seed, root, n=512):
    """Two classes on a line: y = 0 near -0.5, y = 1 near +0.5 (the CONTRIBUTING example)."""
    gen = torch.Generator().manual_seed(seed + (split == "test"))
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.stack([y.float() - 0.5, torch.zeros(n)], 1) + 0.05 * torch.randn(n, 2, generator=gen)
    return x.clamp(-1, 1), y


class EndpointL1(DistillObjective):
    """The endpoint loss with an L1 distance (the CONTRIBUTING example)."""
    name = "endpoint-l1"

    def distance(self, pred, target):
        return (pred - target).abs().mean()


@pytest.fixture
def extended(monkeypatch):
    monkeypatch.setitem(SOLVERS, "ralston", Solver(nfe=2, step=ralston))
    monkeypatch.setitem(DATASETS, "line", Dataset(line_dataset, shape=(2,), num_classes=2,
                                                  kind="points", splits=("train", "test"),
                                                  options=("n",), classifier_steps=None))
    monkeypatch.setitem(DISTILL_OBJECTIVES, EndpointL1.name, EndpointL1)


def test_a_solver_is_one_table_entry(extended):
    assert nfe("ralston", 3) == 6
    x0 = torch.linspace(-1, 1, 8).reshape(4, 2)

    def velocity(x, t):  # smooth, so the hand-written Ralston steps below are exact references
        return x * (1 + t) + 0.1

    out = kacfast.integrate(velocity, x0.clone(), kacfast.uniform_grid(3), solver="ralston",
                            clamp=False)
    ref, grid = x0.clone(), kacfast.uniform_grid(3)
    for t, t_next in zip(grid, grid[1:]):
        h = t - t_next
        v1 = velocity(ref, t)
        v2 = velocity(ref - 2 * h / 3 * v1, t - 2 * h / 3)
        ref = ref - h * (v1 / 4 + 3 * v2 / 4)
    torch.testing.assert_close(out, ref)


def test_a_dataset_solver_and_loss_work_from_the_cli(extended, tmp_path, capsys):
    assert "line" in dataset_names() and dataset_info("line")["num_classes"] == 2
    run = tmp_path / "run"
    common = ["--threads", "1", "--quiet"]
    assert cli.main(["train", "--data", "line", "--model", "mlp", "--steps", "4", "--batch-size",
                     "32", "--out", str(run)] + common) == 0
    model, meta = load_trained(str(run))
    assert meta["run"]["data"] == "line" and model.num_classes == 2

    out = tmp_path / "s.npy"
    assert cli.main(["sample", "--ckpt", str(run), "--solver", "ralston", "--steps", "3", "--n",
                     "6", "--guidance", "1.5", "--out", str(out), "--quiet"]) == 0
    ref = kacfast.sample(model, 3, labels=torch.arange(6) % 2, guidance=1.5, solver="ralston",
                         seed=0)
    np.testing.assert_allclose(np.load(out), ref.numpy(), rtol=0, atol=1e-6)

    assert cli.main(["distill", "--teacher", str(run), "--out", str(tmp_path / "distill"),
                     "--schedule", "4", "2", "--steps-per-stage", "2", "--batch-size", "32",
                     "--objective", "endpoint-l1"] + common) == 0
    stage = read_checkpoint(str(tmp_path / "distill" / "stage-1-2" / CHECKPOINT_NAME))[0]
    assert stage["objective"]["loss"] == "endpoint-l1"
    json.dumps(stage)  # the recorded objective stays JSON


def test_the_cli_help_lists_what_the_tables_hold(extended, capsys):
    for argv in (["train", "--help"], ["sample", "--help"], ["distill", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert "line" in text and "ralston" in text and "endpoint-l1" in text


def test_a_backend_is_one_table_entry(monkeypatch):
    """A backend that runs the reference ops under another name, counting its calls: pinned,
    listed, dispatched to, and refused where its why_not says so."""
    calls = []

    def counted(name):
        op = ops.BACKENDS["torch"].op(name)
        return lambda *args: calls.append(name) or op(*args)

    monkeypatch.setitem(ops.BACKENDS, "counting", ops.Backend(
        op=counted, why_not=lambda device: None if device.type == "cpu" else "CPU only"))
    assert "counting" in ops.available_backends("cpu")
    assert "counting" not in ops.available_backends("meta")
    x = torch.linspace(-0.9, 0.9, 64).reshape(8, 8)
    with ops.use_backend("counting"):
        assert ops.resolve_backend(x.device) == "counting"
        ours = ops.kac_velocity(x, 0.5, 9.0, 3.0)
        with pytest.raises(RuntimeError, match="cannot run on meta tensors: CPU only"):
            ops.resolve_backend(torch.device("meta"))
    assert calls == ["kac_velocity"]
    with ops.use_backend("torch"):
        ref = ops.kac_velocity(x, 0.5, 9.0, 3.0)
    assert torch.equal(ours, ref)
