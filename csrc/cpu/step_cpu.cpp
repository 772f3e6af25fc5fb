// CPU guided sampler step: one pass over x, v (and v_prev), memory-bound; the loop bodies are
// branch-free per variant so the compiler vectorizes them.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "../kac_math.h"
#include "../op_checks.h"

namespace {

constexpr int64_t kGrain = 32768;

// One variant per (guided, v_prev, write v_mix): branch-free bodies the compiler vectorizes.
// __restrict__ parameters: the outputs are fresh tensors, so no aliasing checks are needed.
template <bool kGuided, bool kPrev, bool kWriteV, typename scalar_t>
void step_range(const scalar_t* __restrict__ x, const scalar_t* __restrict__ v_cond,
                const scalar_t* __restrict__ v_uncond, const scalar_t* __restrict__ v_prev,
                scalar_t* __restrict__ x_new, scalar_t* __restrict__ v_mix, int64_t begin,
                int64_t end, float w, float h, float alpha, float beta, bool clamp) {
  for (int64_t i = begin; i < end; ++i) {
    const float c = (float)v_cond[i];
    const float vm = kGuided ? kac::guided_velocity(c, (float)v_uncond[i], w) : c;
    const float p = kPrev ? (float)v_prev[i] : 0.0f;
    x_new[i] = (scalar_t)kac::step_position((float)x[i], vm, p, h, alpha, beta, clamp);
    if (kWriteV) v_mix[i] = (scalar_t)vm;
  }
}

template <typename scalar_t>
using StepFn = void (*)(const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*,
                        scalar_t*, scalar_t*, int64_t, int64_t, float, float, float, float, bool);

template <typename scalar_t>
StepFn<scalar_t> step_variant(bool guided, bool prev, bool write_v) {
  static const StepFn<scalar_t> table[8] = {
      step_range<false, false, false, scalar_t>, step_range<false, false, true, scalar_t>,
      step_range<false, true, false, scalar_t>,  step_range<false, true, true, scalar_t>,
      step_range<true, false, false, scalar_t>,  step_range<true, false, true, scalar_t>,
      step_range<true, true, false, scalar_t>,   step_range<true, true, true, scalar_t>};
  return table[(guided ? 4 : 0) | (prev ? 2 : 0) | (write_v ? 1 : 0)];
}

std::tuple<at::Tensor, at::Tensor> kac_guided_step_cpu(const at::Tensor& x, const at::Tensor& v,
                                                       const c10::optional<at::Tensor>& v_prev,
                                                       double guidance, double h, double alpha,
                                                       double beta, bool clamp, bool return_v) {
  const bool guided = kac::check_step_inputs(x, v, v_prev);
  const int64_t n = x.numel();
  at::Tensor x_new = at::empty_like(x);
  at::Tensor v_mix = return_v ? at::empty_like(x) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kac_guided_step", [&] {
    const scalar_t* v_cond = v.data_ptr<scalar_t>();
    const scalar_t* v_prev_p = v_prev.has_value() ? v_prev->data_ptr<scalar_t>() : nullptr;
    const auto fn = step_variant<scalar_t>(guided, v_prev_p != nullptr, return_v);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      fn(x.data_ptr<scalar_t>(), v_cond, guided ? v_cond + n : v_cond, v_prev_p,
         x_new.data_ptr<scalar_t>(), return_v ? v_mix.data_ptr<scalar_t>() : nullptr, begin, end,
         (float)guidance, (float)h, (float)alpha, (float)beta, clamp);
    });
  });
  return {x_new, v_mix};
}

}  // namespace

TORCH_LIBRARY_IMPL(kacfast, CPU, m) { m.impl("kac_guided_step", &kac_guided_step_cpu); }
