// Launchers of the CUDA kernels (kac_kernels.cu). Torch-free on purpose: the .cu file then builds
// with plain nvcc (tests/test_cuda.py compiles it on machines whose torch has no CUDA), and the
// torch glue (kac_cuda_glue.cpp) does all the checking, allocation and stream selection.
//
// Pointers are device pointers to contiguous data; n is the element count (n == 0 launches
// nothing). Times (s, t) are always float32; data and outputs have type `dtype`. Each launcher
// returns cudaGetLastError() after the launch.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace kac_cuda {

enum class DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

// v[i] = v_K(s[i / inner], x[i]).
cudaError_t launch_velocity(DType dtype, const void* x, const float* s, void* v, int64_t n,
                            int64_t inner, float a, float c, float eps, cudaStream_t stream);

// Philox (seed, offset) of a noise launch: by value, or, when `device_ptr` is not null, read by
// the kernel from device memory holding int64 [seed, offset] (converted like the values: seed to
// uint64, offset to its low 32 bits). Read at run time, so a captured CUDA graph draws new noise
// once new values are copied there, as torch's own Philox state does under graph capture.
struct SeedOffset {
  uint64_t seed;
  uint32_t offset;
  const int64_t* device_ptr;
};

// x[i] = Kac displacement at time s[i], rate a, speed c; Philox stream (seed, offset, element i).
cudaError_t launch_noise(DType dtype, const float* s, void* x, int64_t n, float a, float c,
                         SeedOffset rng, cudaStream_t stream);

// (x_t[i], u[i]) = flow-matching pair of x0[i] at time t[i / inner].
cudaError_t launch_noise_target(DType dtype, const void* x0, const float* t, void* x_t, void* u,
                                int64_t n, int64_t inner, float a, float c, float T, int clock,
                                float eps, uint64_t seed, uint32_t offset, cudaStream_t stream);

// x_new[i] = x[i] - h (alpha v_mix + beta v_prev[i]), clamped to [-1, 1] if `clamp`, with
// v_mix = v_uncond + w (v_cond - v_uncond) (v_cond alone when v_uncond is null). v_prev and v_mix
// may be null (no history term / v_mix not stored).
cudaError_t launch_guided_step(DType dtype, const void* x, const void* v_cond,
                               const void* v_uncond, const void* v_prev, void* x_new, void* v_mix,
                               int64_t n, float w, float h, float alpha, float beta, bool clamp,
                               cudaStream_t stream);

}  // namespace kac_cuda
