"""Training loop: checkpoints (atomic, strict, clear errors), exact resume after SIGKILL, DDP under
torchrun, the EDM / DDPM objectives, and the train / sample / eval CLI."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kacfast.models import build_model
from kacfast.training import (CheckpointError, DDPMObjective, EDMObjective, KacObjective,
                              TrainConfig, read_checkpoint, restore, save_checkpoint, train)
from kacfast.training.checkpoint import CHECKPOINT_NAME

CLI = [sys.executable, "-m", "kacfast"]


def toy_data(n=512):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = torch.randn(n, 2, generator=gen) * 0.1 + torch.stack([y.float() - 1, 1 - y.float()], 1) * 0.5
    return x, y


def small_mlp(num_classes=3):
    torch.manual_seed(0)
    return build_model("mlp", width=32, depth=2, num_classes=num_classes)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def test_checkpoint_roundtrip_restores_everything(tmp_path):
    model, ema = small_mlp(), small_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 2), torch.rand(4), torch.zeros(4, dtype=torch.long)).sum().backward()
    opt.step()
    path = str(tmp_path / CHECKPOINT_NAME)
    save_checkpoint(path, model=model, ema=ema, optimizer=opt, meta={"step": 7, "note": "x"})
    model2, ema2 = small_mlp(), small_mlp()
    for p in model2.parameters():
        p.data.add_(1.0)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    meta = restore(path, model=model2, ema=ema2, optimizer=opt2)
    assert meta["step"] == 7 and meta["note"] == "x"
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert not any(name.startswith(".tmp-") for name in os.listdir(tmp_path))


def test_corrupt_truncated_and_mismatched_checkpoints_fail_clearly(tmp_path):
    model = small_mlp()
    path = str(tmp_path / CHECKPOINT_NAME)
    save_checkpoint(path, model=model, ema=None, optimizer=None, meta={"step": 1})
    data = open(path, "rb").read()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(str(tmp_path / "missing.safetensors"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(str(truncated))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(str(garbage))
    other = build_model("mlp", width=16, depth=2, num_classes=3)
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore(path, model=other)
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))  # no partial load
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore(path, model=small_mlp(), optimizer=torch.optim.AdamW(small_mlp().parameters()))


# ----------------------------------------------------------------------------------------------
# exact resume after SIGKILL
# ----------------------------------------------------------------------------------------------
def _train_cmd(out, steps=120):
    return CLI + ["train", "--data", "gmm9", "--model", "mlp", "--steps", str(steps), "--out", str(out),
                  "--batch-size", "64", "--ckpt-every", "10", "--threads", "1", "--quiet"]


def test_sigkill_then_resume_is_bit_identical_to_uninterrupted(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train_cmd(ref_dir), check=True, timeout=600, capture_output=True)
    proc = subprocess.Popen(_train_cmd(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / CHECKPOINT_NAME
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere between two checkpoints (or inside a write)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = read_checkpoint(str(ckpt))[0]["step"]
    assert 0 < killed_at < 120
    subprocess.run(_train_cmd(run_dir) + ["--resume"], check=True, timeout=600, capture_output=True)
    meta_ref, ref = read_checkpoint(str(ref_dir / CHECKPOINT_NAME))
    meta_run, run = read_checkpoint(str(ckpt))
    assert meta_ref["step"] == meta_run["step"] == 120
    assert meta_ref["data_order"] == meta_run["data_order"]
    assert set(ref) == set(run)
    for key in ref:
        assert torch.equal(ref[key], run[key]), key
    log_steps = [json.loads(line)["step"] for line in open(run_dir / "log.jsonl")]
    assert log_steps == sorted(set(log_steps))  # no duplicated lines from the killed run


def test_resume_refuses_a_different_objective(tmp_path):
    x, y = toy_data()
    cfg = TrainConfig(steps=3, batch_size=32, ckpt_every=3)
    train(small_mlp(), KacObjective(), (x, y), cfg, str(tmp_path), progress=False)
    model = small_mlp()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match="was trained with objective"):
        train(model, EDMObjective(), (x, y), TrainConfig(steps=6, batch_size=32), str(tmp_path),
              resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing loaded
    with pytest.raises(CheckpointError, match="batch_size=32"):
        train(small_mlp(), KacObjective(), (x, y), TrainConfig(steps=6, batch_size=64),
              str(tmp_path), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(small_mlp(), KacObjective(), (x, y), cfg, str(tmp_path), progress=False)


# ----------------------------------------------------------------------------------------------
# objectives and DDP
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", [KacObjective(), EDMObjective(), DDPMObjective()],
                         ids=["kac", "edm", "ddpm"])
def test_objectives_reduce_their_loss(tmp_path, objective):
    x, y = toy_data()
    cfg = TrainConfig(steps=150, batch_size=128, lr=2e-3, warmup=10, ckpt_every=150, log_every=10)
    train(small_mlp(), objective, (x, y), cfg, str(tmp_path), progress=False)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "log.jsonl")]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun with 2 gloo ranks and the same global batch follows the 1-process loss curve."""
    common = ["--steps", "60", "--batch-size", "128", "--ckpt-every", "60", "--threads", "1",
              "--quiet", "--data", "gmm9", "--model", "mlp", "--lr", "1e-3", "--warmup", "5"]
    subprocess.run(CLI + ["train", "--out", str(tmp_path / "one")] + common, check=True,
                   timeout=600, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = subprocess.run(torchrun + ["-m", "kacfast", "train", "--out", str(tmp_path / "two")] + common,
                         timeout=600, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    one = [json.loads(line)["loss"] for line in open(tmp_path / "one" / "log.jsonl")]
    two = [json.loads(line)["loss"] for line in open(tmp_path / "two" / "log.jsonl")]
    assert len(one) == len(two) >= 2
    # same data and schedule, different noise draws per rank: curves agree within noise
    np.testing.assert_allclose(two, one, rtol=0.35)
    meta = read_checkpoint(str(tmp_path / "two" / CHECKPOINT_NAME))[0]
    assert meta["world_size"] == 2 and meta["step"] == 60


# ----------------------------------------------------------------------------------------------
# CLI sample / eval
# ----------------------------------------------------------------------------------------------
def test_cli_sample_and_eval(tmp_path):
    run = tmp_path / "run"
    subprocess.run(CLI + ["train", "--data", "gmm9", "--model", "mlp", "--steps", "20", "--out", str(run),
                          "--batch-size", "64", "--threads", "1", "--quiet"], check=True, timeout=600)
    npy = tmp_path / "s.npy"
    subprocess.run(CLI + ["sample", "--ckpt", str(run), "--steps", "4", "--n", "30", "--out", str(npy),
                          "--labels", "1", "2", "--guidance", "1.5", "--quiet"], check=True, timeout=600)
    samples = np.load(npy)
    assert samples.shape == (30, 2) and samples.dtype == np.float32
    assert np.abs(samples).max() <= 1.0
    out = subprocess.run(CLI + ["eval", "--ckpt", str(run), "--steps", "4", "--n", "200", "--quiet"],
                         check=True, timeout=600, capture_output=True, text=True)
    result = json.loads(out.stdout)
    assert {"energy_distance", "sliced_w2", "modes_covered"} <= set(result)
    bad = subprocess.run(CLI + ["sample", "--ckpt", str(run), "--out", str(tmp_path / "s.png"), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "PNG output needs image data" in bad.stderr


DDP_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from kacfast.models import build_model
from kacfast.training import KacObjective, TrainConfig, train

torch.set_num_threads(1)
x = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
torch.manual_seed(0)  # identical initial replicas (DDP also broadcasts rank 0's)
model = build_model("mlp", width=32, depth=2)
train(model, KacObjective(), (x, None), TrainConfig(steps=5, batch_size=64, ckpt_every=5),
      sys.argv[1], progress=False)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
assert all(torch.equal(gathered[0], g) for g in gathered), "ranks hold different weights"
print("ranks-identical")
"""


def test_ddp_ranks_hold_identical_weights(tmp_path):
    """Each rank trains on its own half of every global batch; all-reduced gradients keep the
    replicas equal (without the all-reduce they would drift apart after one step)."""
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = subprocess.run(torchrun + [str(script), str(tmp_path / "run")], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("ranks-identical") == 2
