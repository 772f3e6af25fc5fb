"""generate() per method, EDM's Euler option, DDIM's callback, training preview grids, exported
weights and the shipped pretrained models."""
import os
import shlex
import subprocess
import sys

import pytest
import torch

import kacfast
from kacfast.baselines import DDPMSchedule, EDMPrecond, ddim_sample, edm_nfe, edm_sample
from kacfast.checkpoints import export_weights, load_trained
from kacfast.facts import facts_of
from kacfast.generate import METHODS, generate, generation_nfe, solver_for, solvers_for
from kacfast.pretrained import PRETRAINED
from kacfast.models import build_model
from kacfast.training import EDMObjective, KacObjective, TrainConfig, train

CLI = [sys.executable, "-m", "kacfast"]


class Counting(torch.nn.Module):
    """A tiny conditional image network that counts its calls."""

    def __init__(self):
        super().__init__()
        self.net = build_model("unet-tiny", image_size=8, model_channels=8, num_classes=10)
        self.num_classes, self.sample_shape, self.calls = 10, (1, 8, 8), 0

    def forward(self, x, t, y=None):
        self.calls += 1
        return self.net(x, t, y)


@pytest.mark.parametrize("method,solver,steps,expected_nfe", [
    ("kac", "euler", 3, 3), ("kac", "heun", 3, 6), ("edm", "heun", 3, 5), ("edm", "euler", 3, 3),
    ("ddpm", "ddim", 3, 3), ("ddpm", "ddpm", 3, 3)])
def test_generate_calls_the_network_nfe_times(method, solver, steps, expected_nfe):
    torch.manual_seed(0)
    model = Counting().eval()
    labels = torch.arange(5)
    a = generate(model, method, steps, solver=solver, labels=labels, guidance=1.5, seed=3)
    assert model.calls == expected_nfe == generation_nfe(method, steps, solver)
    assert a.shape == (5, 1, 8, 8) and a.dtype == torch.float32 and a.abs().max() <= 1
    b = generate(model, method, steps, solver=solver, labels=labels, guidance=1.5, seed=3)
    assert torch.equal(a, b)  # seeded


def test_generate_passes_a_kac_time_grid_and_refuses_one_for_the_baselines():
    from kacfast.process import KacProcess
    torch.manual_seed(0)
    model = Counting().eval()
    with torch.no_grad():  # the UNet's zero-initialised output layer would make every grid agree
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    labels = torch.arange(4)
    grid = kacfast.quadratic_grid(3)
    process = KacProcess()
    a = generate(model, "kac", 3, labels=labels, guidance=1.25, seed=2, process=process, grid=grid)
    b = kacfast.sample(model, 3, labels=labels, guidance=1.25, seed=2, process=process, grid=grid)
    assert torch.equal(a, b)
    assert not torch.equal(a, generate(model, "kac", 3, labels=labels, guidance=1.25, seed=2, process=process))
    with pytest.raises(ValueError, match="dtype, compile and grid apply to Kac models"):
        generate(model, "edm", 3, labels=labels, grid=grid)
    with pytest.raises(ValueError, match="a grid of 2 steps holds 3 times, got 4"):
        generate(model, "kac", 2, labels=labels, process=process, grid=grid)


def test_solver_for_defaults_and_errors():
    assert {m: solver_for(m) for m in METHODS} == {
        "kac": "euler", "edm": "heun", "ddpm": "ddim", "distill": "euler"}
    assert solvers_for("kac") == solvers_for("distill") == ("euler", "ab2", "heun", "midpoint")
    assert solvers_for("ddpm") == ("ddim", "ddim-trailing", "ddim-clip", "ddim-trailing-clip", "ddpm")
    with pytest.raises(ValueError, match="does not apply to edm models"):
        solver_for("edm", "ab2")
    with pytest.raises(ValueError, match="method must be one of"):
        solver_for("flow")
    with pytest.raises(ValueError, match="give labels"):
        generate(Counting(), "kac", 1)


def test_edm_euler_is_heun_without_the_correction():
    torch.manual_seed(0)
    model = Counting().eval()
    z = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    seen = []
    euler = edm_sample(EDMPrecond(model), z, num_steps=3, solver="euler", callback=seen.append)
    assert model.calls == edm_nfe(3, "euler") == 3 and len(seen) == 3
    # the last Euler step (sigma_min -> 0) lands on the denoised estimate
    torch.testing.assert_close(euler, seen[-1]["denoised"].to(euler.dtype))
    model.calls = 0
    heun = edm_sample(EDMPrecond(model), z, num_steps=3, solver="heun")
    assert model.calls == edm_nfe(3) == 5
    assert (heun - euler).abs().max() > 1e-6
    with pytest.raises(ValueError, match="solver must be 'heun' or 'euler'"):
        edm_sample(EDMPrecond(model), z, solver="rk4")


