#!/usr/bin/env bash
# The MNIST-5k (16x16) results of the README, end to end, on a 2-core CPU (trainings about 2.5 hours
# of wall time, each job on one thread, two side by side where the order allows; the scores under
# the quality protocol add about 40 minutes per 100-step sampler swept over 4 guidance values).
#   bash benchmarks/experiments/mnist_pipeline.sh RUNS_DIR
# Writes RUNS_DIR/{kac,edm,ddpm,distill,single,rollout,kac-diffusers,distill-w1.25,adversarial-w1.25,
# rollout-w1.25,distill-w1.25-huber,distill-w1.25-features,flowmap-w1.25,adversarial0.3-w1.25,
# adversarial-huber-w1.25{,-1200,-2400,-4800},kac-logit-normal{,-seed1},kac-uniform-{3600,7200,seed1},ddpm-v,
# distill-w1.25-huber-logit,adversarial-huber-w1.25-logit{,-1200,-2400,-4800}},
# RUNS_DIR/results.jsonl, heldout.jsonl, grids/,
# docs/quality_vs_nfe.png, docs/stability.png and the two shipped model files.
set -euo pipefail
RUNS=${1:?usage: mnist_pipeline.sh RUNS_DIR}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TRAIN="kacfast train --data mnist5k16 --model unet-tiny --steps 3600 --batch-size 64 --lr 5e-4 --threads 1 --quiet"
DISTILL="kacfast distill --batch-size 64 --lr 2e-4 --threads 1 --quiet"
EVAL="python $HERE/benchmarks/experiments/mnist_results.py run --runs $RUNS --out $RUNS/results.jsonl --grids $RUNS/grids --threads 1 --compile"

# 1. the Kac teacher and the EDM / DDPM baselines: same network, data, batch, steps, optimizer
rm -f "$RUNS/distill.done"
python -c "from kacfast.metrics import load_judges; load_judges('mnist5k16')"  # both judges (shipped; trained and cached once if not)
$TRAIN --method kac --out "$RUNS/kac" & KAC=$!
$TRAIN --method edm --out "$RUNS/edm"
wait $KAC
# 2. core A: DistillKac 100 -> 20 -> 4 -> 2 -> 1 (forward-noised start points); one stage
#    100 -> 1 on about the same wall-clock budget; the start-point comparison: stages 4 -> 2 -> 1
#    again from the 4-step student with teacher roll-out starts (the one stage where the two differ
#    cheaply: 2 -> 1 starts from the prior either way); then their table rows.
(
  $DISTILL --teacher "$RUNS/kac" --out "$RUNS/distill" --schedule 100 20 4 2 1 \
      --steps-per-stage 200 300 500 600 --guidance 1.5
  touch "$RUNS/distill.done"
  $DISTILL --teacher "$RUNS/kac" --out "$RUNS/single" --schedule 100 1 --steps-per-stage 80 --warmup 10 \
      --guidance 1.5
  $DISTILL --teacher "$RUNS/distill/stage-2-4" --out "$RUNS/rollout" --schedule 4 2 1 \
      --steps-per-stage 500 600 --start rollout
  $EVAL --rows single-stage-1 rollout-2 rollout-1
) &
CORE_A=$!
# 3. core B: the DDPM baseline, the teacher's and baselines' rows, then the students' rows
$TRAIN --method ddpm --out "$RUNS/ddpm"
$EVAL --rows data kac-teacher-euler-100 kac-teacher-ab2-100 kac-teacher-euler-4 kac-teacher-euler-1 \
    edm-heun-35 edm-euler-4 edm-euler-2 edm-euler-1 ddim-100 ddim-20 ddim-4
# DDPM's 1,000 steps on 250 samples per seed at w = 1.25, with the teacher and the data at the same size
python "$HERE/benchmarks/experiments/mnist_results.py" run --runs "$RUNS" --out "$RUNS/results_n250.jsonl" \
    --grids "$RUNS/grids250" --n 250 --guidance 1.25 --threads 1 --rows data ddpm-1000 kac-teacher-euler-100
