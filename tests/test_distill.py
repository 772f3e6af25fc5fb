"""DistillKac: endpoint-only multi-stage distillation."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import kacfast
from kacfast.checkpoints import CHECKPOINT_NAME, load_trained, read_checkpoint
from kacfast.facts import attach_facts, facts_of
from kacfast.models import build_model
from kacfast.training import KacObjective, TrainConfig, restore, save_checkpoint, train
from kacfast.training.distill import DistillConfig, DistillObjective, distill, teacher_integrate
from kacfast.training.distill_objectives import DISTILL_OBJECTIVES


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (1024,), generator=gen)
    x = torch.randn(1024, 2, generator=gen) * 0.1 + (y.float()[:, None] * 2 - 1) * 0.5
    torch.manual_seed(0)
    model = build_model("mlp", width=64, depth=2, num_classes=None)
    out = tmp_path_factory.mktemp("teacher")
    ema = train(model, KacObjective(), (x, None), TrainConfig(steps=300, batch_size=256, lr=2e-3,
                warmup=20, ckpt_every=300), str(out), progress=False)
    attach_facts(ema, process=kacfast.KacProcess())
    return ema, (x, None), out


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def compiled_distills(teacher, tmp_path_factory):
    """Distillations (4 -> 2 -> 1, 4 steps per stage, checkpoints every 2): eager, compiled, and
    compiled killed right after stage 2's step-2 checkpoint, then resumed. Compiling the student's
    forward costs tens of seconds on a CPU, once for the module (the later runs reuse it)."""
    import kacfast.training.loop as loop

    model, data, _ = teacher
    root = tmp_path_factory.mktemp("compiled")
    config = dict(schedule=(4, 2, 1), steps_per_stage=4, batch_size=64, lr=1e-3, warmup=2,
                  ckpt_every=2)
    distill(model, kacfast.KacProcess(), data, DistillConfig(**config), str(root / "eager"),
            progress=False)
    compiled = DistillConfig(compile=True, **config)
    distill(model, kacfast.KacProcess(), data, compiled, str(root / "ref"), progress=False)
    saves = []

    def save_then_die(*args, **kwargs):
        save_checkpoint(*args, **kwargs)
        saves.append(kwargs["meta"]["step"])
        if len(saves) == 3:  # stage 1 at steps 2, 4; stage 2 at step 2
            raise _Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "save_checkpoint", save_then_die)
        with pytest.raises(_Killed):
            distill(model, kacfast.KacProcess(), data, compiled, str(root / "killed"), progress=False)
    distill(model, kacfast.KacProcess(), data, compiled, str(root / "killed"), resume=True,
            progress=False)
    return root


def test_compiled_distillation_resumes_bit_identically(compiled_distills):
    for stage in ("stage-1-2", "stage-2-1"):
        meta_ref, ref = read_checkpoint(str(compiled_distills / "ref" / stage / CHECKPOINT_NAME))
        meta_run, run = read_checkpoint(str(compiled_distills / "killed" / stage / CHECKPOINT_NAME))
        assert meta_ref["step"] == meta_run["step"] == 4
        assert meta_run["config"]["compile"] is True and meta_run["config"]["precision"] == "auto"
        assert set(ref) == set(run)
        for key in ref:
            assert torch.equal(ref[key], run[key]), (stage, key)


def test_compiled_distillation_matches_eager(compiled_distills):
    for stage in ("stage-1-2", "stage-2-1"):
        eager = read_checkpoint(str(compiled_distills / "eager" / stage / CHECKPOINT_NAME))[1]
        compiled = read_checkpoint(str(compiled_distills / "ref" / stage / CHECKPOINT_NAME))[1]
        assert set(eager) == set(compiled) and not any("_orig_mod" in key for key in compiled)
        eager_loss, compiled_loss = ([json.loads(line)["loss"] for line in open(log)]
                                     for log in (compiled_distills / run / stage / "log.jsonl"
                                                 for run in ("eager", "ref")))
        np.testing.assert_allclose(compiled_loss, eager_loss, rtol=0, atol=1e-4)


def test_pseudo_huber_distance_is_the_ict_formula(teacher):
    objective = DISTILL_OBJECTIVES["endpoint-pseudo-huber"](teacher[0], kacfast.KacProcess(), 4, 2)
    pred, target = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    c = 0.00054 * (3 * 4 * 4) ** 0.5
    expected = torch.stack([((p - q).square().sum() + c * c).sqrt() - c for p, q in zip(pred, target)])
    torch.testing.assert_close(objective.distance(pred, target), expected.mean())
    assert objective.describe()["loss"] == "endpoint-pseudo-huber"
    assert "loss" not in DistillObjective(teacher[0], kacfast.KacProcess(), 4, 2).describe()
    with pytest.raises(ValueError, match="objective must be one of"):
        DistillConfig(objective="l3")


def test_random_feature_distance_is_pixels_plus_frozen_normalised_features(teacher):
    objective = DISTILL_OBJECTIVES["endpoint-random-features"](teacher[0], kacfast.KacProcess(), 4, 2)
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(3, 1, 12, 12, generator=gen).requires_grad_(True)
    target = torch.randn(3, 1, 12, 12, generator=gen)
    assert objective.distance(target, target).item() == 0
    value = objective.distance(pred, target)
    # by hand: the same seeded network, LPIPS-style unit features at each ReLU
    net = objective._features(1, "cpu")
    assert not any(p.requires_grad for p in net.parameters())
    assert [m.out_channels for m in net if isinstance(m, torch.nn.Conv2d)] == [32, 64, 128]
    levels, a, b = [], pred.detach(), target
    for layer in net:
        a, b = layer(a), layer(b)
        if isinstance(layer, torch.nn.ReLU):
            levels.append((torch.nn.functional.normalize(a, dim=1, eps=1e-5)
                           - torch.nn.functional.normalize(b, dim=1, eps=1e-5)).square().sum(1).mean())
    feature_term = torch.stack(levels).mean()
    assert 0 < feature_term < 4  # squared distance of unit vectors
    torch.testing.assert_close(value.detach(), (pred.detach() - target).square().mean() + feature_term)
    # the weights come from the fixed seed: a second objective measures the same distance
    other = DISTILL_OBJECTIVES["endpoint-random-features"](teacher[0], kacfast.KacProcess(), 4, 2)
    torch.testing.assert_close(other.distance(pred, target), value)
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert objective.describe()["loss"] == "endpoint-random-features"
    with pytest.raises(ValueError, match="compares images"):
        objective.distance(torch.randn(4, 2), torch.randn(4, 2))


def test_random_feature_objective_distills_an_image_teacher(tmp_path):
    torch.manual_seed(0)
    image_teacher = build_model("unet-tiny", image_size=8, num_classes=None)
    attach_facts(image_teacher, process=kacfast.KacProcess())
    data = (torch.rand(64, 1, 8, 8) * 2 - 1, None)
    config = DistillConfig(schedule=(2, 1), steps_per_stage=3, batch_size=16, ckpt_every=3,
                           objective="endpoint-random-features")
    student = distill(image_teacher, kacfast.KacProcess(), data, config, str(tmp_path), progress=False)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "stage-1-1" / "log.jsonl")]
    assert losses and all(np.isfinite(losses))
    assert kacfast.sample(student, 1, batch_size=4, seed=0).shape == (4, 1, 8, 8)


def _image_teacher():
    torch.manual_seed(0)
    model = build_model("unet-tiny", image_size=8, num_classes=3)
    for p in model.parameters():  # a random output layer: the zero init makes every endpoint 0
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return attach_facts(model.eval(), process=kacfast.KacProcess())


def _adversarial_run(out, steps, resume=False, options=None):
    gen = torch.Generator().manual_seed(1)
    data = (torch.rand(48, 1, 8, 8, generator=gen) * 2 - 1, torch.arange(48) % 3)
    config = DistillConfig(schedule=(2, 1), steps_per_stage=steps, batch_size=8, warmup=1,
                           ckpt_every=2, objective="endpoint-l2-adversarial", objective_options=options or {})
    return distill(_image_teacher(), kacfast.KacProcess(), data, config, str(out), resume=resume,
                   progress=False)


def test_stages_keep_power_emas_and_pass_on_their_exponential_ema(teacher, tmp_path):
    """ema_lengths reaches every stage: each stage's checkpoint holds its power-function EMAs, which
    load by name, and the next stage's teacher is the stage's exponential EMA, as without them."""
    model, data, _ = teacher
    runs = {}
    for name, lengths in (("plain", ()), ("averages", (0.2, 0.05))):
        config = DistillConfig(schedule=(4, 2, 1), steps_per_stage=6, batch_size=64, ckpt_every=6,
                               ema_lengths=lengths)
        runs[name] = distill(model, kacfast.KacProcess(), data, config, str(tmp_path / name),
                             progress=False)
    assert all(torch.equal(a, b) for a, b in zip(runs["plain"].state_dict().values(),
                                                  runs["averages"].state_dict().values()))
    for stage in ("stage-1-2", "stage-2-1"):
        meta, tensors = read_checkpoint(str(tmp_path / "averages" / stage / CHECKPOINT_NAME))
        assert meta["config"]["ema_lengths"] == [0.05, 0.2]  # sorted: one run, whatever the order
        assert {k.split("/")[0] for k in tensors if k.startswith("ema-")} == {"ema-power0.05", "ema-power0.2"}
        average = load_trained(str(tmp_path / "averages" / stage), ema="power0.05")[0]
        ema = load_trained(str(tmp_path / "averages" / stage))[0]
        assert not all(torch.equal(a, b) for a, b in zip(average.state_dict().values(), ema.state_dict().values()))


@pytest.mark.parametrize("options", [None, {"discriminator_warmup": 3}])
def test_adversarial_stage_trains_a_discriminator_and_resumes_exactly(tmp_path, options):
    """The discriminator and its optimizer are part of the run: 2 steps, then 2 more after a
    restart, equal 4 steps straight, student and discriminator alike (with a discriminator
    warm-up that the restart splits too)."""
    straight = _adversarial_run(tmp_path / "straight", 4, options=options)
    _adversarial_run(tmp_path / "resumed", 2, options=options)
    resumed = _adversarial_run(tmp_path / "resumed", 4, resume=True, options=options)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    ckpts = [read_checkpoint(str(tmp_path / run / "stage-1-1" / CHECKPOINT_NAME))
             for run in ("straight", "resumed")]
    disc = [{k: v for k, v in tensors.items() if k.startswith("objective/discriminator/")}
            for _, tensors in ckpts]
    assert disc[0] and disc[0].keys() == disc[1].keys()
    assert all(torch.equal(disc[0][k], disc[1][k]) for k in disc[0])
    assert ckpts[0][0]["objective_optimizers"]["discriminator_optimizer"]["state"]
    fresh = DISTILL_OBJECTIVES["endpoint-l2-adversarial"](_image_teacher(), kacfast.KacProcess(), 2, 1)
    trained = {k[len("objective/discriminator/"):]: v for k, v in disc[0].items()}
    assert any(not torch.equal(trained[k], v) for k, v in fresh.discriminator.state_dict().items())
    assert ckpts[0][0]["objective"]["loss"] == "endpoint-l2-adversarial"
    # a sampling-only export carries the student alone: no discriminator, no optimizer state
    from kacfast.checkpoints import export_weights
    meta = export_weights(str(tmp_path / "straight" / "stage-1-1"), str(tmp_path / "student.safetensors"))
    assert "objective_optimizers" not in meta and "optimizer" not in meta
    assert all(k.startswith("model/") for k in read_checkpoint(str(tmp_path / "student.safetensors"))[1])


def test_adversarial_objective_needs_images_and_its_saved_state(tmp_path, teacher):
    with pytest.raises(ValueError, match="needs an image teacher"):
        DISTILL_OBJECTIVES["endpoint-l2-adversarial"](teacher[0], kacfast.KacProcess(), 4, 2)
    # a checkpoint without the discriminator's state cannot resume it, and nothing half-loads:
    # the file's model differs from the target, which must keep its own weights
    saved = _image_teacher()
    with torch.no_grad():
        for p in saved.parameters():
            p.add_(1.0)
    path = str(tmp_path / CHECKPOINT_NAME)
    objective = DISTILL_OBJECTIVES["endpoint-l2-adversarial"](_image_teacher(), kacfast.KacProcess(), 2, 1)
    parts = objective.checkpointed()
    target = _image_teacher()
    before = [p.clone() for p in target.parameters()]
    save_checkpoint(path, model=saved, ema=None, optimizer=None, meta={})
    with pytest.raises(kacfast.checkpoints.CheckpointError, match="does not fit"):
        restore(path, model=target, objective_state=parts)  # no discriminator weights
    save_checkpoint(path, model=saved, ema=None, optimizer=None, meta={},
                    objective_state={"discriminator": parts["discriminator"]})
    with pytest.raises(kacfast.checkpoints.CheckpointError, match="no state for the objective's"):
        restore(path, model=target, objective_state=parts)  # no discriminator optimizer
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # a different parameter layout
    save_checkpoint(path, model=saved, ema=None, optimizer=None, meta={},
                    objective_state={"discriminator": parts["discriminator"], "discriminator_optimizer": other})
    with pytest.raises(kacfast.checkpoints.CheckpointError, match="does not fit this optimizer"):
        restore(path, model=target, objective_state=parts)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))


def test_adversarial_term_reaches_the_student_only_through_samples():
    """With no interval ending at t = 0 in the batch the loss is the L2 alone and the discriminator
    does not move; with samples, the GAN term changes the student's gradient."""
    teacher = _image_teacher()
    objective = DISTILL_OBJECTIVES["endpoint-l2-adversarial"](teacher, kacfast.KacProcess(), 4, 2)
    plain = DistillObjective(teacher, kacfast.KacProcess(), 4, 2)
    x0, y = torch.rand(1, 1, 8, 8) * 2 - 1, torch.tensor([1])
    seed = next(s for s in range(100)  # a batch of one whose interval is the first (t = 1 -> 0.5)
                if torch.randint(0, 2, (1,), generator=torch.Generator().manual_seed(s)).item() == 0)
    d_before = [p.clone() for p in objective.discriminator.parameters()]
    student = _image_teacher().train()
    value = objective.loss(student, x0, y, torch.Generator().manual_seed(seed), seed=7)
    torch.testing.assert_close(value, plain.loss(student, x0, y, torch.Generator().manual_seed(seed), seed=7))
    assert all(torch.equal(a, b) for a, b in zip(d_before, objective.discriminator.parameters()))

    one_step = DISTILL_OBJECTIVES["endpoint-l2-adversarial"](teacher, kacfast.KacProcess(), 2, 1)
    grads = []
    for weight in (0.0, 0.1):
        one_step.adversarial_weight = weight
        student.zero_grad()
        x0s, ys = torch.rand(4, 1, 8, 8) * 2 - 1, torch.arange(4) % 3
        one_step.loss(student, x0s, ys, torch.Generator().manual_seed(0), seed=1).backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters()]))
        # the student's backward leaves the discriminator (stepped inside loss) alone
        assert not any(p.requires_grad for p in one_step.discriminator.parameters())
    assert not torch.allclose(grads[0], grads[1])


