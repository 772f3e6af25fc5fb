// CUDA registrations of the kacfast operators: same checks and semantics as cpu/kac_cpu.cpp, then
// one launch of the torch-free kernels (kac_kernels.cu) on the current stream of the data's device.
// The stream comes from c10/cuda/CUDAStream.h (c10::cuda::getCurrentCUDAStream, which
// at::cuda::getCurrentCUDAStream aliases), not ATen/cuda/CUDAContext.h: that header also pulls in
// the cuBLAS/cuSPARSE/cuSOLVER headers, which minimal CUDA toolkits lack.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "../op_checks.h"
#include "kac_kernels.h"

namespace {

kac_cuda::DType kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return kac_cuda::DType::kF32;
    case at::kDouble: return kac_cuda::DType::kF64;
    case at::kHalf: return kac_cuda::DType::kF16;
    case at::kBFloat16: return kac_cuda::DType::kBF16;
    default: break;
  }
  TORCH_CHECK(false, "kacfast: the CUDA kernels take float16, bfloat16, float32 or float64, got ",
              type, ".");
}

at::Tensor kac_velocity_cuda(const at::Tensor& x, const at::Tensor& s, double a, double c,
                             double eps) {
  const int64_t inner = kac::check_velocity_args(x, s, a, c, eps);
  const kac_cuda::DType dtype = kernel_dtype(x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  C10_CUDA_CHECK(kac_cuda::launch_velocity(dtype, x.data_ptr(), s.data_ptr<float>(),
                                           out.data_ptr(), x.numel(), inner, (float)a, (float)c,
                                           (float)eps, c10::cuda::getCurrentCUDAStream()));
  return out;
}

// The launch of both noise ops (arguments already checked).
at::Tensor noise_cuda(const at::Tensor& s, double a, double c, kac_cuda::SeedOffset rng,
                      at::ScalarType dtype) {
  const kac_cuda::DType kdtype = kernel_dtype(dtype);
  const c10::cuda::CUDAGuard guard(s.device());
  at::Tensor out = at::empty(s.sizes(), s.options().dtype(dtype));
  if (s.numel() == 0) return out;
  C10_CUDA_CHECK(kac_cuda::launch_noise(kdtype, s.data_ptr<float>(), out.data_ptr(), s.numel(),
                                        (float)a, (float)c, rng,
                                        c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor kac_noise_cuda(const at::Tensor& s, double a, double c, int64_t seed, int64_t offset,
                          at::ScalarType dtype) {
  kac::check_noise_args(s, a, c, seed, offset, dtype);
  return noise_cuda(s, a, c, {(uint64_t)seed, (uint32_t)offset, nullptr}, dtype);
}

// The kernel reads [seed, offset] from rng: their ranges go unchecked here, since reading them on
// the host would synchronize it (and break graph capture).
at::Tensor kac_noise_seeded_cuda(const at::Tensor& s, const at::Tensor& rng, double a, double c,
                                 at::ScalarType dtype) {
  kac::check_noise_args(s, a, c, dtype);
  kac::check_rng_tensor(rng, s);
  return noise_cuda(s, a, c, {0, 0, rng.data_ptr<int64_t>()}, dtype);
}

std::tuple<at::Tensor, at::Tensor> kac_noise_target_cuda(const at::Tensor& x0,
                                                         const at::Tensor& t, double a, double c,
                                                         double T, int64_t clock, double eps,
                                                         int64_t seed, int64_t offset) {
  const int64_t inner = kac::check_noise_target_args(x0, t, a, c, T, clock, eps, seed, offset);
  const kac_cuda::DType dtype = kernel_dtype(x0.scalar_type());
  const c10::cuda::CUDAGuard guard(x0.device());
  at::Tensor x_t = at::empty_like(x0);
  at::Tensor u = at::empty_like(x0);
  if (x0.numel() == 0) return {x_t, u};
  C10_CUDA_CHECK(kac_cuda::launch_noise_target(
      dtype, x0.data_ptr(), t.data_ptr<float>(), x_t.data_ptr(), u.data_ptr(), x0.numel(), inner,
      (float)a, (float)c, (float)T, (int)clock, (float)eps, (uint64_t)seed, (uint32_t)offset,
      c10::cuda::getCurrentCUDAStream()));
  return {x_t, u};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> kac_guided_step_cuda(const at::Tensor& x, const at::Tensor& v,
                                                        const c10::optional<at::Tensor>& v_prev,
                                                        double guidance, double h, double alpha,
                                                        double beta, bool clamp, bool return_v) {
  const bool guided = kac::check_step_inputs(x, v, v_prev);
  const kac_cuda::DType dtype = kernel_dtype(x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor x_new = at::empty_like(x);
  at::Tensor v_mix = return_v ? at::empty_like(x) : at::empty({0}, x.options());
  if (x.numel() == 0) return {x_new, v_mix};
  const char* v_cond = static_cast<const char*>(v.data_ptr());
  const void* v_uncond = guided ? v_cond + x.numel() * x.element_size() : nullptr;
  C10_CUDA_CHECK(kac_cuda::launch_guided_step(
      dtype, x.data_ptr(), v_cond, v_uncond, v_prev.has_value() ? v_prev->data_ptr() : nullptr,
      x_new.data_ptr(), return_v ? v_mix.data_ptr() : nullptr, x.numel(), (float)guidance,
      (float)h, (float)alpha, (float)beta, clamp, c10::cuda::getCurrentCUDAStream()));
  return {x_new, v_mix};
}

TORCH_LIBRARY_IMPL(kacfast, CUDA, m) {
  m.impl("kac_guided_step", &kac_guided_step_cuda);
  m.impl("kac_velocity", &kac_velocity_cuda);
  m.impl("kac_noise", &kac_noise_cuda);
  m.impl("kac_noise_seeded", &kac_noise_seeded_cuda);
  m.impl("kac_noise_target", &kac_noise_target_cuda);
}
