#!/usr/bin/env bash
# The README's 2-D tables (9-mode Gaussian grid) under the quality protocol: the MLP teacher, its
# DistillKac students 100 -> 20 -> 4 -> 2 -> 1 and the teacher at 1 step, each scored by
# `kacfast eval` (3 seeds x 10,000 samples, 95% intervals, the real-vs-real floor row).
#   bash benchmarks/experiments/gmm9_results.sh RUNS_DIR     # trains what RUNS_DIR lacks, then scores
# Writes RUNS_DIR/gmm9-results.jsonl and prints the table.
set -euo pipefail
RUNS=${1:?usage: gmm9_results.sh RUNS_DIR}
EVAL="kacfast eval --n 10000 --seeds 0 1 2 --format json --quiet"
[ -f "$RUNS/gmm9/checkpoint.safetensors" ] || kacfast train --data gmm9 --model mlp --steps 15000 \
    --batch-size 512 --lr 1e-3 --warmup 200 --unconditional --out "$RUNS/gmm9" --ckpt-every 5000 --quiet
[ -f "$RUNS/gmm9-student/stage-4-1/checkpoint.safetensors" ] || kacfast distill --teacher "$RUNS/gmm9" \
    --out "$RUNS/gmm9-student" --schedule 100 20 4 2 1 --steps-per-stage 1500 --batch-size 512 --lr 1e-3 --quiet
OUT="$RUNS/gmm9-results.jsonl"
rm -f "$OUT"
$EVAL --ckpt "$RUNS/gmm9" --steps 100 >> "$OUT"
for stage in stage-1-20 stage-2-4 stage-3-2 stage-4-1; do
    $EVAL --ckpt "$RUNS/gmm9-student/$stage" | grep -v '"method": "data"' >> "$OUT"
done
$EVAL --ckpt "$RUNS/gmm9" --steps 1 | grep -v '"method": "data"' >> "$OUT"
python -c "
import json, sys
from kacfast.evaluation import format_table
print(format_table([json.loads(line) for line in open(sys.argv[1])]))" "$OUT"