def test_ddim_callback_sees_every_step():
    torch.manual_seed(0)
    model = Counting().eval()
    z = torch.randn(2, 1, 8, 8)
    seen = []
    ddim_sample(model, z, num_steps=4, callback=seen.append)
    assert [s["i"] for s in seen] == [0, 1, 2, 3]
    assert [s["t"] for s in seen] == DDPMSchedule().timesteps(4, "leading").tolist()
    assert all(s["eps"].shape == z.shape and s["eps"].dtype == torch.float64 for s in seen)


@pytest.mark.parametrize("solver, spacing, clip", [("ddim", "leading", False), ("ddim-trailing", "trailing", False),
                                                   ("ddim-clip", "leading", True),
                                                   ("ddim-trailing-clip", "trailing", True)])
def test_generate_ddim_timestep_spacing(solver, spacing, clip):
    # "trailing" starts at t = 999 (the prior's own noise level); "leading" at 750 for 4 steps
    assert DDPMSchedule().timesteps(4, spacing).tolist() == {"leading": [750, 500, 250, 0],
                                                             "trailing": [999, 749, 499, 249]}[spacing]
    model, labels = Counting().eval(), torch.tensor([0, 3])
    z = torch.randn((2,) + tuple(model.sample_shape), generator=torch.Generator().manual_seed(5))
    expected = ddim_sample(model, z, labels, num_steps=4, guidance=1.5, timestep_spacing=spacing, clip_sample=clip)
    out = generate(model, "ddpm", 4, solver=solver, labels=labels, guidance=1.5, seed=5)
    torch.testing.assert_close(out, expected.float().clamp(-1, 1))
    assert generation_nfe("ddpm", 4, solver) == 4


