// CPU kernels: at::parallel_for over the shared math in kac_math.h.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "../kac_math.h"
#include "../op_checks.h"

namespace {

// Per-element work is 10^2..10^3 flops, so a small grain already amortizes thread start-up.
constexpr int64_t kGrain = 2048;

at::Tensor kac_velocity_cpu(const at::Tensor& x, const at::Tensor& s, double a, double c,
                            double eps) {
  kac::check_float_input(x, "x");
  kac::check_times(s, x, "s");
  kac::check_rate_speed(a, c);
  kac::check_eps(eps);
  const int64_t inner = kac::inner_size(x, s, "s");
  at::Tensor out = at::empty_like(x);
  const float fa = (float)a, fc = (float)c, feps = (float)eps;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kac_velocity", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const float* sp = s.data_ptr<float>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        op[i] = (scalar_t)kac::kac_velocity(sp[i / inner], (float)xp[i], fa, fc, feps);
    });
  });
  return out;
}

at::Tensor kac_noise_cpu(const at::Tensor& s, double a, double c, int64_t seed, int64_t offset,
                         at::ScalarType dtype) {
  kac::check_times(s, s, "s");
  kac::check_rate_speed(a, c);
  kac::check_seed_offset(seed, offset);
  TORCH_CHECK(at::isFloatingType(dtype), "kacfast: dtype must be floating point, got ", dtype, ".");
  at::Tensor out = at::empty(s.sizes(), s.options().dtype(dtype));
  const float fa = (float)a, fc = (float)c;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "kac_noise", [&] {
    const float* sp = s.data_ptr<float>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, s.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        kac::ElementStream rng((uint64_t)seed, (uint32_t)offset, (uint64_t)i);
        op[i] = (scalar_t)kac::kac_sample(fa * sp[i], fc * sp[i], rng);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> kac_noise_target_cpu(const at::Tensor& x0, const at::Tensor& t,
                                                        double a, double c, double T,
                                                        int64_t clock, double eps, int64_t seed,
                                                        int64_t offset) {
  kac::check_float_input(x0, "x0");
  kac::check_times(t, x0, "t");
  kac::check_rate_speed(a, c);
  kac::check_eps(eps);
  kac::check_seed_offset(seed, offset);
  TORCH_CHECK(T > 0, "kacfast: the horizon T must be > 0, got ", T, ".");
  TORCH_CHECK(clock == kac::kClockLinear || clock == kac::kClockQuadratic,
              "kacfast: clock must be 0 (g=t) or 1 (g=T(t/T)^2), got ", clock, ".");
  const int64_t inner = kac::inner_size(x0, t, "t");
  at::Tensor x_t = at::empty_like(x0);
  at::Tensor u = at::empty_like(x0);
  const float fa = (float)a, fc = (float)c, fT = (float)T, feps = (float)eps;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "kac_noise_target", [&] {
    const scalar_t* xp = x0.data_ptr<scalar_t>();
    const float* tp = t.data_ptr<float>();
    scalar_t* xtp = x_t.data_ptr<scalar_t>();
    scalar_t* up = u.data_ptr<scalar_t>();
    at::parallel_for(0, x0.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const kac::Schedule sch = kac::schedule(tp[i / inner], fT, (int)clock);
        kac::ElementStream rng((uint64_t)seed, (uint32_t)offset, (uint64_t)i);
        const kac::NoiseTarget r = kac::noise_target((float)xp[i], sch, fa, fc, feps, rng);
        xtp[i] = (scalar_t)r.x_t;
        up[i] = (scalar_t)r.u;
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