def test_discriminator_warmup_trains_d_alone_first_and_is_recorded_only_when_set():
    """discriminator_warmup=2: the first two loss calls step D but return the endpoint distance
    alone; the third adds the GAN term. A run without it records no such key, so runs recorded
    before the option existed still resume."""
    teacher = _image_teacher()
    options = {"discriminator_warmup": 2}
    objective = DISTILL_OBJECTIVES["endpoint-l2-adversarial"](teacher, kacfast.KacProcess(), 2, 1, options=options)
    plain = DistillObjective(teacher, kacfast.KacProcess(), 2, 1)
    student = _image_teacher().train()
    x0, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.arange(4) % 3
    for call in range(3):
        d_before = [p.clone() for p in objective.discriminator.parameters()]
        value = objective.loss(student, x0, y, torch.Generator().manual_seed(call), seed=call)
        distance = plain.loss(student, x0, y, torch.Generator().manual_seed(call), seed=call)
        assert objective._discriminator_steps() == call + 1
        assert any(not torch.equal(a, b) for a, b in zip(d_before, objective.discriminator.parameters()))
        if call < 2:
            torch.testing.assert_close(value, distance)
        else:
            assert value > distance  # softplus(-D) > 0
    assert objective.describe()["discriminator_warmup"] == 2.0
    default = DISTILL_OBJECTIVES["endpoint-l2-adversarial"](teacher, kacfast.KacProcess(), 2, 1)
    assert "discriminator_warmup" not in default.describe() and "adversarial_weight" in default.describe()


