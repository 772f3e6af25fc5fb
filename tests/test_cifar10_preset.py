"""The paper's CIFAR-10 recipe (benchmarks/experiments/cifar10_paper.sh), run end to end at a tiny
size: one torchrun process (gloo) on the CPU, the full unet-cifar10 network, a fake CIFAR-10, a few
steps."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_data import fake_cifar
from kacfast.checkpoints import load_trained
from kacfast.facts import facts_of

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments" / "cifar10_paper.sh"


@pytest.mark.slow
def test_cifar10_recipe_runs_at_tiny_size(tmp_path):
    fake_cifar(tmp_path / "data", per_batch=4)
    env = dict(os.environ, KACFAST_DATA=str(tmp_path / "data"), NPROC="1", TEACHER_STEPS="2",
               STAGE_STEPS="1 1 1 1", BATCH="2", N_EVAL="4", EVAL_STEPS="2", CLASSIFIER_STEPS="2",
               THREADS="1", SAMPLE_EVERY="0", HOME=str(tmp_path),  # HOME: keep the classifier cache apart
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    runs = tmp_path / "runs"
    done = subprocess.run(["bash", str(SCRIPT), str(runs)], env=env, timeout=1200, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    teacher, meta = load_trained(str(runs / "teacher"))
    assert meta["run"]["preset"] == "unet-cifar10" and meta["model"]["config"]["model_channels"] == 128
    assert sum(p.numel() for p in teacher.parameters()) > 35e6
    assert meta["step"] == 2 and meta["config"]["ema_decay"] == 0.9999
    student, smeta = load_trained(str(runs / "distill" / "stage-4-1"))
    assert facts_of(student).grid == (1.0, 0.0)
    assert smeta["objective"]["teacher_solver"] == "euler"  # later teachers are Euler-trained students
    first = load_trained(str(runs / "distill" / "stage-1-20"))[1]["objective"]
    assert first["guidance"] == 1.2 and first["teacher_steps"] == 100 and first["teacher_solver"] == "ab2"
    files = [runs / "teacher" / "eval-2-ab2.jsonl"] + [
        next((runs / "distill" / stage).glob("eval-*.jsonl"))
        for stage in ("stage-1-20", "stage-2-4", "stage-3-2", "stage-4-1")]
    for file in files:
        floor, row = (json.loads(line) for line in file.read_text().splitlines())
        assert floor["method"] == "data" and row["reference"] == "train" and row["n"] == 4
        assert {"cnn_fd", "strided_fd", "cnn_precision"} <= set(row["metrics"])
        assert len(row["metrics"]["cnn_fd"]["values"]) == 3
