#!/usr/bin/env bash
# The MNIST-5k comparison at full resolution (28x28, `mnist5k`): the Kac teacher, the EDM and DDPM
# baselines and the DistillKac students, with the 16x16 pipeline's recipe (same network preset,
# steps, batch, optimizer) and scored under the quality protocol (both judges, 3 seeds x 1,000).
#   bash benchmarks/experiments/mnist28_pipeline.sh RUNS_DIR [GUIDANCE_ABSORBED]
# Every step resumes: a training or distillation killed at any point continues bit-identically from
# its last checkpoint when the script is run again, and scored rows are not scored twice. On a
# 2-core CPU (one thread per job, two jobs side by side) a 28x28 training takes about 3x its 16x16
# run: about 70 minutes alone, 90-100 beside another job.
# Writes RUNS_DIR/{kac,edm,ddpm,ddpm-v,distill,kac-logit-normal-seed1},
# RUNS_DIR/kac-logit-normal-precond{,-seed1}, the
# preconditioned teacher's chain (distill-w1.25-huber-logit-precond,
# adversarial-huber-w1.25-logit-precond{,-1200,-2400,-4800}), the logit-normal teacher's
# chain (kac-logit-normal, distill-w1.25-huber-logit, adversarial-huber-w1.25-logit,
# adversarial-finetune-cosine-LR, adversarial-finetune2-cosine-1.5e-4,
# adversarial-finetune3adv0.4-cosine-1.5e-4),
# RUNS_DIR/results.jsonl, RUNS_DIR/grids/,
# RUNS_DIR/ddpm{,-v}-timestep-error.jsonl and the two shipped 28x28 model files.
set -euo pipefail
RUNS=${1:?usage: mnist28_pipeline.sh RUNS_DIR [GUIDANCE_ABSORBED]}
W=${2:-1.25}  # the guidance the students absorb (the 16x16 sweep's best for the Kac teacher)
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TRAIN="kacfast train --data mnist5k --model unet-tiny --steps 3600 --batch-size 64 --lr 5e-4 --threads 1 --quiet"
DISTILL="kacfast distill --batch-size 64 --lr 2e-4 --threads 1 --quiet"
EVAL="python $HERE/benchmarks/experiments/mnist_results.py run --data mnist5k --runs $RUNS
      --out $RUNS/results.jsonl --grids $RUNS/grids --threads 1 --compile"
resume() { [ -f "$1/checkpoint.safetensors" ] && echo --resume || true; }
source "$HERE/benchmarks/experiments/adversarial_stage.sh"

mkdir -p "$RUNS"
python -c "from kacfast.metrics import load_judges; load_judges('mnist5k')"  # both judges (shipped; trained and cached once if not)
# 1. three chains side by side, one thread each: the Kac teacher then its distillation, the EDM
#    then the DDPM baseline, and the logit-normal teacher then its distillation (no chain waits for
#    another, so no core idles between steps; on 2 cores each runs at about 2/3 speed)
( $TRAIN --method kac --out "$RUNS/kac" $(resume "$RUNS/kac")
  $DISTILL --teacher "$RUNS/kac" --out "$RUNS/distill" --schedule 100 20 4 2 1 \
      --steps-per-stage 200 300 500 600 --guidance "$W" --resume
  # the logit-normal teacher's recipe again with another training seed (the spread between trainings)
  $TRAIN --method kac --time-distribution logit-normal --seed 1 --out "$RUNS/kac-logit-normal-seed1" \
      $(resume "$RUNS/kac-logit-normal-seed1")
  # the same recipe with Kac input / output preconditioning (the 16x16 lever that helped on cnn)
  $TRAIN --method kac --time-distribution logit-normal --precondition kac \
      --out "$RUNS/kac-logit-normal-precond" $(resume "$RUNS/kac-logit-normal-precond")
  # ... and its second training seed
  $TRAIN --method kac --time-distribution logit-normal --precondition kac --seed 1 \
      --out "$RUNS/kac-logit-normal-precond-seed1" $(resume "$RUNS/kac-logit-normal-precond-seed1")
  # the shipped student's chain and adversarial stage (to 4,800 steps) on the preconditioned teacher
  $DISTILL --teacher "$RUNS/kac-logit-normal-precond" --out "$RUNS/distill-w1.25-huber-logit-precond" \
      --schedule 100 20 4 2 --steps-per-stage 200 300 500 --guidance "$W" --objective endpoint-pseudo-huber --resume
  adversarial_stage distill-w1.25-huber-logit-precond adversarial-huber-w1.25-logit-precond 1200 2400 4800
  ) & KAC_CHAIN=$!
( $TRAIN --method edm --out "$RUNS/edm" $(resume "$RUNS/edm")
  $TRAIN --method ddpm --out "$RUNS/ddpm" $(resume "$RUNS/ddpm")
  # DDPM at its best: the same budget predicting v, whose x0 estimate stays bounded at t = 999
  $TRAIN --method ddpm --prediction v_prediction --out "$RUNS/ddpm-v" $(resume "$RUNS/ddpm-v") ) & BASELINES=$!