def test_clamped_compares_samples_as_the_sampler_returns_them():
    """clamped=1: the endpoints of intervals ending at t = 0 enter the distance (and the
    discriminator) clamped to [-1, 1], so a student pixel past -1 costs nothing where the target's
    is -1 too; intervals ending earlier stay unclamped; 0 or 1 only; recorded only when set."""
    teacher = _image_teacher()
    process = kacfast.KacProcess()
    warm = {"discriminator_warmup": 100}  # the loss is the distance alone
    objective = DISTILL_OBJECTIVES["endpoint-l2-adversarial"](teacher, process, 2, 1,
                                                              options={**warm, "clamped": 1})
    class Overshooting(torch.nn.Module):  # a student whose samples leave the data range
        def __init__(self):
            super().__init__()
            self.net = _image_teacher()

        def forward(self, x, t, y=None):
            return 50.0 * self.net(x, t, y)

    student = Overshooting().train()
    x0, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.arange(4) % 3
    pred, target, _ = objective.endpoints(student, x0, y, torch.Generator().manual_seed(0), 5)
    assert ((pred.detach() > 1) | (pred.detach() < -1)).any()
    value = objective.loss(student, x0, y, torch.Generator().manual_seed(0), 5)
    torch.testing.assert_close(value, (pred.clamp(-1, 1) - target.clamp(-1, 1)).square().mean())
    assert not torch.allclose(value, (pred - target).square().mean())

    two_steps = DISTILL_OBJECTIVES["endpoint-l2-adversarial"](teacher, process, 4, 2,
                                                              options={**warm, "clamped": 1})
    plain = DistillObjective(teacher, process, 4, 2)
    seed = next(s for s in range(100)  # a batch of one whose interval is the first (t = 1 -> 0.5)
                if torch.randint(0, 2, (1,), generator=torch.Generator().manual_seed(s)).item() == 0)
    torch.testing.assert_close(two_steps.loss(student, x0[:1], y[:1], torch.Generator().manual_seed(seed), 7),
                               plain.loss(student, x0[:1], y[:1], torch.Generator().manual_seed(seed), 7))
    with pytest.raises(ValueError, match="clamped must be 0 or 1"):
        DISTILL_OBJECTIVES["endpoint-l2-adversarial"](teacher, process, 2, 1, options={"clamped": 2})
    assert objective.describe()["clamped"] == 1.0
    assert "clamped" not in DISTILL_OBJECTIVES["endpoint-l2-adversarial"](teacher, process, 2, 1).describe()