@pytest.mark.parametrize("objective", [KacObjective(), EDMObjective()], ids=["kac", "edm"])
def test_training_writes_preview_grids_without_touching_the_run(tmp_path, objective):
    torch.set_num_threads(1)
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    y = torch.arange(64) % 10

    def run(out, sample_every):
        torch.manual_seed(0)
        model = build_model("unet-tiny", image_size=8, model_channels=8, num_classes=10)
        return train(model, objective, (x, y), TrainConfig(steps=4, batch_size=16, sample_every=sample_every),
                     str(out), progress=False)
    with_grids = run(tmp_path / "a", 2)
    assert sorted(os.listdir(tmp_path / "a" / "samples")) == ["step-0000002.png", "step-0000004.png"]
    assert open(tmp_path / "a" / "samples" / "step-0000004.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    without = run(tmp_path / "b", 0)
    assert not (tmp_path / "b" / "samples").exists()
    for p, q in zip(with_grids.parameters(), without.parameters()):
        assert torch.equal(p, q)  # previews draw no training randomness


def test_export_keeps_the_ema_model_and_drops_optimizer_state(tmp_path):
    torch.set_num_threads(1)
    x, y = torch.rand(32, 1, 8, 8) * 2 - 1, torch.arange(32) % 10
    torch.manual_seed(0)
    model = build_model("unet-tiny", image_size=8, model_channels=8, num_classes=10)
    train(model, KacObjective(), (x, y), TrainConfig(steps=3, batch_size=8, sample_every=0),
          str(tmp_path / "run"), progress=False)
    meta = export_weights(str(tmp_path / "run"), str(tmp_path / "w.safetensors"))
    assert "optimizer" not in meta and "data_order" not in meta and meta["exported"]["from_step"] == 3
    run_model, _ = load_trained(str(tmp_path / "run"))
    exported, emeta = load_trained(str(tmp_path / "w.safetensors"))
    for p, q in zip(run_model.parameters(), exported.parameters()):
        assert torch.equal(p, q)
    assert facts_of(exported).process == facts_of(run_model).process and emeta["step"] == 3
    assert os.path.getsize(tmp_path / "w.safetensors") < os.path.getsize(tmp_path / "run" / "checkpoint.safetensors")


def test_load_pretrained_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown pretrained model"):
        kacfast.load_pretrained("imagenet-1step")


SHIPPED = kacfast.list_pretrained()


@pytest.mark.skipif(len(SHIPPED) < 4, reason="the shipped model files are not in this checkout")
def test_shipped_files_stay_small():
    assert SHIPPED == ["mnist16-kac-teacher", "mnist16-distillkac-1step", "mnist28-kac-teacher",
                       "mnist28-distillkac-1step"]
    assert sum(os.path.getsize(kacfast.pretrained.pretrained_path(n)) for n in SHIPPED) <= 12 * 2**20


@pytest.mark.skipif(len(SHIPPED) < 4, reason="the shipped model files are not in this checkout")
@pytest.mark.parametrize("size", [16, 28])
def test_shipped_models_sample_as_is(size):
    student = kacfast.load_pretrained(f"mnist{size}-distillkac-1step")
    assert facts_of(student).grid == (1.0, 0.0) and student.sample_shape == (1, size, size)
    images = kacfast.sample(student, steps=1, labels=list(range(10)), seed=0)
    assert images.shape == (10, 1, size, size) and images.abs().max() <= 1
    teacher = kacfast.load_pretrained(f"mnist{size}-kac-teacher")
    assert facts_of(teacher).process == facts_of(student).process and teacher.num_classes == 10
    assert teacher.sample_shape == (1, size, size)
    absorbed = PRETRAINED[f"mnist{size}-distillkac-1step"]["absorbed_guidance"]
    assert facts_of(student).absorbed_guidance == absorbed > 1 and facts_of(teacher).absorbed_guidance is None
    assert facts_of(teacher).pretrained["guidance"] == absorbed
    with pytest.warns(UserWarning, match=f"absorbed guidance {absorbed:g} during distillation"):
        kacfast.sample(student, 1, labels=[3], guidance=1.5, seed=0)


def _options(command: str) -> dict[str, list[str]]:
    """--name -> every word given after it (up to the next --name) in a shell command; a name given
    twice (--objective-option) gets both values."""
    options, name = {}, None
    for word in shlex.split(command):
        if word.startswith("--"):
            name = word
            options.setdefault(name, [])
        elif name is not None:
            options[name].append(word)
    return options


@pytest.mark.skipif(len(SHIPPED) < 4, reason="the shipped model files are not in this checkout")
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_files_match_their_recorded_commands(name):
    """The command that trained the run a PRETRAINED entry exports sets what the shipped file's
    metadata says it was trained with (a re-shipped model whose entry was not updated fails; two
    runs of one command from different teachers are not told apart)."""
    from kacfast.checkpoints import read_checkpoint
    meta, _ = read_checkpoint(kacfast.pretrained.pretrained_path(name))
    *training, export = PRETRAINED[name]["commands"]
    run = _options(export)["--ckpt"][0]
    trained = [c for c in training if run == _options(c)["--out"][0] or run.startswith(_options(c)["--out"][0] + "/")]
    assert len(trained) == 1, f"{name}: no single recorded command writes {run}"
    options = _options(trained[0])
    config, objective = meta["config"], meta["objective"]
    steps = int((options.get("--steps-per-stage") or options["--steps"])[-1])
    assert config["steps"] == meta["step"] == steps
    assert config["lr"] == float(options["--lr"][0]) and config["batch_size"] == int(options["--batch-size"][0])
    for flag, key, kind in (("--warmup", "warmup", int), ("--lr-schedule", "lr_schedule", str)):
        if flag in options:
            assert config[key] == kind(options[flag][0])
    seed = int(options.get("--seed", ["0"])[0])
    if "--schedule" in options:  # a distillation: stage k of the schedule trains with seed + k
        schedule = [int(steps) for steps in options["--schedule"]]
        assert (objective["teacher_steps"], objective["student_steps"]) == tuple(schedule[-2:])
        assert config["seed"] == seed + meta["run"]["stage"] and meta["run"]["stage"] == len(schedule) - 1
    else:
        assert config["seed"] == seed and meta["run"]["data"] == options["--data"][0]
    if "--objective" in options:
        assert objective["loss"] == options["--objective"][0]
    if "--time-distribution" in options:
        assert objective["time_distribution"] == options["--time-distribution"][0]
    for setting in options.get("--objective-option", []):
        key, value = setting.split("=", 1)
        assert objective[key] == float(value)
    if objective.get("loss") == "endpoint-l2-adversarial" and "--objective-option" not in options:
        assert objective["adversarial_weight"] == 0.1  # the objective's default


@pytest.mark.skipif(len(SHIPPED) < 2, reason="the shipped model files are not in this checkout")
def test_inference_loads_no_training_code():
    code = ("import sys, kacfast; m = kacfast.load_pretrained('mnist16-distillkac-1step'); "
            "kacfast.sample(m, 1, labels=[0, 1]); "
            "print(sorted(k for k in sys.modules if k.startswith('kacfast.training')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         timeout=600)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(len(SHIPPED) < 4, reason="the shipped model files are not in this checkout")
@pytest.mark.parametrize("size", [16, 28])
def test_demo_writes_a_grid_and_reports_speed(tmp_path, size):
    out = subprocess.run(CLI + ["demo", "--size", str(size), "--rows", "1", "--out", str(tmp_path / "demo.png"),
                                "--threads", "1"], check=True, capture_output=True, text=True, timeout=600)
    assert f"MNIST ({size}x{size})" in out.stdout and f"mnist{size}-kac-teacher" in out.stdout
    assert "images/s" in out.stdout and "NFE   1" in out.stdout and "NFE 100" in out.stdout
    png = open(tmp_path / "demo.png", "rb").read(24)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") >= 10 * size  # IHDR width: a row of 10 digits


def test_noise_demo_runs():
    out = subprocess.run(CLI + ["noise-demo", "--n", "20000"], check=True, capture_output=True, text=True,
                         timeout=600)
    assert "Exact Kac noise" in out.stdout and "steps: mean distance" in out.stdout
