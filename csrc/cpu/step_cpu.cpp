// CPU guided sampler step: one pass over x, v (and v_prev), memory-bound; the loop bodies are
// branch-free per variant so the compiler vectorizes them.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "../kac_math.h"
#include "../op_checks.h"

namespace {

constexpr int64_t kGrain = 32768;

std::tuple<at::Tensor, at::Tensor> kac_guided_step_cpu(const at::Tensor& x, const at::Tensor& v,
                                                       const c10::optional<at::Tensor>& v_prev,
                                                       double guidance, double h, double alpha,
                                                       double beta, bool clamp, bool return_v) {
  const bool guided = kac::check_step_inputs(x, v, v_prev);
  const int64_t n = x.numel();
  at::Tensor x_new = at::empty_like(x);
  at::Tensor v_mix = return_v ? at::empty_like(x) : at::empty({0}, x.options());
  const float w = (float)guidance, fh = (float)h, fa = (float)alpha, fb = (float)beta;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kac_guided_step", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* vc = v.data_ptr<scalar_t>();
    const scalar_t* vu = guided ? vc + n : vc;
    const scalar_t* vp = v_prev.has_value() ? v_prev->data_ptr<scalar_t>() : nullptr;
    scalar_t* xo = x_new.data_ptr<scalar_t>();
    scalar_t* vo = return_v ? v_mix.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      // Loop-invariant branches outside the loop: each variant is a straight vectorizable loop.
      auto run = [&](auto has_guidance, auto has_prev, auto write_v) {
        for (int64_t i = begin; i < end; ++i) {
          const float c = (float)vc[i];
          const float vm = has_guidance ? kac::guided_velocity(c, (float)vu[i], w) : c;
          const float p = has_prev ? (float)vp[i] : 0.0f;
          xo[i] = (scalar_t)kac::step_position((float)xp[i], vm, p, fh, fa, fb, clamp);
          if (write_v) vo[i] = (scalar_t)vm;
        }
      };
      using T = std::true_type;
      using F = std::false_type;
      const int variant = (guided ? 4 : 0) | (vp ? 2 : 0) | (vo ? 1 : 0);
      switch (variant) {
        case 0: run(F{}, F{}, F{}); break;
        case 1: run(F{}, F{}, T{}); break;
        case 2: run(F{}, T{}, F{}); break;
        case 3: run(F{}, T{}, T{}); break;
        case 4: run(T{}, F{}, F{}); break;
        case 5: run(T{}, F{}, T{}); break;
        case 6: run(T{}, T{}, F{}); break;
        default: run(T{}, T{}, T{}); break;
      }
    });
  });
  return {x_new, v_mix};
}

}  // namespace

TORCH_LIBRARY_IMPL(kacfast, CPU, m) { m.impl("kac_guided_step", &kac_guided_step_cpu); }