( $TRAIN --method kac --time-distribution logit-normal --out "$RUNS/kac-logit-normal" \
      $(resume "$RUNS/kac-logit-normal")
  # the shipped 16x16 student's recipe on it: pseudo-Huber chain, then the adversarial last stage
  $DISTILL --teacher "$RUNS/kac-logit-normal" --out "$RUNS/distill-w1.25-huber-logit" --schedule 100 20 4 2 \
      --steps-per-stage 200 300 500 --guidance "$W" --objective endpoint-pseudo-huber --resume
  # (600 steps, then doubled to 1,200, 2,400 and 4,800: at 16x16 every doubling to 9,600 steps still gained)
  adversarial_stage distill-w1.25-huber-logit adversarial-huber-w1.25-logit 1200 2400 4800
  # the 4,800-step student, 900 more steps of the same objective against its own samples (1 -> 1),
  # the LR on a cosine to 0; then the 1.5e-4 one a second cycle of 500 steps, and that one a third
  # of 500 steps with adversarial weight 0.4 (the shipped student)
  for lr in 5e-5 1.5e-4; do
    $DISTILL --teacher "$RUNS/adversarial-huber-w1.25-logit-4800/stage-1-1" --schedule 1 1 \
        --out "$RUNS/adversarial-finetune-cosine-$lr" --steps-per-stage 900 --seed 3 \
        --objective endpoint-l2-adversarial --lr "$lr" --lr-schedule cosine --resume
  done
  $DISTILL --teacher "$RUNS/adversarial-finetune-cosine-1.5e-4/stage-1-1" --schedule 1 1 \
      --out "$RUNS/adversarial-finetune2-cosine-1.5e-4" --steps-per-stage 500 --warmup 50 --seed 3 \
      --objective endpoint-l2-adversarial --lr 1.5e-4 --lr-schedule cosine --threads 2 --resume
  $DISTILL --teacher "$RUNS/adversarial-finetune2-cosine-1.5e-4/stage-1-1" --schedule 1 1 \
      --out "$RUNS/adversarial-finetune3adv0.4-cosine-1.5e-4" --steps-per-stage 500 --warmup 50 --seed 3 \
      --objective endpoint-l2-adversarial --objective-option adversarial_weight=0.4 --lr 1.5e-4 \
      --lr-schedule cosine --resume ) & LOGIT_CHAIN=$!
wait $KAC_CHAIN
wait $BASELINES
wait $LOGIT_CHAIN
# 2. the table: the floor, the teacher and baselines swept over guidance, the students
$EVAL --rows data kac-teacher-euler-100 edm-heun-35 edm-euler-4 ddim-20 ddim-4 ddim-trailing-4 ddim-clip-4 \
    ddim-trailing-clip-4 kac-teacher-euler-4 distillkac-20 distillkac-4 distillkac-2 distillkac-1
# where the DDPM network errs: its x0 estimate per timestep against the class mean, on held-out digits
python "$HERE/benchmarks/experiments/ddpm_error.py" --run "$RUNS/ddpm" > "$RUNS/ddpm-timestep-error.jsonl"
python "$HERE/benchmarks/experiments/ddpm_error.py" --run "$RUNS/ddpm-v" > "$RUNS/ddpm-v-timestep-error.jsonl"
$EVAL --rows ddim-v-4 ddim-v-trailing-4
$EVAL --guidance 1.25 1.5 --rows ddim-v-20 ddim-v-trailing-2 ddim-v-trailing-1
# the logit-normal teacher (the 16x16 lever that won) and its student, at the teacher's sweep
$EVAL --rows kac-logit-normal-euler-100
$EVAL --guidance 1.25 --rows kac-logit-normal-midpoint-50  # the same 100 network calls
$EVAL --rows distillkac-1-w1.25-huber-adversarial-logit distillkac-1-w1.25-huber-adversarial-logit-1200 \
    distillkac-1-w1.25-huber-adversarial-logit-2400 distillkac-1-w1.25-huber-adversarial-logit-4800 \
    distillkac-1-w1.25-huber-adversarial-logit-finetune-5e-5 distillkac-1-w1.25-huber-adversarial-logit-finetune-1.5e-4 \
    distillkac-1-w1.25-huber-adversarial-logit-finetune2-1.5e-4 \
    distillkac-1-w1.25-huber-adversarial-logit-finetune3adv0.4-1.5e-4 \
    distillkac-20-w1.25-huber-logit distillkac-4-w1.25-huber-logit \
    distillkac-2-w1.25-huber-logit
# the spread between trainings of the shipped teacher's recipe (its --seed 1 run: the first chain),
# and the preconditioned recipe
$EVAL --guidance 1.25 --rows kac-logit-normal-seed1-euler-100 kac-logit-normal-precond-euler-100
$EVAL --guidance 1.5 --rows kac-logit-normal-precond-euler-100
$EVAL --guidance 1.25 --rows kac-logit-normal-precond-seed1-euler-100
$EVAL --rows distillkac-20-w1.25-huber-logit-precond distillkac-4-w1.25-huber-logit-precond \
    distillkac-2-w1.25-huber-logit-precond distillkac-1-w1.25-huber-adversarial-logit-precond \
    distillkac-1-w1.25-huber-adversarial-logit-precond-1200 distillkac-1-w1.25-huber-adversarial-logit-precond-2400 \
    distillkac-1-w1.25-huber-adversarial-logit-precond-4800
python "$HERE/benchmarks/experiments/mnist_results.py" report --results "$RUNS/results.jsonl"
# 3. the shipped 28x28 pair (kacfast/pretrained: mnist28-kac-teacher, mnist28-distillkac-1step)
kacfast export --ckpt "$RUNS/kac-logit-normal" --out "$HERE/kacfast/pretrained/mnist28-kac-teacher.safetensors"
kacfast export --ckpt "$RUNS/adversarial-finetune3adv0.4-cosine-1.5e-4/stage-1-1" \
    --out "$HERE/kacfast/pretrained/mnist28-distillkac-1step.safetensors"
