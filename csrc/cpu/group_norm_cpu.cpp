// CPU GroupNorm (+ SiLU) for float32 inference, in the layout it is given. Inductor's CPU code for
// a GroupNorm over channels-last activations with more than one channel per group runs 4.6-8.5x
// below the copy rate (torch 2.13; the layout it picks for frozen convolutions; README "GroupNorm in
// the compiled float32 graph"). Here one image at a time: its activations stay in L2 across the
// three passes (channel sums, squared deviations from the group mean, normalize + SiLU), so each
// element is read from memory once and written once. Loops run over the contiguous axis (channels
// in channels-last, pixels in NCHW) and vectorize; target_clones as in kac_cpu.cpp.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

// FMA contraction from here on (the build turns it off for the Kac kernels' bit-identical CPU /
// CUDA numbers, which nothing here shares): SiLU's exp is most of this kernel's time.
#pragma GCC optimize("fp-contract=fast")
#include "../kac_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GN_CPU_CLONES
#endif

namespace {

// z * sigmoid(z) with kac_exp on its domain [-87, 0]: e = exp(-|z|) and sigmoid = (z >= 0 ? 1 : e)
// / (1 + e); branch-free, so the loops vectorize (about 2 ulp against torch's SiLU).
inline float silu(float z) {
  const float e = kac::kac_exp(-std::min(std::fabs(z), 87.0f));
  return z * ((z >= 0.0f ? 1.0f : e) / (1.0f + e));
}

// The group means of one image, per channel in mean_c[c], from per-channel sums over its pixels
// (double: a sum of thousands of float values far from 0 would lose the mean's last digits).
inline void group_means(const double* sums, int64_t channels, int64_t groups, int64_t pixels,
                        float* mean_c) {
  const int64_t per_group = channels / groups;
  for (int64_t g = 0; g < groups; ++g) {
    double total = 0.0;
    for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += sums[c];
    const float mean = (float)(total / (double)(per_group * pixels));
    for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) mean_c[c] = mean;
  }
}

// scale[c] = w[c] / sqrt(var_g + eps), shift[c] = b[c] - mean_g * scale[c], from the per-channel
// sums of squared deviations from the group mean (squares[c]) and the group means (mean_c).
inline void scale_shift(const float* squares, const float* mean_c, const float* weight,
                        const float* bias, int64_t channels, int64_t groups, int64_t pixels,
                        float eps, float* scale, float* shift) {
  const int64_t per_group = channels / groups;
  for (int64_t g = 0; g < groups; ++g) {
    double total = 0.0;
    for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += squares[c];
    const float rstd = 1.0f / std::sqrt((float)(total / (double)(per_group * pixels)) + eps);
    for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
      scale[c] = (weight ? weight[c] : 1.0f) * rstd;
      shift[c] = (bias ? bias[c] : 0.0f) - mean_c[c] * scale[c];
    }
  }
}

// One channels-last image: x and y are (pixels, channels); sums holds channels doubles, work
// 4 * channels floats.
template <bool kSilu>
GN_CPU_CLONES void image_channels_last(const float* __restrict__ x, float* __restrict__ y,
                                       int64_t pixels, int64_t channels, int64_t groups,
                                       const float* weight, const float* bias, float eps,
                                       double* __restrict__ sums, float* __restrict__ work) {
  float* __restrict__ acc = work;
  float* __restrict__ mean_c = work + channels;
  float* __restrict__ scale = work + 2 * channels;
  float* __restrict__ shift = work + 3 * channels;
  std::fill(sums, sums + channels, 0.0);
  for (int64_t p = 0; p < pixels; ++p) {
    const float* __restrict__ row = x + p * channels;
    for (int64_t c = 0; c < channels; ++c) sums[c] += row[c];
  }
  group_means(sums, channels, groups, pixels, mean_c);
  std::fill(acc, acc + channels, 0.0f);
  for (int64_t p = 0; p < pixels; ++p) {
    const float* __restrict__ row = x + p * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float d = row[c] - mean_c[c];
      acc[c] += d * d;
    }
  }
  scale_shift(acc, mean_c, weight, bias, channels, groups, pixels, eps, scale, shift);
  for (int64_t p = 0; p < pixels; ++p) {
    const float* __restrict__ row = x + p * channels;
    float* __restrict__ out = y + p * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float z = row[c] * scale[c] + shift[c];
      out[c] = kSilu ? silu(z) : z;
    }
  }
}

