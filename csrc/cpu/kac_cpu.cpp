// CPU kernels: at::parallel_for over spans of elements; each span runs the lock-step algorithms of
// kac_math.h on blocks of kLanes elements, which the compiler vectorizes across lanes. The span
// functions are compiled for x86-64-v4 (AVX-512), v3 (AVX2) and baseline x86-64 and picked at load
// time (target_clones).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdlib>

#include "../kac_math.h"
#include "../op_checks.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics initialize their "undefined" vectors from themselves, which
// -Wuninitialized reports at every inlined use: a known false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#define KAC_CPU_X86 1
#define KAC_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KAC_CPU_X86 0
#define KAC_CPU_CLONES
#endif
#define KAC_CPU_INLINE inline __attribute__((always_inline))

namespace {

constexpr int kLanes = 32;    // two AVX-512 vectors per lane loop: hides the division latency

#if KAC_CPU_X86
// kac::philox_lanes for 32 lanes with AVX-512 intrinsics: each 32-bit state word in a 64-bit lane,
// so a round is two vpmuludq (1 uop each) where the compiler emits vpmullq (3 uops) and repacking.
// About 2x the portable loop in a stand-alone test; the same numbers (test_kac_noise compares them).
__attribute__((target("avx512f"))) void philox_lanes_avx512(uint64_t seed, uint32_t offset,
                                                              const uint64_t* element,
                                                              uint32_t block,
                                                              uint32_t out[4][kLanes]) {
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53u), m1 = _mm512_set1_epi64(0xCD9E8D57u);
  const __m512i low = _mm512_set1_epi64(0xFFFFFFFFu);
  for (int g = 0; g < kLanes; g += 8) {
    const __m512i e = _mm512_loadu_si512(element + g);
    __m512i c0 = _mm512_and_si512(e, low), c1 = _mm512_srli_epi64(e, 32);
    __m512i c2 = _mm512_set1_epi64(offset), c3 = _mm512_set1_epi64(block);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
      }
      const __m512i p0 = _mm512_mul_epu32(c0, m0), p1 = _mm512_mul_epu32(c2, m1);
      // 0x96: three-way xor
      c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1, _mm512_set1_epi64(k0), 0x96);
      c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3, _mm512_set1_epi64(k1), 0x96);
      c1 = _mm512_and_si512(p1, low);
      c3 = _mm512_and_si512(p0, low);
    }
    _mm256_storeu_si256((__m256i*)(out[0] + g), _mm512_cvtepi64_epi32(c0));
    _mm256_storeu_si256((__m256i*)(out[1] + g), _mm512_cvtepi64_epi32(c1));
    _mm256_storeu_si256((__m256i*)(out[2] + g), _mm512_cvtepi64_epi32(c2));
    _mm256_storeu_si256((__m256i*)(out[3] + g), _mm512_cvtepi64_epi32(c3));
  }
}

// KACFAST_PORTABLE_PHILOX=1 turns the AVX-512 path off (tests compare the two).
bool portable_philox_forced() {
  const char* value = std::getenv("KACFAST_PORTABLE_PHILOX");
  return value != nullptr && value[0] == '1';
}
const bool kHasAvx512 = __builtin_cpu_supports("avx512f") && !portable_philox_forced();
#endif

// The Philox source of the CPU lane loops: AVX-512 when the processor has it, else the portable
// loop (inlined into, and vectorized for, each clone).
struct CpuPhilox {
  template <int W>
  KAC_CPU_INLINE static void lanes(uint64_t seed, uint32_t offset, const uint64_t* element,
                                   uint32_t block, uint32_t out[4][W]) {
#if KAC_CPU_X86
    if constexpr (W == kLanes) {
      if (kHasAvx512) return philox_lanes_avx512(seed, offset, element, block, out);
    }
#endif
    kac::philox_lanes<W>(seed, offset, element, block, out);
  }
};