while [ ! -f "$RUNS/distill.done" ]; do
    kill -0 $CORE_A 2>/dev/null || { echo "distillation failed: see above" >&2; exit 1; }
    sleep 10
done
$EVAL --rows distillkac-20 distillkac-4 distillkac-2 distillkac-1
wait $CORE_A
# 4. the same teacher recipe on a diffusers UNet2DModel of the same size, and a student that absorbs
#    the teacher's best guidance of the sweep (1.25) instead of 1.5
$TRAIN --method kac --model diffusers-unet-tiny --out "$RUNS/kac-diffusers" & DIFFUSERS=$!
$DISTILL --teacher "$RUNS/kac" --out "$RUNS/distill-w1.25" --schedule 100 20 4 2 1 \
    --steps-per-stage 200 300 500 600 --guidance 1.25
wait $DIFFUSERS  # a job's failure stops the script (a bare `wait` would return 0)
# 5. the 1-step ablations on that chain: its last stage again (same seed: stage 4 was seed 0 + 4)
#    with the adversarial term (shipped until 2026-12-01), with teacher roll-out starts from its 4-step
#    student, and the whole chain with the pseudo-Huber and the random-feature distances
$DISTILL --teacher "$RUNS/distill-w1.25/stage-3-2" --out "$RUNS/adversarial-w1.25" --schedule 2 1 \
    --steps-per-stage 600 --seed 3 --objective endpoint-l2-adversarial & ADVERSARIAL=$!
$DISTILL --teacher "$RUNS/distill-w1.25/stage-2-4" --out "$RUNS/rollout-w1.25" --schedule 4 2 1 \
    --steps-per-stage 500 600 --start rollout
wait $ADVERSARIAL
$DISTILL --teacher "$RUNS/kac" --out "$RUNS/distill-w1.25-huber" --schedule 100 20 4 2 1 \
    --steps-per-stage 200 300 500 600 --guidance 1.25 --objective endpoint-pseudo-huber & HUBER=$!
$DISTILL --teacher "$RUNS/kac" --out "$RUNS/distill-w1.25-features" --schedule 100 20 4 2 1 \
    --steps-per-stage 200 300 500 600 --guidance 1.25 --objective endpoint-random-features
wait $HUBER
# 6. one flow-map student instead of the chain (its 1,600 steps in one stage; scored at 4, 2 and 1
#    steps), and the adversarial last stage with 3x the GAN weight
$DISTILL --teacher "$RUNS/kac" --out "$RUNS/flowmap-w1.25" --schedule 100 1 --steps-per-stage 1600 \
    --guidance 1.25 --objective flow-map & FLOWMAP=$!
$DISTILL --teacher "$RUNS/distill-w1.25/stage-3-2" --out "$RUNS/adversarial0.3-w1.25" --schedule 2 1 \
    --steps-per-stage 600 --seed 3 --objective endpoint-l2-adversarial \
    --objective-option adversarial_weight=0.3
