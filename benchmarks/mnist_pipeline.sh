#!/usr/bin/env bash
# The MNIST-5k (16x16) results of the README, end to end, on a 2-core CPU (about 2.5 hours of
# wall time; each job uses one thread, two jobs run side by side where the order allows).
#   bash benchmarks/mnist_pipeline.sh RUNS_DIR
# Writes RUNS_DIR/{kac,edm,ddpm,distill,single,rollout}, RUNS_DIR/results.jsonl, RUNS_DIR/grids/,
# docs/quality_vs_nfe.png, docs/stability.png and the two shipped model files.
set -euo pipefail
RUNS=${1:?usage: mnist_pipeline.sh RUNS_DIR}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TRAIN="kacfast train --data mnist5k16 --model unet-tiny --steps 3600 --batch-size 64 --lr 5e-4 --threads 1 --quiet"
DISTILL="kacfast distill --batch-size 64 --lr 2e-4 --threads 1 --quiet"
EVAL="python $HERE/benchmarks/mnist_results.py run --runs $RUNS --out $RUNS/results.jsonl --grids $RUNS/grids"

# 1. the Kac teacher and the EDM / DDPM baselines: same network, data, batch, steps, optimizer
$TRAIN --method kac --out "$RUNS/kac" & $TRAIN --method edm --out "$RUNS/edm"; wait
# 2. DistillKac 100 -> 20 -> 4 -> 2 -> 1 (forward-noised start points), the DDPM baseline beside it
$DISTILL --teacher "$RUNS/kac" --out "$RUNS/distill" --schedule 100 20 4 2 1 \
    --steps-per-stage 200 300 500 600 --guidance 1.5 &
$TRAIN --method ddpm --out "$RUNS/ddpm"; wait
# 3. one stage 100 -> 1 on the same wall-clock budget as the four stages, and the start-point
#    comparison (teacher roll-outs instead of forward noising) from the 20-step student on
$DISTILL --teacher "$RUNS/kac" --out "$RUNS/single" --schedule 100 1 --steps-per-stage 110 --guidance 1.5 &
$DISTILL --teacher "$RUNS/distill/stage-1-20" --out "$RUNS/rollout" --schedule 20 4 2 1 \
    --steps-per-stage 300 500 600 --start rollout; wait
# 4. every row of the table (one thread per job), the plots, the shipped files
$EVAL --rows data kac-teacher-euler-100 kac-teacher-ab2-100 kac-teacher-euler-4 kac-teacher-euler-1 \
    distillkac-20 distillkac-4 distillkac-2 distillkac-1 single-stage-1 rollout-4 rollout-2 rollout-1 &
$EVAL --rows ddpm-1000 edm-heun-35 edm-euler-4 edm-euler-2 edm-euler-1 ddim-100 ddim-20 ddim-4; wait
python "$HERE/benchmarks/mnist_results.py" report --results "$RUNS/results.jsonl" --plot "$HERE/docs/quality_vs_nfe.png"
python "$HERE/benchmarks/stability.py" --runs "$RUNS" --out "$HERE/docs/stability.png" --json "$HERE/docs/stability.json"
kacfast export --ckpt "$RUNS/kac" --out "$HERE/kacfast/pretrained/mnist16-kac-teacher.safetensors"
kacfast export --ckpt "$RUNS/distill/stage-4-1" --out "$HERE/kacfast/pretrained/mnist16-distillkac-1step.safetensors"
