// Argument checks shared by the CPU and CUDA glue: one sentence per problem, raised before any
// output is allocated.
#pragma once

#include <torch/extension.h>

#include "kac_math.h"

namespace kac {

inline void check_float_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "kacfast: ", name,
              " must be a floating-point tensor, got ", t.scalar_type(), ".");
  TORCH_CHECK(t.is_contiguous(), "kacfast: ", name, " must be contiguous.");
}

inline void check_times(const at::Tensor& times, const at::Tensor& like, const char* name) {
  TORCH_CHECK(times.scalar_type() == at::kFloat, "kacfast: ", name,
              " must be float32, got ", times.scalar_type(), ".");
  TORCH_CHECK(times.is_contiguous(), "kacfast: ", name, " must be contiguous.");
  TORCH_CHECK(times.device() == like.device(), "kacfast: ", name, " is on ", times.device(),
              " but the data is on ", like.device(), ".");
}

inline void check_rate_speed(double a, double c) {
  TORCH_CHECK(a > 0, "kacfast: the switching rate a must be > 0, got ", a, ".");
  TORCH_CHECK(c > 0, "kacfast: the speed c must be > 0, got ", c, ".");
}

inline void check_eps(double eps) {
  TORCH_CHECK(eps >= 0 && eps < 1, "kacfast: eps must lie in [0, 1), got ", eps, ".");
}

inline void check_seed_offset(int64_t seed, int64_t offset) {
  TORCH_CHECK(seed >= 0, "kacfast: seed must be >= 0, got ", seed, ".");
  TORCH_CHECK(offset >= 0 && offset < (int64_t(1) << 32),
              "kacfast: offset must lie in [0, 2^32), got ", offset, ".");
}

// Elements of x sharing one entry of s: s covers a leading block of x's dims.
inline int64_t inner_size(const at::Tensor& x, const at::Tensor& s, const char* s_name) {
  const int64_t n = x.numel(), m = s.numel();
  TORCH_CHECK(m > 0 || n == 0, "kacfast: ", s_name, " is empty but the data is not.");
  if (n == 0) return 1;
  TORCH_CHECK(n % m == 0, "kacfast: ", s_name, " has ", m,
              " elements, which does not divide the data's ", n, ".");
  return n / m;
}

// Whole-op checks shared by the CPU and CUDA glue. The *_args functions return `inner` (elements
// of the data per entry of the times tensor).
inline int64_t check_velocity_args(const at::Tensor& x, const at::Tensor& s, double a, double c,
                                   double eps) {
  check_float_input(x, "x");
  check_times(s, x, "s");
  check_rate_speed(a, c);
  check_eps(eps);
  return inner_size(x, s, "s");
}

// The noise ops' arguments other than the Philox state.
inline void check_noise_args(const at::Tensor& s, double a, double c, at::ScalarType dtype) {
  check_times(s, s, "s");
  check_rate_speed(a, c);
  TORCH_CHECK(at::isFloatingType(dtype), "kacfast: dtype must be floating point, got ", dtype, ".");
}

inline void check_noise_args(const at::Tensor& s, double a, double c, int64_t seed,
                             int64_t offset, at::ScalarType dtype) {
  check_noise_args(s, a, c, dtype);
  check_seed_offset(seed, offset);
}

// The Philox state tensor of kac_noise_seeded: int64 [seed, offset] on the data's device. Its
// values are checked (check_seed_offset) only where the host reads them: on the CPU.
inline void check_rng_tensor(const at::Tensor& rng, const at::Tensor& like) {
  TORCH_CHECK(rng.scalar_type() == at::kLong,
              "kacfast: rng must be an int64 tensor [seed, offset], got ", rng.scalar_type(), ".");
  TORCH_CHECK(rng.dim() == 1 && rng.size(0) == 2,
              "kacfast: rng must have shape (2,) = [seed, offset], got ", rng.sizes(), ".");
  TORCH_CHECK(rng.is_contiguous(), "kacfast: rng must be contiguous.");
  TORCH_CHECK(rng.device() == like.device(), "kacfast: rng is on ", rng.device(),
              " but s is on ", like.device(), ".");
}

inline int64_t check_noise_target_args(const at::Tensor& x0, const at::Tensor& t, double a,
                                       double c, double T, int64_t clock, double eps,
                                       int64_t seed, int64_t offset) {
  check_float_input(x0, "x0");
  check_times(t, x0, "t");
  check_rate_speed(a, c);
  check_eps(eps);
  check_seed_offset(seed, offset);
  TORCH_CHECK(T > 0, "kacfast: the horizon T must be > 0, got ", T, ".");
  TORCH_CHECK(clock == kClockLinear || clock == kClockQuadratic,
              "kacfast: clock must be 0 (g=t) or 1 (g=T(t/T)^2), got ", clock, ".");
  return inner_size(x0, t, "t");
}

// The step op's tensors: v is x's shape, or twice its batch ([cond; uncond]); v_prev is x's shape.
// Returns true when v carries the guidance pair.
inline bool check_step_inputs(const at::Tensor& x, const at::Tensor& v,
                              const c10::optional<at::Tensor>& v_prev) {
  check_float_input(x, "x");
  check_float_input(v, "v");
  TORCH_CHECK(v.scalar_type() == x.scalar_type(), "kacfast: v has dtype ", v.scalar_type(),
              " but x has ", x.scalar_type(), ".");
  TORCH_CHECK(v.device() == x.device(), "kacfast: v is on ", v.device(), " but x is on ",
              x.device(), ".");
  bool guided = x.dim() > 0 && v.dim() == x.dim() && v.size(0) == 2 * x.size(0);
  for (int64_t d = 1; guided && d < x.dim(); ++d) guided = v.size(d) == x.size(d);
  TORCH_CHECK(guided || v.sizes() == x.sizes(), "kacfast: v must have x's shape ", x.sizes(),
              " or twice its batch ([cond; uncond]), got ", v.sizes(), ".");
  if (v_prev.has_value()) {
    check_float_input(*v_prev, "v_prev");
    TORCH_CHECK(v_prev->sizes() == x.sizes() && v_prev->scalar_type() == x.scalar_type() &&
                    v_prev->device() == x.device(),
                "kacfast: v_prev must match x in shape, dtype and device.");
  }
  return guided;
}

}  // namespace kac
