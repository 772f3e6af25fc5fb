// Operator schemas of the `kacfast` namespace (implementations: cpu/*.cpp, cuda/*_glue.cpp) and a
// tiny Python module that reports what this build contains.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(kacfast, m) {
  // v_K(s, x) elementwise; s is float32, either x's shape or a leading-dims block of it
  // (s.numel() divides x.numel(); element i uses s[i / (x.numel() / s.numel())]).
  m.def("kac_velocity(Tensor x, Tensor s, float a, float c, float eps) -> Tensor");
  // Exact Kac displacement per element of s (float32 process times); output dtype `dtype`.
  m.def("kac_noise(Tensor s, float a, float c, int seed, int offset, ScalarType dtype) -> Tensor");
  // kac_noise with its Philox state in a tensor: rng is int64 [seed, offset] on s's device, read
  // by the kernel when it runs, so a captured CUDA graph draws new noise after new values are
  // copied into rng (no recapture). Same numbers as kac_noise for the same (seed, offset).
  m.def("kac_noise_seeded(Tensor s, Tensor rng, float a, float c, ScalarType dtype) -> Tensor");
  // Fused flow-matching pair: x0 (B, ...) any float dtype, t (B,) float32 -> (x_t, u) like x0.
  m.def(
      "kac_noise_target(Tensor x0, Tensor t, float a, float c, float T, int clock, float eps, "
      "int seed, int offset) -> (Tensor, Tensor)");
  // Guided sampler step: v is (B, ...) or (2B, ...) = [cond; uncond] (guided when twice x's size);
  // x' = x - h (alpha v_mix + beta v_prev), clamped to [-1, 1] if `clamp`. Second output: v_mix when
  // `return_v`, else an empty tensor.
  m.def(
      "kac_guided_step(Tensor x, Tensor v, Tensor? v_prev, float guidance, float h, float alpha, "
      "float beta, bool clamp, bool return_v) -> (Tensor, Tensor)");
  // GroupNorm (+ SiLU when `silu`) of float32 (N, C, ...) x, for inference (no autograd); the
  // output keeps x's layout if x is 4-D channels-last, else is contiguous. flexible_layout: inductor
  // may hand it either layout (so no copy between its channels-last convolutions).
  m.def("group_norm(Tensor x, Tensor? weight, Tensor? bias, int groups, float eps, bool silu) -> Tensor",
        {at::Tag::flexible_layout});
}

static bool built_with_cuda() {
#ifdef KACFAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kacfast compiled kernels (operators live in torch.ops.kacfast)";
  m.def("built_with_cuda", &built_with_cuda, "True when the CUDA kernels were compiled in.");
}