def test_schedule_and_objective_validation(teacher):
    with pytest.raises(ValueError, match="dividing the previous"):
        DistillConfig(schedule=(10, 4))
    with pytest.raises(ValueError, match="start must be"):
        DistillObjective(teacher[0], kacfast.KacProcess(), 4, 2, start="middle")
    with pytest.raises(ValueError, match="teacher_solver must be"):
        DistillObjective(teacher[0], kacfast.KacProcess(), 4, 2, teacher_solver="rk4")
    with pytest.raises(ValueError, match="one count >= 1 per stage"):
        DistillConfig(schedule=(4, 2, 1), steps_per_stage=(10, 20, 30))
    assert DistillConfig(schedule=(4, 2, 1), steps_per_stage=7).steps_per_stage == (7, 7)
    with pytest.raises(ValueError, match="precision must be one of"):
        DistillConfig(precision="fp16")
    with pytest.raises(ValueError, match="compile must be True, False or one of"):
        DistillConfig(compile="fast")
    with pytest.raises(ValueError, match=r"every stage needs more steps than warmup \(100\)"):
        DistillConfig(schedule=(4, 2, 1), steps_per_stage=(500, 100), lr_schedule="cosine")


@pytest.mark.parametrize("solver", ["euler", "ab2"])
def test_teacher_roll_out_is_the_sampler_on_the_sub_grid(teacher, solver):
    """Per-sample start times give what kacfast.integrate gives on the same uniform sub-grid."""
    model = teacher[0]
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    t0, h, n = 0.75, 0.125, 4
    mine = teacher_integrate(model, x, torch.full((16,), t0), None, h, n, 1.0, solver)
    ref = kacfast.integrate(lambda z, t: model(z, torch.full((16,), t)), x,
                            [t0 - j * h for j in range(n + 1)], solver=solver, clamp=False)
    torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("start,objective", [("noise", "endpoint-l2"), ("rollout", "endpoint-l2"),
                                             ("noise", "endpoint-pseudo-huber")])