constexpr int kTile = 512;    // elements whose spacing loops are grouped by switch count
constexpr int kSortKeys = 128;  // switch counts >= kSortKeys - 1 share the last sort bucket
constexpr int64_t kGrain = 4096;  // elements per task: per-element work is 10^2..10^3 flops

KAC_CPU_CLONES void velocity_block(const float* s, const float* x, float a, float c, float eps,
                                   float* v) {
  kac::kac_velocity_lanes<kLanes>(s, x, a, c, eps, v);
}

// Kac samples of `count` <= kTile consecutive elements from `first`. Switches run in element order
// (lanes that share lambda read one Poisson table); spacings run with the lanes sorted by switch
// count, so each lock-step loop stops near its own lanes' count instead of the block maximum (at
// a s = 4.5 that is about half the spacing-phase Philox calls). Per element, the float operations
// are those of kac_sample_lanes: the numbers equal the CUDA and Triton kernels' bit for bit.
KAC_CPU_INLINE void sample_tile(uint64_t seed, uint32_t offset, uint64_t first, int count,
                                const float* lambda, const float* reach, kac::PoissonCache* cache,
                                float* x) {
  const int groups = (count + kLanes - 1) / kLanes;
  const int lanes = groups * kLanes;
  float sign[kTile], frac[kTile];
  int32_t n[kTile];
  for (int g = 0; g < groups; ++g) {
    uint64_t element[kLanes];
    uint32_t block0[4][kLanes];
    for (int l = 0; l < kLanes; ++l) element[l] = first + (uint64_t)(g * kLanes + l);
    kac::kac_switches_lanes<kLanes, CpuPhilox>(seed, offset, element, lambda + g * kLanes, cache,
                                               sign + g * kLanes, n + g * kLanes, block0);
  }
  // Counting sort of the tile's lanes by switch count.
  int bucket_start[kSortKeys + 1] = {};
  for (int i = 0; i < lanes; ++i) ++bucket_start[std::min(n[i], kSortKeys - 1) + 1];
  for (int k = 0; k < kSortKeys; ++k) bucket_start[k + 1] += bucket_start[k];
  int32_t order[kTile];
  for (int i = 0; i < lanes; ++i) order[bucket_start[std::min(n[i], kSortKeys - 1)]++] = i;

  for (int g = 0; g < groups; ++g) {
    const int32_t* idx = order + g * kLanes;
    uint64_t element[kLanes];
    int32_t nl[kLanes];
    float fl[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      element[l] = first + (uint64_t)idx[l];
      nl[l] = n[idx[l]];
    }
    kac::kac_spacings_lanes<kLanes, CpuPhilox>(seed, offset, element, nl, nullptr, fl);
    for (int l = 0; l < kLanes; ++l) frac[idx[l]] = fl[l];
  }
  for (int i = 0; i < lanes; ++i) x[i] = sign[i] * reach[i] * frac[i];
}

// Inputs of the span functions are padded to a whole number of kLanes blocks with zeros (valid
// inputs for every op); only `count` outputs are meaningful.
KAC_CPU_CLONES void noise_tile(uint64_t seed, uint32_t offset, uint64_t first, int count,
                               const float* lambda, const float* reach, kac::PoissonCache* cache,
                               float* x) {
  sample_tile(seed, offset, first, count, lambda, reach, cache, x);
}