source "$HERE/benchmarks/experiments/adversarial_stage.sh"
# on the pseudo-Huber chain (its 4,800-step run was the shipped student until the logit-normal pair)
adversarial_stage distill-w1.25-huber adversarial-huber-w1.25 1200 2400 4800
# teacher levers (one change each to the teacher's recipe): logit-normal training times; the recipe
# retrained (it reproduces kac/ to float rounding) and continued to twice its steps; training seed 1
$TRAIN --method kac --time-distribution logit-normal --out "$RUNS/kac-logit-normal"
$TRAIN --method kac --out "$RUNS/kac-uniform-3600"
cp -r "$RUNS/kac-uniform-3600" "$RUNS/kac-uniform-7200"
${TRAIN/--steps 3600/--steps 7200} --method kac --out "$RUNS/kac-uniform-7200" --resume
$TRAIN --method kac --seed 1 --out "$RUNS/kac-uniform-seed1"
$TRAIN --method kac --time-distribution logit-normal --seed 1 --out "$RUNS/kac-logit-normal-seed1"
# on the logit-normal recipe: Kac input / output preconditioning; the target loss weighting
$TRAIN --method kac --time-distribution logit-normal --precondition kac --out "$RUNS/kac-logit-normal-precond"
$TRAIN --method kac --time-distribution logit-normal --loss-weighting target --out "$RUNS/kac-logit-normal-weighted"
# the EMA length: the preconditioned recipe again, keeping four power-function EMAs beside its
# exponential one (which reproduces kac-logit-normal-precond/ bit for bit)
$TRAIN --method kac --time-distribution logit-normal --precondition kac --ema-lengths 0.05 0.1 0.15 0.2 \
    --out "$RUNS/kac-logit-normal-precond-ema"
# the shipped student's recipe on the preconditioned teacher (the adversarial stage to 2,400 steps)
$DISTILL --teacher "$RUNS/kac-logit-normal-precond" --out "$RUNS/distill-w1.25-huber-logit-precond" \
    --schedule 100 20 4 2 --steps-per-stage 200 300 500 --guidance 1.25 --objective endpoint-pseudo-huber
adversarial_stage distill-w1.25-huber-logit-precond adversarial-huber-w1.25-logit-precond 1200 2400
# that student's recipe on the logit-normal teacher, its adversarial stage by doublings (the
# teacher and the 9,600-step stage are the shipped pair)
$DISTILL --teacher "$RUNS/kac-logit-normal" --out "$RUNS/distill-w1.25-huber-logit" --schedule 100 20 4 2 \
    --steps-per-stage 200 300 500 --guidance 1.25 --objective endpoint-pseudo-huber
adversarial_stage distill-w1.25-huber-logit adversarial-huber-w1.25-logit 1200 2400 4800 9600
$EVAL --guidance 1.25 --rows kac-teacher-euler-100 kac-logit-normal-euler-100 kac-uniform-3600-euler-100 \
    kac-uniform-7200-euler-100 kac-uniform-seed1-euler-100 distillkac-1-w1.25-huber-adversarial-logit \
    distillkac-1-w1.25-huber-adversarial-logit-1200 distillkac-1-w1.25-huber-adversarial-logit-2400 \
    distillkac-1-w1.25-huber-adversarial-logit-4800 distillkac-1-w1.25-huber-adversarial-logit-9600
$EVAL --guidance 1 1.5 2 --rows kac-logit-normal-euler-100
$EVAL --guidance 1.25 --rows kac-logit-normal-seed1-euler-100
# the DDPM baseline predicting v (its x0 estimate stays bounded at high noise), its DDIM rows
$TRAIN --method ddpm --prediction v_prediction --out "$RUNS/ddpm-v"
python "$HERE/benchmarks/experiments/ddpm_error.py" --run "$RUNS/ddpm-v" > "$RUNS/ddpm-v-timestep-error.jsonl"
$EVAL --guidance 1 1.25 1.5 2 --rows ddim-v-4 ddim-v-trailing-4
$EVAL --guidance 1.25 1.5 --rows ddim-v-trailing-2 ddim-v-trailing-1 ddim-v-20
$EVAL --guidance 1.25 --rows ddim-v-100
$EVAL --guidance 1.25 --rows kac-logit-normal-precond-euler-100 kac-logit-normal-weighted-euler-100 \
    kac-logit-normal-ab2-100 kac-logit-normal-midpoint-50 kac-logit-normal-heun-50 \
    distillkac-1-w1.25-huber-adversarial-logit-precond distillkac-1-w1.25-huber-adversarial-logit-precond-1200 \
    distillkac-1-w1.25-huber-adversarial-logit-precond-2400 kac-logit-normal-precond-ema0.05-euler-100 \
    kac-logit-normal-precond-ema0.1-euler-100 kac-logit-normal-precond-ema0.15-euler-100 \
    kac-logit-normal-precond-ema0.2-euler-100 kac-logit-normal-quadratic-euler-100
