#!/usr/bin/env bash
# The paper's CIFAR-10 recipe (DistillKac, kac-math.md sections 5 and 8) on GPUs under torchrun:
#   teacher  unet-cifar10 (35.75M parameters), a=9, c=3, T=1, batch 128, Adam 2e-4, grad clip 1,
#            EMA 0.9999, label dropout 0.1, 400k steps
#   distill  100 -> 20 -> 4 -> 2 -> 1, guided AB-2 teacher (guidance 1.2), forward-noised starts
#   score    kacfast eval: 3 seeds x 10k samples against the rest of the training set, both
#            classifier judges and Inception FID with a local weights file
#            (pip install 'kacfast[fid]'; no download): the teacher at 100 AB-2 steps, each student
#
#   KACFAST_DATA=/data NPROC=8 INCEPTION_WEIGHTS=/w/weights-inception-2015-12-05-6726825d.pth \
#       bash benchmarks/experiments/cifar10_paper.sh RUNS
# CIFAR-10 must be at $KACFAST_DATA/cifar-10-batches-py (python -c "from kacfast.data import
# load_dataset; load_dataset('cifar10', download=True)" fetches it, with torchvision and a network).
# Every size below can be overridden from the environment; tests/test_cifar10_preset.py runs this
# script at a tiny size on one CPU process (gloo) as a smoke test. Re-running with RESUME=1 continues
# interrupted runs from their checkpoints. INCEPTION_WEIGHTS is torch-fidelity's Inception file.
set -euo pipefail
RUNS=${1:?usage: cifar10_paper.sh RUNS_DIR}
NPROC=${NPROC:-8}
TEACHER_STEPS=${TEACHER_STEPS:-400000}
STAGE_STEPS=${STAGE_STEPS:-"20000 20000 20000 20000"}
BATCH=${BATCH:-128}
N_EVAL=${N_EVAL:-10000}  # per seed (3 seeds); the reference is the rest of the training split
GUIDANCE=${GUIDANCE:-1.2}
EVAL_STEPS=${EVAL_STEPS:-100}  # the teacher's AB-2 steps when scored
THREADS=${THREADS:-0}
SAMPLE_EVERY=${SAMPLE_EVERY:-10000}  # preview grids
resume_flag() {  # --resume when RESUME=1 and the run has a checkpoint to continue
    if [ "${RESUME:-0}" = 1 ] && [ -n "$(find "$1" -name checkpoint.safetensors 2>/dev/null | head -1)" ]; then
        echo --resume
    fi
}
KAC="torchrun --standalone --nproc_per_node=$NPROC -m kacfast"

$KAC train --data cifar10 --model unet-cifar10 --method kac --a 9 --c 3 --T 1 \
    --steps "$TEACHER_STEPS" --batch-size "$BATCH" --lr 2e-4 --ema-decay 0.9999 --label-dropout 0.1 \
    --threads "$THREADS" --sample-every "$SAMPLE_EVERY" --out "$RUNS/teacher" --quiet $(resume_flag "$RUNS/teacher")
# shellcheck disable=SC2086  # STAGE_STEPS is a list
$KAC distill --teacher "$RUNS/teacher" --out "$RUNS/distill" --schedule 100 20 4 2 1 \
    --steps-per-stage $STAGE_STEPS --batch-size "$BATCH" --lr 1e-4 --guidance "$GUIDANCE" \
    --teacher-solver ab2 --threads "$THREADS" --sample-every "$SAMPLE_EVERY" --quiet \
    $(resume_flag "$RUNS/distill")

EXTRA=(--classifier-steps "${CLASSIFIER_STEPS:-8000}")
if [ -n "${INCEPTION_WEIGHTS:-}" ]; then EXTRA+=(--inception-weights "$INCEPTION_WEIGHTS"); fi
eval_run() {  # checkpoint, steps, solver, guidance
    kacfast eval --ckpt "$1" --steps "$2" --solver "$3" --guidance "$4" --n "$N_EVAL" --quiet --format json \
        --reference train "${EXTRA[@]}" > "$1/eval-$2-$3.jsonl"
}
eval_run "$RUNS/teacher" "$EVAL_STEPS" ab2 "$GUIDANCE"
for stage in stage-1-20 stage-2-4 stage-3-2 stage-4-1; do
    eval_run "$RUNS/distill/$stage" "${stage##*-}" euler 1
done
cat "$RUNS"/teacher/eval-*.jsonl "$RUNS"/distill/*/eval-*.jsonl
