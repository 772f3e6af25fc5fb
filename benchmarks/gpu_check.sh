#!/usr/bin/env bash
# One GPU check, under 8 minutes on one H200: build the CUDA extension, run the CUDA tests on the
# GPU (Triton runs on the GPU inside gpu_bench.py: bit-identity and speed), run the GPU benchmarks.
# Everything lands in $OUT (default ./gpu-results).
#   bash benchmarks/gpu_check.sh            (from the repository root, on the GPU machine)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$OUT/env.txt" 2>&1

# The image has torch, triton and pytest but no network: build in place, no dependency resolution.
start=$(date +%s)
KACFAST_FORCE_CUDA=1 python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { echo "build failed: see $OUT/build.log"; tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s" | tee "$OUT/timing.txt"
python3 -c "from kacfast.ops import _ext; assert _ext.has_cuda(), _ext.why_unavailable(); print('CUDA kernels loaded')"

start=$(date +%s)
python3 -m pytest -q tests/test_cuda.py tests/test_sampling.py tests/test_ops_api.py \
  -p no:cacheprovider 2>&1 | tee "$OUT/tests_cuda.txt" | tail -5
echo "tests: $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"

start=$(date +%s)
python3 benchmarks/gpu_bench.py --out "$OUT" 2>&1 | tee "$OUT/gpu_bench.log" | tail -40
echo "benchmarks: $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"