wait $FLOWMAP
$EVAL --rows kac-diffusers-euler-100 distillkac-20-w1.25 distillkac-4-w1.25 distillkac-2-w1.25 \
    distillkac-1-w1.25 rollout-2-w1.25 rollout-1-w1.25 distillkac-1-w1.25-huber \
    distillkac-1-w1.25-features distillkac-1-w1.25-adversarial distillkac-1-w1.25-adversarial0.3 \
    distillkac-1-w1.25-huber-adversarial distillkac-1-w1.25-huber-adversarial-1200 \
    distillkac-1-w1.25-huber-adversarial-2400 distillkac-1-w1.25-huber-adversarial-4800 \
    flowmap-4-w1.25 flowmap-2-w1.25 flowmap-1-w1.25
python "$HERE/benchmarks/experiments/mnist_results.py" run --runs "$RUNS" --out "$RUNS/heldout.jsonl" \
    --grids "$RUNS/grids-heldout" --reference test --threads 1 --compile --guidance 1.25 --rows data \
    kac-teacher-euler-100 edm-heun-35 distillkac-1 distillkac-20-w1.25 distillkac-4-w1.25 distillkac-2-w1.25 \
    distillkac-1-w1.25 distillkac-1-w1.25-huber distillkac-1-w1.25-features distillkac-1-w1.25-adversarial \
    distillkac-1-w1.25-huber-adversarial distillkac-1-w1.25-huber-adversarial-4800 edm-euler-4 ddim-4 \
    distillkac-1-w1.25-huber-adversarial-logit-9600
python "$HERE/benchmarks/experiments/mnist_results.py" report --results "$RUNS/results.jsonl" --plot "$HERE/docs/quality_vs_nfe.png"
python "$HERE/benchmarks/experiments/mnist_results.py" report --results "$RUNS/results_n250.jsonl"
python "$HERE/benchmarks/experiments/mnist_results.py" speed --runs "$RUNS" --n 200 --repeats 3 --threads 2 \
    --rows distillkac-1 distillkac-2 distillkac-4 edm-euler-4 ddim-4 edm-heun-35
python "$HERE/benchmarks/experiments/mnist_results.py" speed --runs "$RUNS" --n 100 --repeats 1 --threads 2 \
    --rows distillkac-1 distillkac-20 edm-euler-2 edm-euler-1 kac-teacher-euler-100 kac-teacher-ab2-100 \
    ddim-100 ddim-20 ddpm-1000 edm-heun-35
python "$HERE/benchmarks/experiments/stability.py" --runs "$RUNS" --out "$HERE/docs/stability.png" --json "$HERE/docs/stability.json"
kacfast export --ckpt "$RUNS/kac-logit-normal" --out "$HERE/kacfast/pretrained/mnist16-kac-teacher.safetensors"
# the 9,600-step student, one 500-step cycle against itself with the samples clamped (clamped=1)
$DISTILL --teacher "$RUNS/adversarial-huber-w1.25-logit-9600/stage-1-1" --schedule 1 1 \
    --out "$RUNS/adversarial-finetune-clamped-dwarm100adv1-cosine-1.5e-4" --steps-per-stage 500 --warmup 50 --seed 3 \
    --objective endpoint-l2-adversarial --objective-option adversarial_weight=1 \
    --objective-option discriminator_warmup=100 --objective-option clamped=1 --lr 1.5e-4 --lr-schedule cosine --resume
kacfast export --ckpt "$RUNS/adversarial-finetune-clamped-dwarm100adv1-cosine-1.5e-4/stage-1-1" \
    --out "$HERE/kacfast/pretrained/mnist16-distillkac-1step.safetensors"
python "$HERE/benchmarks/experiments/student_loss_share.py" --runs "$RUNS"
