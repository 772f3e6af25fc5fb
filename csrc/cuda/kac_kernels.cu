// CUDA kernels: one thread per element running the W = 1 lane algorithms of kac_math.h, so each
// element sees exactly the float operations of the CPU kernels (bit-identical with --fmad=false).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../kac_math.h"
#include "kac_kernels.h"

namespace kac_cuda {
namespace {

constexpr int kBlock = 256;
// Grid-stride loops cover any n; this many blocks already fill every SM many times over.
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

// Loads widen exactly; stores round to nearest even, like the CPU's c10 conversions.
__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const double* p, int64_t i) { return (float)p[i]; }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(double* p, int64_t i, float v) { p[i] = (double)v; }
__device__ __forceinline__ void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

__device__ __forceinline__ int64_t first_index() {
  return (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return (int64_t)gridDim.x * blockDim.x; }

template <typename T>
__global__ void __launch_bounds__(kBlock)
    velocity_kernel(const T* __restrict__ x, const float* __restrict__ s, T* __restrict__ v,
                    int64_t n, int64_t inner, float a, float c, float eps) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float si = s[i / inner], xi = load(x, i);
    float vi;
    kac::kac_velocity_lanes<1>(&si, &xi, a, c, eps, &vi);
    store(v, i, vi);
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    noise_kernel(const float* __restrict__ s, T* __restrict__ x, int64_t n, float a, float c,
                 SeedOffset rng) {
  // A null test uniform across the grid: no divergence.
  const uint64_t seed = rng.device_ptr ? (uint64_t)rng.device_ptr[0] : rng.seed;
  const uint32_t offset = rng.device_ptr ? (uint32_t)rng.device_ptr[1] : rng.offset;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float lambda = a * s[i], reach = c * s[i];
    float xi;
    kac::kac_sample_lanes<1>(seed, offset, (uint64_t)i, &lambda, &reach, &xi);
    store(x, i, xi);
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    noise_target_kernel(const T* __restrict__ x0, const float* __restrict__ t,
                        T* __restrict__ x_t, T* __restrict__ u, int64_t n, int64_t inner, float a,
                        float c, float T_end, int clock, float eps, uint64_t seed,
                        uint32_t offset) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float xi = load(x0, i), ti = t[i / inner];
    float xti, ui;
    kac::noise_target_lanes<1>(seed, offset, (uint64_t)i, &xi, &ti, a, c, T_end, clock, eps, &xti,
                               &ui);
    store(x_t, i, xti);
    store(u, i, ui);
  }
}

// Branches on null pointers are uniform across the grid: no divergence.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    guided_step_kernel(const T* __restrict__ x, const T* __restrict__ v_cond,
                       const T* __restrict__ v_uncond, const T* __restrict__ v_prev,
                       T* __restrict__ x_new, T* __restrict__ v_mix, int64_t n, float w, float h,
                       float alpha, float beta, bool clamp) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float vc = load(v_cond, i);
    const float vm = v_uncond ? kac::guided_velocity(vc, load(v_uncond, i), w) : vc;
    const float vp = v_prev ? load(v_prev, i) : 0.0f;
    store(x_new, i, kac::step_position(load(x, i), vm, vp, h, alpha, beta, clamp));
    if (v_mix) store(v_mix, i, vm);
  }
}

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  return (unsigned)(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Calls f(T{}) with the element type of dtype; unknown values report cudaErrorInvalidValue.
template <typename F>
cudaError_t dispatch(DType dtype, const F& f) {
  switch (dtype) {
    case DType::kF32: f(float{}); break;
    case DType::kF64: f(double{}); break;
    case DType::kF16: f(__half{}); break;
    case DType::kBF16: f(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_velocity(DType dtype, const void* x, const float* s, void* v, int64_t n,
                            int64_t inner, float a, float c, float eps, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    velocity_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(
        static_cast<const T*>(x), s, static_cast<T*>(v), n, inner, a, c, eps);
  });
}

cudaError_t launch_noise(DType dtype, const float* s, void* x, int64_t n, float a, float c,
                         SeedOffset rng, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    noise_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(s, static_cast<T*>(x), n, a, c, rng);
  });
}

cudaError_t launch_noise_target(DType dtype, const void* x0, const float* t, void* x_t, void* u,
                                int64_t n, int64_t inner, float a, float c, float T, int clock,
                                float eps, uint64_t seed, uint32_t offset, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto zero) {
    using E = decltype(zero);
    noise_target_kernel<E><<<grid_for(n), kBlock, 0, stream>>>(
        static_cast<const E*>(x0), t, static_cast<E*>(x_t), static_cast<E*>(u), n, inner, a, c, T,
        clock, eps, seed, offset);
  });
}

cudaError_t launch_guided_step(DType dtype, const void* x, const void* v_cond,
                               const void* v_uncond, const void* v_prev, void* x_new, void* v_mix,
                               int64_t n, float w, float h, float alpha, float beta, bool clamp,
                               cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    guided_step_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(v_cond), static_cast<const T*>(v_uncond),
        static_cast<const T*>(v_prev), static_cast<T*>(x_new), static_cast<T*>(v_mix), n, w, h,
        alpha, beta, clamp);
  });
}

}  // namespace kac_cuda
