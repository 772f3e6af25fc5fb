// CPU kernels: at::parallel_for over blocks of kLanes elements; each block runs the lock-step
// algorithms of kac_math.h, which the compiler vectorizes across lanes. The block functions are
// compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time (target_clones).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>

#include "../kac_math.h"
#include "../op_checks.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KAC_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KAC_CPU_CLONES
#endif

namespace {

constexpr int kLanes = 32;  // two AVX-512 vectors per lane loop: hides the division latency
constexpr int64_t kGrain = 4096;  // elements per task: per-element work is 10^2..10^3 flops

KAC_CPU_CLONES void velocity_block(const float* s, const float* x, float a, float c, float eps,
                                   float* v) {
  kac::kac_velocity_lanes<kLanes>(s, x, a, c, eps, v);
}

KAC_CPU_CLONES void noise_block(uint64_t seed, uint32_t offset, uint64_t first, const float* lambda,
                                const float* reach, float* x) {
  kac::kac_sample_lanes<kLanes>(seed, offset, first, lambda, reach, x);
}

KAC_CPU_CLONES void noise_target_block(uint64_t seed, uint32_t offset, uint64_t first,
                                       const float* x0, const float* t, float a, float c, float T,
                                       int clock, float eps, float* x_t, float* u) {
  kac::noise_target_lanes<kLanes>(seed, offset, first, x0, t, a, c, T, clock, eps, x_t, u);
}

// Runs `body(first, count)` over [0, n) in blocks of kLanes; the tail block is padded with zeros
// (valid inputs for every op) and only `count` lanes are stored.
// times[(first + l) / inner] for the lanes of a block, without a division per element.
inline void gather_times(const float* times, int64_t first, int64_t inner, int count, float* out) {
  int64_t q = first / inner, r = first % inner;
  for (int l = 0; l < count; ++l) {
    out[l] = times[q];
    if (++r == inner) {
      r = 0;
      ++q;
    }
  }
}

template <typename F>
void for_each_block(int64_t n, const F& body) {
  at::parallel_for(0, (n + kLanes - 1) / kLanes, std::max<int64_t>(1, kGrain / kLanes),
                   [&](int64_t b0, int64_t b1) {
                     for (int64_t b = b0; b < b1; ++b) {
                       const int64_t first = b * kLanes;
                       body(first, (int)std::min<int64_t>(kLanes, n - first));
                     }
                   });
}

at::Tensor kac_velocity_cpu(const at::Tensor& x, const at::Tensor& s, double a, double c,
                            double eps) {
  const int64_t inner = kac::check_velocity_args(x, s, a, c, eps);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kac_velocity", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const float* sp = s.data_ptr<float>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_block(x.numel(), [&](int64_t first, int count) {
      float sl[kLanes] = {}, xl[kLanes] = {}, vl[kLanes];
      gather_times(sp, first, inner, count, sl);
      for (int l = 0; l < count; ++l) xl[l] = (float)xp[first + l];
      velocity_block(sl, xl, (float)a, (float)c, (float)eps, vl);
      for (int l = 0; l < count; ++l) op[first + l] = (scalar_t)vl[l];
    });
  });
  return out;
}

at::Tensor kac_noise_cpu(const at::Tensor& s, double a, double c, int64_t seed, int64_t offset,
                         at::ScalarType dtype) {
  kac::check_noise_args(s, a, c, seed, offset, dtype);
  at::Tensor out = at::empty(s.sizes(), s.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "kac_noise", [&] {
    const float* sp = s.data_ptr<float>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_block(s.numel(), [&](int64_t first, int count) {
      float lambda[kLanes] = {}, reach[kLanes] = {}, xl[kLanes];
      for (int l = 0; l < count; ++l) {
        lambda[l] = (float)a * sp[first + l];
        reach[l] = (float)c * sp[first + l];
      }
      noise_block((uint64_t)seed, (uint32_t)offset, (uint64_t)first, lambda, reach, xl);
      for (int l = 0; l < count; ++l) op[first + l] = (scalar_t)xl[l];
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> kac_noise_target_cpu(const at::Tensor& x0, const at::Tensor& t,
                                                        double a, double c, double T,
                                                        int64_t clock, double eps, int64_t seed,
                                                        int64_t offset) {
  const int64_t inner = kac::check_noise_target_args(x0, t, a, c, T, clock, eps, seed, offset);
  at::Tensor x_t = at::empty_like(x0);
  at::Tensor u = at::empty_like(x0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "kac_noise_target", [&] {
    const scalar_t* xp = x0.data_ptr<scalar_t>();
    const float* tp = t.data_ptr<float>();
    scalar_t* xtp = x_t.data_ptr<scalar_t>();
    scalar_t* up = u.data_ptr<scalar_t>();
    for_each_block(x0.numel(), [&](int64_t first, int count) {
      float xl[kLanes] = {}, tl[kLanes] = {}, xtl[kLanes], ul[kLanes];
      gather_times(tp, first, inner, count, tl);
      for (int l = 0; l < count; ++l) xl[l] = (float)xp[first + l];
      noise_target_block((uint64_t)seed, (uint32_t)offset, (uint64_t)first, xl, tl, (float)a,
                         (float)c, (float)T, (int)clock, (float)eps, xtl, ul);
      for (int l = 0; l < count; ++l) {
        xtp[first + l] = (scalar_t)xtl[l];
        up[first + l] = (scalar_t)ul[l];
      }
    });
  });
  return {x_t, u};
}

}  // namespace

TORCH_LIBRARY_IMPL(kacfast, CPU, m) {
  m.impl("kac_velocity", &kac_velocity_cpu);
  m.impl("kac_noise", &kac_noise_cpu);
  m.impl("kac_noise_target", &kac_noise_target_cpu);
}
