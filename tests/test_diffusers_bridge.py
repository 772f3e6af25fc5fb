"""kacfast.integrations.diffusers: the scheduler against diffusers' expectations and against
kacfast.sample (bit for bit), the pipeline exported and reloaded offline, UNet2DModel backbones
through training (exact resume, CLI) and one-sentence errors for bad configs and timesteps."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import kacfast  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402
from diffusers.schedulers.scheduling_utils import SchedulerOutput  # noqa: E402
from kacfast.checkpoints import CHECKPOINT_NAME, load_trained, read_checkpoint  # noqa: E402
from kacfast.integrations.diffusers import (DiffusersUNet, KacFlowScheduler, KacPipeline,  # noqa: E402
                                            KacVelocityModel, export_pipeline)
from kacfast.models import build_model  # noqa: E402
from kacfast.training import KacObjective, TrainConfig, train  # noqa: E402
from kacfast.training.distill import DistillConfig  # noqa: E402

CLI = [sys.executable, "-m", "kacfast"]
TINY_UNET = dict(block_out_channels=[32, 32], layers_per_block=1, norm_num_groups=8,
                 down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                 up_block_types=["AttnUpBlock2D", "UpBlock2D"], attention_head_dim=8)


def tiny_unet2d(**overrides) -> UNet2DModel:
    torch.manual_seed(0)
    config = dict(sample_size=8, in_channels=1, out_channels=1, num_class_embeds=11, **TINY_UNET)
    config.update(overrides)
    return UNet2DModel(**config)


@pytest.fixture(scope="module")
def teacher():
    return kacfast.load_pretrained("mnist16-kac-teacher")


def diffusers_loop(model, scheduler, labels, steps, guidance, seed):
    """The loop a diffusers user writes by hand: prior, set_timesteps, one call + step per time."""
    x = scheduler.sample_prior((len(labels),) + tuple(model.sample_shape), seed=seed)
    scheduler.set_timesteps(steps)
    y = torch.tensor(labels)
    for t in scheduler.timesteps:
        times = t.expand(len(labels))
        if guidance == 1:
            v = model(scheduler.scale_model_input(x, t), times, y)
        else:
            null = torch.full_like(y, model.num_classes)
            v = model(torch.cat([x, x]), torch.cat([times, times]), torch.cat([y, null]))
        x = scheduler.step(v, t, x, guidance_scale=guidance).prev_sample
    return x


# ----------------------------------------------------------------------------------------------
# scheduler
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver,spacing,guidance", [("euler", "linspace", 1.0),
                                                     ("ab2", "linspace", 1.5),
                                                     ("euler", "quadratic", 2.0)])
def test_hand_written_loop_equals_kacfast_sample_bit_for_bit(teacher, solver, spacing, guidance):
    scheduler = KacFlowScheduler(solver=solver, timestep_spacing=spacing)
    labels = [0, 3, 7, 9, 1]
    ours = diffusers_loop(teacher, scheduler, labels, 6, guidance, seed=11)
    grid = kacfast.quadratic_grid(6) if spacing == "quadratic" else None
    ref = kacfast.sample(teacher, 6, labels=labels, guidance=guidance, solver=solver, seed=11,
                         grid=grid)
    assert torch.equal(ours, ref)


def test_scheduler_contract(tmp_path):
    scheduler = KacFlowScheduler(a=4.0, c=2.0, T=2.0, solver="ab2", timestep_spacing="quadratic")
    scheduler.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["solver"] == "ab2"
    loaded = KacFlowScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    assert loaded.process == kacfast.KacProcess(a=4.0, c=2.0, T=2.0)
    assert KacFlowScheduler.from_config(loaded.config, solver="euler").config.a == 4.0
    loaded.set_timesteps(4, device="cpu")
    assert loaded.timesteps.dtype == torch.float32 and loaded.timesteps.device.type == "cpu"
    assert loaded.timesteps.tolist() == pytest.approx(kacfast.quadratic_grid(4, 2.0)[:-1])
    x = torch.zeros(3, 2)
    out = loaded.step(torch.ones(3, 2), loaded.timesteps[0], x)
    assert isinstance(out, SchedulerOutput) and out.prev_sample.shape == x.shape
    assert isinstance(loaded.step(torch.ones(3, 2), loaded.timesteps[1], x, return_dict=False), tuple)
    assert loaded.step_index == 2 and loaded.scale_model_input(x, 0.5) is x


def test_scheduler_state_and_timestep_round_trip():
    scheduler = KacFlowScheduler(T=0.7, timestep_spacing="quadratic")
    scheduler.set_timesteps(5)
    read_back = scheduler.timesteps.clone()  # float32: T = 0.7 is a rounding step off
    scheduler.set_timesteps(timesteps=read_back)
    assert scheduler.num_inference_steps == 5
    assert scheduler.timesteps.tolist() == pytest.approx(kacfast.quadratic_grid(5, 0.7)[:-1])
    scheduler.set_begin_index(3)
    scheduler.set_timesteps(2)  # starts over: no begin index left from the last loop
    assert scheduler.begin_index is None and scheduler.step_index is None
    with pytest.raises(ValueError, match="needs model_output = cat"):
        scheduler.step(torch.zeros(2, 3), scheduler.timesteps[0], torch.zeros(2, 3),
                       guidance_scale=1.5)


def test_training_pair_is_the_fused_noise_target():
    scheduler = KacFlowScheduler()
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    t = scheduler.sample_training_timesteps(6, generator=torch.Generator().manual_seed(0))
    assert t.shape == (6,) and 0 <= t.min() and t.max() <= 1
    x_t, target = scheduler.training_pair(x0, t, seed=5)
    ref = kacfast.KacProcess().noise_target(x0, t, seed=5)
    assert torch.equal(x_t, ref[0]) and torch.equal(target, ref[1])


def test_scheduler_bad_input_fails_in_one_sentence():
    with pytest.raises(ValueError, match="solver must be one of"):
        KacFlowScheduler(solver="heun")
    with pytest.raises(ValueError, match="timestep_spacing"):
        KacFlowScheduler(timestep_spacing="leading")
    with pytest.raises(ValueError, match="c must be a number > 0"):
        KacFlowScheduler(c=0)
    scheduler = KacFlowScheduler()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(torch.zeros(1), 1.0, torch.zeros(1))
    with pytest.raises(ValueError, match=r"timesteps must lie in \(0, T = 1\]"):
        scheduler.set_timesteps(timesteps=[1.5, 0.5])
    with pytest.raises(ValueError, match="decrease strictly"):
        scheduler.set_timesteps(timesteps=[1.0, 0.5, 0.5])
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match=r"timestep must lie in \[0, T = 1\], got 1.5"):
        scheduler.step(torch.zeros(1), 1.5, torch.zeros(1))
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        scheduler.step(torch.zeros(1), 0.3, torch.zeros(1))
    scheduler.step(torch.zeros(1), 1.0, torch.zeros(1))
    with pytest.raises(ValueError, match="in order"):
        scheduler.step(torch.zeros(1), 1.0, torch.zeros(1))
    scheduler.step(torch.zeros(1), 0.5, torch.zeros(1))
    with pytest.raises(ValueError, match="all 2 steps were taken"):
        scheduler.step(torch.zeros(1), 0.5, torch.zeros(1))


# ----------------------------------------------------------------------------------------------
# pipeline
# ----------------------------------------------------------------------------------------------
def test_exported_student_pipeline_reloads_offline_and_matches_kacfast_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "student"
    done = subprocess.run(CLI + ["export", "--ckpt", "mnist16-distillkac-1step", "--format",
                                 "diffusers", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    card = (out / "README.md").read_text()
    assert "KacPipeline.from_pretrained" in card and "strided FD" in card
    assert "--format diffusers" in card

    pipe = KacPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=list(range(10)), seed=0, output_type="pt").images
    student = kacfast.load_pretrained("mnist16-distillkac-1step")
    ref = kacfast.sample(student, 1, labels=list(range(10)), seed=0)
    assert torch.equal(images, (ref / 2 + 0.5).clamp(0, 1))
    assert isinstance(pipe.unet, KacVelocityModel) and pipe.unet.config.steps == 1
    # the same network is usable by kacfast directly, with its facts (grid, absorbed guidance)
    assert kacfast.facts_of(pipe.unet).absorbed_guidance == kacfast.facts_of(student).absorbed_guidance > 1
    assert torch.equal(kacfast.sample(pipe.unet, 1, labels=list(range(10)), seed=0), ref)
    pil = pipe(class_labels=[4, 2], seed=1).images
    assert len(pil) == 2 and pil[0].size == (16, 16) and pil[0].mode == "L"
    arr = pipe(class_labels=[4, 2], seed=1, output_type="np").images
    assert arr.shape == (2, 16, 16, 1) and np.array_equal(np.asarray(pil[0]), np.round(
        arr[0, :, :, 0] * 255).astype(np.uint8))
    generated = pipe(class_labels=[4], generator=torch.Generator().manual_seed(3), output_type="pt")
    again = pipe(class_labels=[4], generator=torch.Generator().manual_seed(3), output_type="pt")
    assert torch.equal(generated.images, again.images)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[1], output_type="latent")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        pipe(class_labels=[12])


def test_pipeline_takes_a_plain_unet2dmodel_and_the_schedulers_spacing():
    unet = tiny_unet2d()
    pipe = KacPipeline(unet=unet, scheduler=KacFlowScheduler(solver="ab2",
                                                             timestep_spacing="quadratic"))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[1, 2, 3], num_inference_steps=3, guidance_scale=1.5, seed=4,
                  output_type="pt").images
    ref = kacfast.sample(DiffusersUNet.from_unet(unet), 3, labels=[1, 2, 3], guidance=1.5,
                         solver="ab2", seed=4, grid=kacfast.quadratic_grid(3))
    assert torch.equal(images, (ref / 2 + 0.5).clamp(0, 1))


def test_export_refuses_what_is_not_a_kac_image_model(tmp_path):
    run = tmp_path / "run"
    subprocess.run(CLI + ["train", "--data", "gmm9", "--model", "mlp", "--steps", "2", "--out",
                          str(run), "--threads", "1", "--quiet"], check=True, timeout=600)
    with pytest.raises(ValueError, match="not an image model"):
        export_pipeline(str(run), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="is a shipped model: it holds one set of weights"):
        export_pipeline("mnist16-kac-teacher", str(tmp_path / "out"), ema="power0.1")


# ----------------------------------------------------------------------------------------------
# UNet2DModel backbones
# ----------------------------------------------------------------------------------------------
def test_diffusers_unet_is_a_kacfast_network():
    unet = tiny_unet2d()
    model = DiffusersUNet.from_unet(unet)
    assert model.unet is unet and model.num_classes == 10 and model.sample_shape == (1, 8, 8)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    y = torch.tensor([0, 9, 10])
    assert torch.equal(model(x, t, y), unet(x, t * 1000, class_labels=y).sample)
    assert torch.equal(model(x, t), model(x, t, torch.full((3,), 10)))  # y=None: the null label
    rebuilt = DiffusersUNet(**model.config)
    assert rebuilt.config == model.config
    tiny = build_model("diffusers-unet-tiny", image_size=16)
    assert sum(p.numel() for p in tiny.parameters()) == sum(
        p.numel() for p in build_model("unet-tiny", image_size=16).parameters())
    with pytest.raises(ValueError, match=r"out_channels \(3\) must equal in_channels \(1\)"):
        DiffusersUNet.from_unet_config(dict(unet.config, out_channels=3))
    with pytest.raises(ValueError, match="class_embed_type must be null"):
        DiffusersUNet.from_unet_config(dict(unet.config, class_embed_type="timestep"))
    with pytest.raises(ValueError, match="follow from in_channels"):
        DiffusersUNet(sample_size=8)
    with pytest.raises(ValueError, match="not a UNet2DModel argument"):
        DiffusersUNet(image_size=8, not_an_argument=1)


def _small_data():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(64, 1, 8, 8, generator=gen) * 2 - 1, torch.randint(0, 3, (64,), generator=gen)


def _small_run(out, steps, resume=False):
    torch.manual_seed(0)
    model = DiffusersUNet(image_size=8, num_classes=3, **TINY_UNET)
    config = TrainConfig(steps=steps, batch_size=16, lr=1e-3, warmup=1, ckpt_every=2)
    train(model, KacObjective(), _small_data(), config, str(out), resume=resume, progress=False)


def test_unet2d_training_resumes_bit_identically_and_distills(tmp_path):
    _small_run(tmp_path / "straight", 4)
    _small_run(tmp_path / "resumed", 2)
    _small_run(tmp_path / "resumed", 4, resume=True)
    meta_a, a = read_checkpoint(str(tmp_path / "straight" / CHECKPOINT_NAME))
    meta_b, b = read_checkpoint(str(tmp_path / "resumed" / CHECKPOINT_NAME))
    assert meta_a["step"] == meta_b["step"] == 4 and meta_a["model"]["kind"] == "diffusers"
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    model, _ = load_trained(str(tmp_path / "straight"))
    assert isinstance(model, DiffusersUNet)
    assert kacfast.sample(model, 2, labels=[0, 1, 2], guidance=1.5, seed=0).shape == (3, 1, 8, 8)
    student = kacfast.distill(model, kacfast.KacProcess(), _small_data(),
                              DistillConfig(schedule=(2, 1), steps_per_stage=2, batch_size=16,
                                            guidance=1.5, ckpt_every=2),
                              str(tmp_path / "distill"), progress=False)
    assert isinstance(student, DiffusersUNet)
    assert kacfast.facts_of(student).absorbed_guidance == 1.5
    assert kacfast.sample(student, 1, labels=[0, 1, 2], seed=0).shape == (3, 1, 8, 8)


def _cli_train(tmp_path, config: dict, *extra):
    path = tmp_path / "unet.json"
    path.write_text(json.dumps(config))
    return subprocess.run(CLI + ["train", "--data", "digits", "--model", f"diffusers:{path}",
                                 "--steps", "2", "--batch-size", "8", "--out", str(tmp_path / "run"),
                                 "--threads", "1", "--quiet", *extra],
                          capture_output=True, text=True, timeout=600)


def test_cli_trains_a_unet2dmodel_config_and_checks_it_against_the_data(tmp_path):
    unet = tiny_unet2d()
    unet.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    done = _cli_train(tmp_path, config)
    assert done.returncode == 0, done.stderr[-2000:]
    model, meta = load_trained(str(tmp_path / "run"))
    assert isinstance(model, DiffusersUNet) and meta["run"]["preset"].startswith("diffusers:")
    cases = [({"in_channels": 3, "out_channels": 3}, "in_channels is 3 but the data has 1"),
             ({"sample_size": 16}, "sample_size is 16 but the data is 8x8"),
             ({"num_class_embeds": None}, "num_class_embeds is missing"),
             ({"num_class_embeds": 10}, "num_class_embeds is 10 but the data has 10 classes")]
    for change, message in cases:
        bad = _cli_train(tmp_path, dict(config, **change))
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]


def test_readme_diffusers_examples_run(tmp_path, monkeypatch):
    """The README's three examples: the pipeline (by shipped name, and by the folder the export it
    names writes), the hand-written loop (which asserts its own equality with kacfast.sample), and
    training a UNet2DModel (2 steps instead of 3600)."""
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    section = re.search(r"\n## diffusers\n(.*?)\n## ", open(os.path.join(root, "README.md")).read(),
                        re.S).group(1)
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    export_pipeline("mnist16-distillkac-1step", "mnist16-1step")
    scope = {}
    exec(compile(blocks[0], "README pipeline", "exec"), scope)
    assert len(scope["images"]) == 3 and scope["images"][0].size == (16, 16)
    folder = {}
    exec(compile(blocks[0].replace('"mnist16-distillkac-1step"', '"mnist16-1step"'),
                 "README pipeline, folder", "exec"), folder)
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(scope["images"], folder["images"]))
    exec(compile(blocks[1], "README scheduler", "exec"), {})
    assert "steps=3600" in blocks[2]
    exec(compile(blocks[2].replace("steps=3600", "steps=2"), "README training", "exec"), {})
    model, meta = load_trained("runs/kac-diffusers")
    assert meta["step"] == 2 and isinstance(model, DiffusersUNet)


def test_a_flow_map_student_keeps_its_intervals_through_the_pipeline(tmp_path):
    """A flow-map student (interval-conditioned) exported as a KacPipeline steps by its average
    velocity over each interval, as kacfast.sample does, at any step count."""
    from kacfast.facts import attach_facts
    from kacfast.models import as_flow_map, build_model
    torch.manual_seed(0)
    network = as_flow_map(build_model("unet-tiny", image_size=8, num_classes=3))
    with torch.no_grad():
        for p in network.parameters():  # every layer live, the interval embedding included
            p.normal_(0, 0.05)
    attach_facts(network, process=kacfast.KacProcess(), grid=[1.0, 0.0])
    pipe = KacPipeline(unet=KacVelocityModel.from_network(network, steps=1),
                       scheduler=KacFlowScheduler())
    pipe.set_progress_bar_config(disable=True)
    assert kacfast.models.is_flow_map(pipe.unet)
    for steps in (1, 3):
        images = pipe(class_labels=[0, 1, 2], num_inference_steps=steps, seed=5,
                      output_type="pt").images
        ref = kacfast.sample(network, steps, labels=[0, 1, 2], seed=5)
        assert torch.equal(images, (ref / 2 + 0.5).clamp(0, 1))
    instantaneous = kacfast.integrate(  # what ignoring the interval would give: not the same
        lambda x, t: network(x, torch.full((3,), t), torch.tensor([0, 1, 2])),
        kacfast.KacProcess().prior((3, 1, 8, 8), seed=5), [1.0, 0.0])
    assert not torch.allclose(images, (instantaneous / 2 + 0.5).clamp(0, 1))