// One group of one NCHW image: x and y are (channels of the group, pixels).
template <bool kSilu>
GN_CPU_CLONES void group_nchw(const float* __restrict__ x, float* __restrict__ y, int64_t pixels,
                              int64_t per_group, const float* weight, const float* bias, float eps) {
  const int64_t count = per_group * pixels;
  double sum = 0.0;  // as group_means: the mean's last digits
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < count; ++i) sum += x[i];
  const float mean = (float)(sum / (double)count);
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < count; ++i) {
    const float d = x[i] - mean;
    squares += d * d;
  }
  const float rstd = 1.0f / std::sqrt(squares / (float)count + eps);
  for (int64_t c = 0; c < per_group; ++c) {
    const float scale = (weight ? weight[c] : 1.0f) * rstd;
    const float shift = (bias ? bias[c] : 0.0f) - mean * scale;
    const float* __restrict__ plane = x + c * pixels;
    float* __restrict__ out = y + c * pixels;
    for (int64_t i = 0; i < pixels; ++i) {
      const float z = plane[i] * scale + shift;
      out[i] = kSilu ? silu(z) : z;
    }
  }
}

const float* optional_data(const c10::optional<at::Tensor>& t, int64_t channels, const char* name) {
  if (!t.has_value() || !t->defined()) return nullptr;
  TORCH_CHECK(t->dim() == 1 && t->numel() == channels && t->scalar_type() == at::kFloat &&
                  t->is_contiguous() && t->device().is_cpu(),
              "group_norm: ", name, " must be a contiguous float32 CPU tensor of ", channels,
              " values (one per channel), got ", t->scalar_type(), " of shape ", t->sizes(), " on ",
              t->device(), t->is_contiguous() ? "" : ", not contiguous");
  return t->data_ptr<float>();
}

at::Tensor group_norm_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                          const c10::optional<at::Tensor>& bias, int64_t groups, double eps,
                          bool apply_silu) {
  TORCH_CHECK(x.dim() >= 2 && x.scalar_type() == at::kFloat,
              "group_norm: x must be a float32 (N, C, ...) tensor, got ", x.scalar_type(), " ",
              x.sizes());
  const int64_t n = x.size(0), channels = x.size(1);
  const int64_t pixels = n * channels == 0 ? 0 : x.numel() / (n * channels);
  TORCH_CHECK(groups >= 1 && channels % groups == 0, "group_norm: groups=", groups,
              " must be >= 1 and divide the ", channels, " channels");
  TORCH_CHECK(eps > 0.0, "group_norm: eps must be > 0, got ", eps);
  const float* w = optional_data(weight, channels, "weight");
  const float* b = optional_data(bias, channels, "bias");
  // The layout rule _fake.group_norm mirrors: channels-last input (and only that) stays so.
  const bool channels_last =
      x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor input = channels_last ? x : x.contiguous();
  // canonical strides (empty_like would copy x's arbitrary strides of size-1 dimensions)
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(
                                          channels_last ? at::MemoryFormat::ChannelsLast
                                                        : at::MemoryFormat::Contiguous));
  if (input.numel() == 0) return y;
  const float* src = input.data_ptr<float>();
  float* dst = y.data_ptr<float>();
  const int64_t image = channels * pixels;
  const float e = (float)eps;
  if (channels_last) {
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> sums(channels);
      std::vector<float> work(4 * channels);
      for (int64_t i = begin; i < end; ++i) {
        (apply_silu ? image_channels_last<true> : image_channels_last<false>)(
            src + i * image, dst + i * image, pixels, channels, groups, w, b, e, sums.data(),
            work.data());
      }
    });
  } else {
    const int64_t per_group = channels / groups;
    at::parallel_for(0, n * groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task % groups, offset = (task / groups) * image + g * per_group * pixels;
        (apply_silu ? group_nchw<true> : group_nchw<false>)(
            src + offset, dst + offset, pixels, per_group, w ? w + g * per_group : nullptr,
            b ? b + g * per_group : nullptr, e);
      }
    });
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(kacfast, CPU, m) { m.impl("group_norm", &group_norm_cpu); }
