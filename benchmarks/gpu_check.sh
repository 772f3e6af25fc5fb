#!/usr/bin/env bash
# One GPU check, planned for under 9 minutes on one H200 (2026-11-28: build 77 s, CUDA tests 58 s,
# Triton-on-GPU tests 28 s; every stage is capped, and all of them by DEADLINE): build the CUDA
# extension; run the CUDA tests (ops, the CUDA-graph seed tensor); the end-to-end speed rows
# (benchmarks/gpu_speed.py: 1-step sampler vs the network's own forward per precision, 50,000
# CIFAR-sized samples, training images/s); the Triton-on-GPU tests; the compiled / CUDA-graph /
# bf16 sampling tests; with KERNEL_ROWS=1 also the kernel rows (benchmarks/gpu_bench.py). Results land in $OUT (default
# ./gpu-results); each stage has its own time limit so a hang in one keeps the others' results.
#   bash benchmarks/gpu_check.sh            (from the repository root, on the GPU machine)
# The machine has torch, triton and pytest but no network. pyproject's SPDX license string needs
# setuptools >= 77 (the H200 image had 81); with an older one the build fails and its log says so.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
stage() { echo "[$(date +%T)] $*" | tee -a "$OUT/timing.txt"; }

stage "start"
{ nvidia-smi; python3 -c "import torch, triton, setuptools; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'triton', triton.__version__, 'setuptools', setuptools.__version__)"; } \
  > "$OUT/env.txt" 2>&1
tail -1 "$OUT/env.txt"

# torch finds CUDA through nvcc's folder; a wrapper nvcc outside the toolkit would hide its headers.
if [ -z "${CUDA_HOME:-}" ] && [ -f /usr/local/cuda/include/cuda_runtime.h ]; then
  export CUDA_HOME=/usr/local/cuda
fi
# Build with the system compiler when there is one: on the H200 image the first g++ on PATH
# (/opt/gcc/bin/g++, a wrapper) gave an extension whose C++ exceptions crash the process
# (segfault at the first TORCH_CHECK); /usr/bin/g++ (the GCC 13.3 torch was built with) does not.
if [ -x /usr/bin/g++ ] && [ -z "${CXX:-}" ]; then
  export CXX=/usr/bin/g++ CC=/usr/bin/gcc
fi
# In-place build (no wheel, no editable-install machinery): the tests import kacfast from here.
KACFAST_FORCE_CUDA=1 timeout 200 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
  || { echo "build failed: see $OUT/build.log"; tail -40 "$OUT/build.log"; exit 1; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
stage "built"
python3 -c "from kacfast.ops import _ext; assert _ext.has_cuda(), _ext.why_unavailable(); print('CUDA kernels loaded')"

# Each stage runs for at most its own limit and at most what is left before DEADLINE (seconds since
# the script started; the device tool stops a command at 600 s), most important first: the CUDA
# tests, the speed rows, the Triton tests, then the compiled-sampler tests (four cold compiles).
DEADLINE=${DEADLINE:-540}
limited() {  # limited SECONDS CMD...: CMD under timeout min(SECONDS, time left), or skipped
  local budget=$(( DEADLINE - SECONDS )); [ "$1" -lt "$budget" ] && budget=$1; shift
  if [ "$budget" -lt 10 ]; then echo "skipped (deadline): $*"; return 124; fi
  timeout "$budget" "$@"
}

limited 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_ops_api.py \
  > "$OUT/tests_cuda.txt" 2>&1
tail -3 "$OUT/tests_cuda.txt"
stage "cuda tests done"

limited 270 python3 benchmarks/gpu_speed.py --out "$OUT" > "$OUT/gpu_speed.log" 2>&1
tail -50 "$OUT/gpu_speed.log"
stage "speed benchmarks done"

limited 60 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gpu.py \
  > "$OUT/tests_triton_gpu.txt" 2>&1
tail -3 "$OUT/tests_triton_gpu.txt"
stage "triton gpu tests done"

limited 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_speed.py \
  > "$OUT/tests_cuda_speed.txt" 2>&1
tail -3 "$OUT/tests_cuda_speed.txt"
stage "compiled-sampler tests done"

# kernel rows (measured 2026-11-28, docs/gpu/): KERNEL_ROWS=1 measures them again (+2 minutes)
if [ "${KERNEL_ROWS:-0}" = 1 ]; then
  limited 120 python3 benchmarks/gpu_bench.py --out "$OUT" > "$OUT/gpu_bench.log" 2>&1
  tail -25 "$OUT/gpu_bench.log"
  stage "kernel benchmarks done"
fi