def test_one_step_student_tracks_the_teacher(tmp_path, teacher, start, objective):
    model, data, _ = teacher
    proc = kacfast.KacProcess()
    config = DistillConfig(schedule=(8, 4, 2, 1), steps_per_stage=150, batch_size=256, lr=2e-3,
                           start=start, ckpt_every=150, objective=objective)
    student = distill(model, proc, data, config, str(tmp_path), progress=False)
    assert facts_of(student).grid == (1.0, 0.0)
    with torch.no_grad():
        reference = kacfast.sample(model, 8, batch_size=2000, seed=5, process=proc, clamp=False)
        one_step_teacher = kacfast.sample(model, 1, batch_size=2000, seed=5, process=proc, clamp=False)
        one_step_student = kacfast.sample(student, 1, batch_size=2000, seed=5, clamp=False)
    err_teacher = (one_step_teacher - reference).norm(dim=1).mean()
    err_student = (one_step_student - reference).norm(dim=1).mean()
    # same prior points: the student's single step lands near the teacher's 8-step endpoint
    assert err_student < 0.5 * err_teacher, (err_student, err_teacher)
    # each stage is a resumable run: a second call with resume=True trains nothing
    again = distill(model, proc, data, config, str(tmp_path), resume=True, progress=False)
    for a, b in zip(student.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_distill_then_sample_the_student(tmp_path):
    cli = [sys.executable, "-m", "kacfast"]
    run = tmp_path / "teacher"
    subprocess.run(cli + ["train", "--data", "gmm9", "--model", "mlp", "--steps", "30", "--out", str(run),
                          "--batch-size", "64", "--threads", "1", "--quiet"], check=True, timeout=600)
    out = subprocess.run(cli + ["distill", "--teacher", str(run), "--out", str(tmp_path / "student"),
                                "--schedule", "4", "2", "1", "--steps-per-stage", "10",
                                "--batch-size", "64", "--guidance", "1.5", "--threads", "1", "--quiet",
                                "--precision", "bf16", "--lr-schedule", "cosine", "--warmup", "2"],
                         check=True, timeout=600, capture_output=True, text=True)
    assert "student:" in out.stdout
    student, meta = load_trained(str(tmp_path / "student" / "stage-2-1"))
    assert facts_of(student).grid == (1.0, 0.0) and meta["objective"]["method"] == "distill"
    assert meta["objective"]["guidance"] == 1.0  # only stage 1 uses the guided teacher
    # ... but every later student reproduces that guided teacher, and says so
    assert meta["objective"]["absorbed_guidance"] == 1.5 and facts_of(student).absorbed_guidance == 1.5
    assert meta["config"]["precision"] == "bf16"  # every stage trains as the flags say ...
    # ... and decays its own LR over its own 10 steps (the last: lr * (1 + cos(7 pi / 8)) / 2)
    assert meta["config"]["lr_schedule"] == "cosine"
    assert meta["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.5 * (1 + np.cos(7 * np.pi / 8)))
    first = load_trained(str(tmp_path / "student" / "stage-1-2"))[1]
    assert first["objective"]["guidance"] == 1.5
    npy = tmp_path / "s.npy"
    subprocess.run(cli + ["sample", "--ckpt", str(tmp_path / "student" / "stage-2-1"), "--steps", "1",
                          "--n", "16", "--out", str(npy), "--quiet"], check=True, timeout=600)
    # a flow-map student with one of its options, sampled at a step count of its choosing
    subprocess.run(cli + ["distill", "--teacher", str(run), "--out", str(tmp_path / "flow"),
                          "--schedule", "4", "1", "--steps-per-stage", "5", "--objective", "flow-map",
                          "--objective-option", "instantaneous_fraction=0.5", "--batch-size", "64",
                          "--threads", "1", "--quiet"], check=True, timeout=600)
    meta = load_trained(str(tmp_path / "flow" / "stage-1-1"))[1]
    assert meta["objective"]["loss"] == "flow-map" and meta["objective"]["instantaneous_fraction"] == 0.5
    subprocess.run(cli + ["sample", "--ckpt", str(tmp_path / "flow" / "stage-1-1"), "--steps", "3",
                          "--n", "16", "--out", str(tmp_path / "f.npy"), "--quiet"], check=True, timeout=600)
    assert np.load(tmp_path / "f.npy").shape[0] == 16


def test_flow_map_student_tracks_the_flow_at_every_step_count(tmp_path, teacher):
    """The flow-map objective (one stage, 8 -> 1): one student for any number of steps, each
    closer to the teacher's fine roll-out than the teacher itself at that many steps."""
    model, data, _ = teacher
    proc = kacfast.KacProcess()
    config = DistillConfig(schedule=(8, 1), steps_per_stage=300, batch_size=256, lr=2e-3,
                           ckpt_every=300, objective="flow-map")
    student = distill(model, proc, data, config, str(tmp_path), progress=False)
    assert kacfast.models.is_flow_map(student) and facts_of(student).grid == (1.0, 0.0)
    with torch.no_grad():
        reference = kacfast.sample(model, 128, batch_size=2000, seed=5, process=proc, clamp=False)
        for steps in (1, 2, 4):
            err = {name: (kacfast.sample(net, steps, batch_size=2000, seed=5, process=proc,
                                         clamp=False) - reference).norm(dim=1).mean()
                   for name, net in (("teacher", model), ("student", student))}
            assert err["student"] < (0.3 if steps == 1 else 0.6) * err["teacher"], (steps, err)
    again = distill(model, proc, data, config, str(tmp_path), resume=True, progress=False)
    for a, b in zip(student.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_flow_map_targets_are_the_teacher_below_its_step_and_two_half_steps_above(teacher):
    model = teacher[0]
    objective = DISTILL_OBJECTIVES["flow-map"](model, kacfast.KacProcess(), 4, 2)
    student = objective.student_from(model)
    with torch.no_grad():  # a trained interval embedding, so that the two targets differ
        for p in student.interval_proj.parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(3)
    t, h = objective.intervals(4000, gen, "cpu")
    assert 0 <= h.min() and (h <= t + 1e-7).all() and t.max() <= 1.0
    assert abs((h == 0).float().mean() - 0.25) < 0.03  # instantaneous
    on_grid = (h == 0.5) & ((t == 1.0) | (t == 0.5))
    assert abs(on_grid.float().mean() - 0.25) < 0.03  # the student grid's own intervals

    x0 = teacher[1][0][:64]
    loss = objective.loss(student, x0, None, torch.Generator().manual_seed(9), seed=4)
    t, h = objective.intervals(64, torch.Generator().manual_seed(9), "cpu")
    x = kacfast.KacProcess().noise_target(x0, t, seed=4)[0]
    with torch.no_grad():
        half = h[:, None] / 2
        u1 = student(x, t, None, interval=h / 2)
        u2 = student(x - half * u1, t - h / 2, None, interval=h / 2)
        target = torch.where((h > 0.25)[:, None], (u1 + u2) / 2, model(x, t))
        expected = (student(x, t, None, interval=h) - target).square().mean()
    assert (h > 0.25).any() and (h <= 0.25).any()
    torch.testing.assert_close(loss.detach(), expected)
    with pytest.raises(ValueError, match="start must be 'noise'"):
        DISTILL_OBJECTIVES["flow-map"](model, kacfast.KacProcess(), 4, 2, start="rollout")
    with pytest.raises(ValueError, match="teacher_solver does not apply"):
        DISTILL_OBJECTIVES["flow-map"](model, kacfast.KacProcess(), 4, 2, teacher_solver="ab2")
    with pytest.raises(ValueError, match="solver must be 'euler'"):
        DistillObjective(student, kacfast.KacProcess(), 4, 2, teacher_solver="ab2")
    with pytest.raises(ValueError, match="solver must be 'euler'"):
        teacher_integrate(student, x0[:2], torch.ones(2), None, 0.25, 2, 1.0, "ab2")
    # a flow-map teacher gives its average velocity over h as the target below its step
    chained = DISTILL_OBJECTIVES["flow-map"](student, kacfast.KacProcess(), 4, 2)
    small = torch.Generator().manual_seed(9)
    loss = chained.loss(student, x0, None, small, seed=4)
    t, h = chained.intervals(64, torch.Generator().manual_seed(9), "cpu")
    x = kacfast.KacProcess().noise_target(x0, t, seed=4)[0]
    with torch.no_grad():
        u1 = student(x, t, None, interval=h / 2)
        u2 = student(x - h[:, None] / 2 * u1, t - h / 2, None, interval=h / 2)
        target = torch.where((h > 0.25)[:, None], (u1 + u2) / 2, student(x, t, None, interval=h))
        expected = (student(x, t, None, interval=h) - target).square().mean()
    torch.testing.assert_close(loss.detach(), expected)


def _flow_map_run(out, steps, resume=False):
    gen = torch.Generator().manual_seed(1)
    data = (torch.rand(48, 1, 8, 8, generator=gen) * 2 - 1, torch.arange(48) % 3)
    config = DistillConfig(schedule=(4, 1), steps_per_stage=steps, batch_size=8, warmup=1,
                           ckpt_every=2, guidance=1.5, objective="flow-map")
    return distill(_image_teacher(), kacfast.KacProcess(), data, config, str(out), resume=resume,
                   progress=False)


def test_flow_map_image_student_resumes_exactly_and_loads_as_a_flow_map(tmp_path):
    straight = _flow_map_run(tmp_path / "straight", 4)
    _flow_map_run(tmp_path / "resumed", 2)
    resumed = _flow_map_run(tmp_path / "resumed", 4, resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    loaded, meta = load_trained(str(tmp_path / "straight" / "stage-1-1"))
    assert kacfast.models.is_flow_map(loaded) and meta["objective"]["loss"] == "flow-map"
    assert facts_of(loaded).absorbed_guidance == 1.5
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any uniform step count is the student's own
        for steps in (1, 3):
            torch.testing.assert_close(
                kacfast.sample(loaded, steps, labels=[0, 1, 2], seed=0),
                kacfast.sample(straight, steps, labels=[0, 1, 2], seed=0))


def test_endpoint_stage_from_a_flow_map_steps_by_its_average_velocity(teacher):
    """A flow-map teacher's copy takes its one step with the interval (x - D u(x, t, D)), and the
    teacher's substeps use theirs."""
    flow_map = DISTILL_OBJECTIVES["flow-map"](teacher[0], kacfast.KacProcess(), 4, 1).student_from(teacher[0])
    with torch.no_grad():
        for p in flow_map.interval_proj.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    objective = DistillObjective(flow_map.eval(), kacfast.KacProcess(), 2, 1)
    x0 = teacher[1][0][:16]
    pred, target, _ = objective.endpoints(flow_map, x0, None, torch.Generator().manual_seed(0), seed=1)
    x = kacfast.KacProcess().noise_target(x0, torch.ones(16), seed=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(pred, x - flow_map(x, 1.0, None, interval=1.0))
        half = x - 0.5 * flow_map(x, 1.0, None, interval=0.5)
        torch.testing.assert_close(target, half - 0.5 * flow_map(half, 0.5, None, interval=0.5))


def test_objective_options_set_its_tunable_settings_and_are_recorded(teacher):
    objective = DISTILL_OBJECTIVES["endpoint-l2-adversarial"](
        _image_teacher(), kacfast.KacProcess(), 2, 1, options={"adversarial_weight": 0.3})
    assert objective.adversarial_weight == 0.3 and objective.describe()["adversarial_weight"] == 0.3
    assert DISTILL_OBJECTIVES["endpoint-l2-adversarial"].adversarial_weight == 0.1  # class untouched
    flow = DISTILL_OBJECTIVES["flow-map"](teacher[0], kacfast.KacProcess(), 4, 1,
                                          options={"instantaneous_fraction": 0.5})
    assert flow.describe()["instantaneous_fraction"] == 0.5
    with pytest.raises(ValueError, match=r"endpoint-l2 has no option 'adversarial_weight'; its options: none"):
        DistillObjective(teacher[0], kacfast.KacProcess(), 4, 2, options={"adversarial_weight": 1})
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        DISTILL_OBJECTIVES["flow-map"](teacher[0], kacfast.KacProcess(), 4, 1, options={"grid_fraction": -1})
    with pytest.raises(ValueError, match="must be <= 1"):
        DISTILL_OBJECTIVES["flow-map"](teacher[0], kacfast.KacProcess(), 4, 1,
                                       options={"grid_fraction": 0.8, "instantaneous_fraction": 0.5})
    with pytest.raises(ValueError, match="endpoint-l2-adversarial has no option 'weight'"):
        DistillConfig(objective="endpoint-l2-adversarial", objective_options={"weight": 0.3})


def test_cli_objective_option():
    from kacfast.cli import _name_value
    assert _name_value("adversarial_weight=0.3") == ("adversarial_weight", 0.3)
    import argparse
    for bad in ("adversarial_weight", "=3", "w=high"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=NUMBER"):
            _name_value(bad)