KAC_CPU_CLONES void noise_target_tile(uint64_t seed, uint32_t offset, uint64_t first, int count,
                                      const float* x0, const float* t, float a, float c, float T,
                                      int clock, float eps, kac::PoissonCache* cache, float* x_t,
                                      float* u) {
  // Schedule fields as separate arrays (not an array of Schedule): the loops vectorize.
  float f[kTile], df[kTile], g[kTile], dg[kTile], lambda[kTile], reach[kTile], k[kTile], v[kTile];
  const int lanes = (count + kLanes - 1) / kLanes * kLanes;
  for (int l = 0; l < lanes; ++l) {
    const kac::Schedule sch = kac::schedule(t[l], T, clock);
    f[l] = sch.f;
    df[l] = sch.df;
    g[l] = sch.g;
    dg[l] = sch.dg;
    lambda[l] = a * g[l];
    reach[l] = c * g[l];
  }
  sample_tile(seed, offset, first, count, lambda, reach, cache, k);
  for (int b = 0; b < lanes; b += kLanes) kac::kac_velocity_lanes<kLanes>(g + b, k + b, a, c, eps, v + b);
  for (int l = 0; l < lanes; ++l)
    kac::flow_pair(kac::Schedule{f[l], df[l], g[l], dg[l]}, x0[l], k[l], v[l], &x_t[l], &u[l]);
}

// times[(first + l) / inner] for `count` consecutive elements: runs of one value, filled whole.
inline void gather_times(const float* times, int64_t first, int64_t inner, int count, float* out) {
  if (inner == 1) {
    std::copy(times + first, times + first + count, out);
    return;
  }
  int64_t q = first / inner, r = first % inner;
  for (int l = 0; l < count; ++q, r = 0) {
    const int run = (int)std::min<int64_t>(inner - r, count - l);
    std::fill(out + l, out + l + run, times[q]);
    l += run;
  }
}

// Runs body(first, count, cache) over [0, n) in spans of `span` elements; each parallel task owns
// one Poisson-table cache (consecutive spans of a task mostly share t).
template <typename F>
void for_each_span(int64_t n, int span, const F& body) {
  at::parallel_for(0, (n + span - 1) / span, std::max<int64_t>(1, kGrain / span),
                   [&](int64_t b0, int64_t b1) {
                     kac::PoissonCache cache;
                     for (int64_t b = b0; b < b1; ++b) {
                       const int64_t first = b * span;
                       body(first, (int)std::min<int64_t>(span, n - first), cache);
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
    for_each_span(x.numel(), kLanes, [&](int64_t first, int count, kac::PoissonCache&) {
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
    for_each_span(s.numel(), kTile, [&](int64_t first, int count, kac::PoissonCache& cache) {
      float lambda[kTile] = {}, reach[kTile] = {}, xl[kTile];
      for (int l = 0; l < count; ++l) {
        lambda[l] = (float)a * sp[first + l];
        reach[l] = (float)c * sp[first + l];
      }
      noise_tile((uint64_t)seed, (uint32_t)offset, (uint64_t)first, count, lambda, reach, &cache, xl);
      for (int l = 0; l < count; ++l) op[first + l] = (scalar_t)xl[l];
    });
  });
  return out;
}

// The host reads [seed, offset] (kac_noise_cpu then checks their ranges): one code path with
// kac_noise, so the numbers are the same.
at::Tensor kac_noise_seeded_cpu(const at::Tensor& s, const at::Tensor& rng, double a, double c,
                                at::ScalarType dtype) {
  kac::check_rng_tensor(rng, s);
  const int64_t* state = rng.data_ptr<int64_t>();
  return kac_noise_cpu(s, a, c, state[0], state[1], dtype);
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
    for_each_span(x0.numel(), kTile, [&](int64_t first, int count, kac::PoissonCache& cache) {
      float xl[kTile] = {}, tl[kTile] = {}, xtl[kTile], ul[kTile];
      gather_times(tp, first, inner, count, tl);
      for (int l = 0; l < count; ++l) xl[l] = (float)xp[first + l];
      noise_target_tile((uint64_t)seed, (uint32_t)offset, (uint64_t)first, count, xl, tl,
                        (float)a, (float)c, (float)T, (int)clock, (float)eps, &cache, xtl, ul);
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
  m.impl("kac_noise_seeded", &kac_noise_seeded_cpu);
  m.impl("kac_noise_target", &kac_noise_target_cpu);
}
