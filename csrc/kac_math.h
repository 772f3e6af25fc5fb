// Kac-process math shared by the CPU and CUDA kernels: one definition, two launchers.
//
// Everything here is plain IEEE float arithmetic (+, -, *, /, sqrt) plus our own exp/log
// polynomials, compiled without FMA contraction (-ffp-contract=off / -fmad=false), so the CPU and
// CUDA backends produce bit-identical numbers for the same (seed, offset).
// Math: ../shared/docs/kac-math.md sections 3-5; Python mirror: kacfast/ops/reference.py.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define KAC_HD __host__ __device__ __forceinline__
#else
// Forced inlining: the CPU kernels compile each caller for several ISAs (target_clones), and only
// code inlined into a clone gets that clone's vector instructions.
#define KAC_HD inline __attribute__((always_inline))
#endif

namespace kac {

// ---------------------------------------------------------------------------------------------
// Counter-based RNG: Philox4x32-10 (Salmon et al., SC'11). Stream of one element:
// key = seed, counter = (element_lo, element_hi, offset, block); draw k uses word k%4 of block k/4.
// ---------------------------------------------------------------------------------------------
struct Philox4 {
  uint32_t v[4];
};

// The state words are 32-bit values held in `Word`: uint32_t on the GPU (mul.hi), uint64_t on the
// CPU, where 64-bit lanes spare the vectorized loops the repacking between 32- and 64-bit lanes
// that each product would otherwise cost (about a quarter of the Philox time).
#if defined(__CUDA_ARCH__)
typedef uint32_t PhiloxWord;
#else
typedef uint64_t PhiloxWord;
#endif

KAC_HD Philox4 philox4x32_10(uint32_t counter0, uint32_t counter1, uint32_t counter2,
                             uint32_t counter3, uint32_t key0, uint32_t key1) {
  PhiloxWord c0 = counter0, c1 = counter1, c2 = counter2, c3 = counter3;
  uint32_t k0 = key0, k1 = key1;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = (uint64_t)(c0 & 0xFFFFFFFFu) * 0xD2511F53u;
    const uint64_t p1 = (uint64_t)(c2 & 0xFFFFFFFFu) * 0xCD9E8D57u;
    c0 = (PhiloxWord)(p1 >> 32) ^ c1 ^ k0;
    c1 = (PhiloxWord)(p1 & 0xFFFFFFFFu);
    c2 = (PhiloxWord)(p0 >> 32) ^ c3 ^ k1;
    c3 = (PhiloxWord)(p0 & 0xFFFFFFFFu);
  }
  Philox4 out = {{(uint32_t)c0, (uint32_t)c1, (uint32_t)c2, (uint32_t)c3}};
  return out;
}

// Top 24 bits -> float exactly: [0, 1) and (0, 1].
KAC_HD float uniform_co(uint32_t w) { return (float)(w >> 8) * 5.9604644775390625e-08f; }
KAC_HD float uniform_oc(uint32_t w) { return (float)((w >> 8) + 1u) * 5.9604644775390625e-08f; }

// ---------------------------------------------------------------------------------------------
// exp / log in plain float arithmetic (about 1 ulp): the libm and CUDA versions differ in the last
// bit, and bit-identical CPU/CUDA noise needs one definition.
// ---------------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__)
KAC_HD float bits_to_float(uint32_t b) { return __uint_as_float(b); }
KAC_HD uint32_t float_to_bits(float f) { return __float_as_uint(f); }
#else
// __builtin_bit_cast (not a union) keeps the lane loops vectorizable.
KAC_HD float bits_to_float(uint32_t b) { return __builtin_bit_cast(float, b); }
KAC_HD uint32_t float_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }
#endif

// exp(x) for x in [-87, 0] (all this file needs): 2^k * e^r, |r| <= ln2/2, degree-6 Taylor.
KAC_HD float kac_exp(float x) {
  const float k = (float)(int)(x * 1.44269504f + (x < 0.0f ? -0.5f : 0.5f));
  float r = x - k * 0.693145751953125f;  // ln2 split hi/lo (Cody-Waite): exact product k*hi
  r = r - k * 1.428606765330187e-06f;
  float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-01f + r * (4.1666668e-02f +
                     r * (8.3333338e-03f + r * 1.3888889e-03f)))));
  return p * bits_to_float((uint32_t)((int)k + 127) << 23);
}

// log(x) for normal x > 0: x = 2^e * m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh((m-1)/(m+1)).
KAC_HD float kac_log(float x) {
  const uint32_t bits = float_to_bits(x);
  int e = (int)((bits >> 23) & 0xFFu) - 127;
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u);  // [1, 2)
  if (m > 1.41421356f) {
    m = m * 0.5f;
    e += 1;
  }
  const float f = (m - 1.0f) / (m + 1.0f);
  const float f2 = f * f;
  const float series = 2.0f * f * (1.0f + f2 * (3.3333334e-01f + f2 * (2.0000000e-01f +
                       f2 * (1.4285715e-01f + f2 * (1.1111111e-01f + f2 * 9.0909094e-02f)))));
  return (float)e * 0.693145751953125f + ((float)e * 1.428606765330187e-06f + series);
}

// ---------------------------------------------------------------------------------------------
// Lanes. Every algorithm below runs W elements in lock step: the CPU kernels use W = 32 so the
// compiler vectorizes across elements, the CUDA kernels use W = 1 (one element per thread). A lane
// that is done is masked, never changed, so each element sees the same float operations for any W:
// that is what keeps CPU and CUDA bit-identical.
//
// RNG layout of element e (key = seed): word k of the main stream is word k % 4 of Philox with
// counter (e_lo, e_hi, offset, k / 4). Word 0: sign (bit 0) and the first Poisson uniform (bits
// 8..31); word 1 + i: spacing i. Poisson chunks after the first (a s > 32) draw from the side stream,
// counter (e_lo, e_hi, offset, 0x80000000 | j / 4) for chunk 1 + j. Draw i of every lane then comes
// from the same block index, so W lanes share one Philox call.
// ---------------------------------------------------------------------------------------------
constexpr uint32_t kPoissonStream = 0x80000000u;

template <int W>
KAC_HD void philox_lanes(uint64_t seed, uint32_t offset, const uint64_t* element, uint32_t block,
                         uint32_t out[4][W]) {
  for (int l = 0; l < W; ++l) {
    const Philox4 r = philox4x32_10((uint32_t)element[l], (uint32_t)(element[l] >> 32), offset,
                                    block, (uint32_t)seed, (uint32_t)(seed >> 32));
    out[0][l] = r.v[0];
    out[1][l] = r.v[1];
    out[2][l] = r.v[2];
    out[3][l] = r.v[3];
  }
}

// The lane algorithms draw their Philox blocks through `Rng::lanes<W>`: this portable one by
// default; the CPU kernels pass one with an AVX-512 path (csrc/cpu/kac_cpu.cpp), same numbers.
struct PortablePhilox {
  template <int W>
  KAC_HD static void lanes(uint64_t seed, uint32_t offset, const uint64_t* element, uint32_t block,
                           uint32_t out[4][W]) {
    philox_lanes<W>(seed, offset, element, block, out);
  }
};

// Lane masks are int32 (0 or 1), not bool, so they vectorize alongside the float lanes.
template <int W>
KAC_HD bool any_lane(const int32_t* flags) {
  int32_t any = 0;
  for (int l = 0; l < W; ++l) any |= flags[l];
  return any != 0;
}

// ---------------------------------------------------------------------------------------------
// Exact Kac displacement X(s) of a 1-D Kac process (rate a, speed c) started at 0.
// n ~ Poisson(a s) switches by inverse CDF (in chunks of mean <= 32 so e^{-mean} stays normal),
// then X = sigma c s (S_even - S_odd) / (S_even + S_odd) with S_* the sums of the n+1 Exp(1)
// spacings of even / odd index, each taken as -log of a product of uniforms (two logs per element).
// lambda = a s, reach = c s per lane; x_out in [-reach, reach].
// ---------------------------------------------------------------------------------------------
constexpr float kPoissonChunk = 32.0f;
constexpr int kPoissonCap = 256;  // P(Poisson(32) > 256) is far below float resolution
constexpr float kTwo64 = 1.8446744073709552e+19f;
constexpr float kTwoMinus64 = 5.421010862427522e-20f;
constexpr float kLog2Times64 = 44.3614195558365f;

// The inverse-CDF search of one Poisson chunk visits cdf_0 = e^{-mean}, cdf_j = cdf_{j-1} + p_j,
// p_j = p_{j-1} (mean / j), and stops at the first j with u < cdf_j, at j = kPoissonCap, or where
// the float CDF stops growing. Lanes that share the mean (all lanes of a noise_target block share
// t) can read these numbers from one table instead of each computing them: then
// n = #{j < length : u >= cdf[j]}, the same count as the per-lane search (same float operations).
// One step of that recurrence (both the table and the per-lane search use it).
KAC_HD float poisson_next_p(float p, float mean, int j) { return p * (mean / (float)j); }

struct PoissonTable {
  float mean = -1.0f;  // no table yet
  int length = 0;  // cdf[0 .. length): the search never compares u beyond
  float cdf[kPoissonCap];
};

KAC_HD void fill_poisson_table(float mean, PoissonTable* table) {
  float p = kac_exp(-mean), cdf = p;
  table->mean = mean;
  table->cdf[0] = cdf;
  int length = 1;
  for (int j = 1; j < kPoissonCap; ++j) {
    const float p_next = poisson_next_p(p, mean, j);
    const float cdf_next = cdf + p_next;
    if (!(cdf_next > cdf)) break;
    p = p_next;
    cdf = cdf_next;
    table->cdf[length++] = cdf;
  }
  table->length = length;
}

// Tables of the two chunk means a shared lambda produces (kPoissonChunk and the remainder), kept
// across calls: a CPU task meets the same t in consecutive blocks.
struct PoissonCache {
  PoissonTable full, rest;
  KAC_HD const PoissonTable& get(float mean) {
    PoissonTable& slot = mean == kPoissonChunk ? full : rest;
    if (!(slot.mean == mean)) fill_poisson_table(mean, &slot);
    return slot;
  }
};

// Switches: sign[l], n[l] ~ Poisson(lambda[l]) and the Philox block 0 (word 0: sign and first
// Poisson uniform; words 1..3: the first spacings). cache may be null (per-lane search only).
template <int W, class Rng = PortablePhilox>
KAC_HD void kac_switches_lanes(uint64_t seed, uint32_t offset, const uint64_t* element,
                               const float* lambda, PoissonCache* cache, float* sign, int32_t* n,
                               uint32_t block0[4][W]) {
  uint32_t side[4][W], u_bits[W];
  float u[W], remaining[W], mean[W], p[W], cdf[W];
  int32_t active[W], searching[W];

  Rng::template lanes<W>(seed, offset, element, 0u, block0);
  for (int l = 0; l < W; ++l) {
    sign[l] = (block0[0][l] & 1u) ? -1.0f : 1.0f;  // bit 0 is unused by the 24-bit uniform
    u_bits[l] = block0[0][l];
    remaining[l] = lambda[l];
    n[l] = 0;
    active[l] = 1;
  }
  for (int chunk = 0;; ++chunk) {
    if (chunk > 0) {
      const int j = chunk - 1;
      if ((j & 3) == 0) Rng::template lanes<W>(seed, offset, element, kPoissonStream | (uint32_t)(j >> 2), side);
      for (int l = 0; l < W; ++l) u_bits[l] = side[j & 3][l];
    }
    // The table serves a chunk when every lane is active with one mean (then lane 0's).
    int32_t shared = cache != nullptr;
    uint32_t top_bits = 0;  // the largest uniform, as bits: uniform_co is monotone in w >> 8
    for (int l = 0; l < W; ++l) {
      u[l] = uniform_co(u_bits[l]);
      mean[l] = remaining[l] < kPoissonChunk ? remaining[l] : kPoissonChunk;
      const uint32_t top = u_bits[l] >> 8;
      top_bits = top > top_bits ? top : top_bits;
    }
    for (int l = 0; l < W; ++l) shared &= active[l] & (int32_t)(mean[l] == mean[0]);
    if (shared) {
      const PoissonTable& table = cache->get(mean[0]);
      const float u_max = uniform_co(top_bits << 8);
      for (int j = 0; j < table.length && table.cdf[j] <= u_max; ++j) {
        const float c = table.cdf[j];
        for (int l = 0; l < W; ++l) n[l] += (int32_t)(u[l] >= c);
      }
    } else {
      for (int l = 0; l < W; ++l) {
        p[l] = kac_exp(-mean[l]);
        cdf[l] = p[l];
        searching[l] = active[l] & (int32_t)(u[l] >= cdf[l]);
      }
      for (int j = 1; j <= kPoissonCap && any_lane<W>(searching); ++j) {
        for (int l = 0; l < W; ++l) {
          const float p_next = poisson_next_p(p[l], mean[l], j);
          const float cdf_prev = cdf[l];
          const float cdf_next = cdf_prev + p_next;
          p[l] = searching[l] ? p_next : p[l];
          cdf[l] = searching[l] ? cdf_next : cdf[l];
          n[l] += searching[l];
          // Stop where the float CDF stops growing (it saturates just below 1): the tail beyond
          // is below float resolution, and the top uniforms must not run on to the cap.
          searching[l] = searching[l] & (int32_t)(u[l] >= cdf[l]) & (int32_t)(j < kPoissonCap) &
                         (int32_t)(cdf_next > cdf_prev);
        }
      }
    }
    for (int l = 0; l < W; ++l) {
      const float left = remaining[l] - mean[l];
      // `left < remaining` stops lanes whose mean no longer decreases (a s = inf or >= 2^29):
      // garbage in, but never an endless loop on a GPU that skips the host-side value checks.
      active[l] = active[l] & (int32_t)(left > 0.0f) & (int32_t)(left < remaining[l]);
      remaining[l] = active[l] ? left : remaining[l];
    }
    if (!any_lane<W>(active)) break;
  }
}

// Spacings: the fraction (S_even - S_odd) / (S_even + S_odd) in [-1, 1] of each lane from its n+1
// uniforms (products of the even / odd ones); X = sign reach frac. block0: the lanes' Philox block
// 0 from the switches phase (words 1..3 are the first spacings), or null to draw it again (the CPU
// kernels, which regroup lanes by n: one more Philox block is cheaper there than a gather of three
// words). Lanes run to the largest n among them, so callers that can group lanes of similar n waste
// fewer Philox calls.
template <int W, class Rng = PortablePhilox>
KAC_HD void kac_spacings_lanes(uint64_t seed, uint32_t offset, const uint64_t* element,
                               const int32_t* n, const uint32_t (*block0)[W], float* frac) {
  uint32_t words[4][W];
  float prod[2][W];
  int rescales[2][W];
  int max_n = 0;
  if (block0 == nullptr) {
    Rng::template lanes<W>(seed, offset, element, 0u, words);
  } else {
    for (int w = 1; w < 4; ++w)
      for (int l = 0; l < W; ++l) words[w][l] = block0[w][l];
  }
  for (int l = 0; l < W; ++l) {
    prod[0][l] = prod[1][l] = 1.0f;
    rescales[0][l] = rescales[1][l] = 0;
    max_n = n[l] > max_n ? n[l] : max_n;
  }
  for (int i = 0; i <= max_n; ++i) {
    const int k = 1 + i;
    if ((k & 3) == 0) Rng::template lanes<W>(seed, offset, element, (uint32_t)(k >> 2), words);
    const int parity = i & 1;
    for (int l = 0; l < W; ++l) {
      const bool live = i <= n[l];
      float q = prod[parity][l] * uniform_oc(words[k & 3][l]);
      const bool small = q < kTwoMinus64;  // renormalize: the product stays a normal float
      q = small ? q * kTwo64 : q;
      prod[parity][l] = live ? q : prod[parity][l];
      rescales[parity][l] += (live & small) ? 1 : 0;
    }
  }
  for (int l = 0; l < W; ++l) {
    const float s_even = (float)rescales[0][l] * kLog2Times64 - kac_log(prod[0][l]);
    const float s_odd = (float)rescales[1][l] * kLog2Times64 - kac_log(prod[1][l]);
    const float total = s_even + s_odd;
    // total == 0 only if every uniform was exactly 1 (probability 2^-24 per draw): the atom.
    frac[l] = total > 0.0f ? (s_even - s_odd) / total : 1.0f;
  }
}

// Both phases for lanes of consecutive elements first_element + l.
template <int W>
KAC_HD void kac_sample_lanes(uint64_t seed, uint32_t offset, uint64_t first_element,
                             const float* lambda, const float* reach, float* x_out) {
  uint64_t element[W];
  uint32_t block0[4][W];
  float sign[W], frac[W];
  int32_t n[W];
  for (int l = 0; l < W; ++l) element[l] = first_element + (uint64_t)l;
  kac_switches_lanes<W>(seed, offset, element, lambda, nullptr, sign, n, block0);
  kac_spacings_lanes<W>(seed, offset, element, n, block0, frac);
  for (int l = 0; l < W; ++l) x_out[l] = sign[l] * reach[l] * frac[l];
}

// ---------------------------------------------------------------------------------------------
// Conditional velocity v_K(s, x) = E[V(s) | X(s) = x] = a x / (a s + h(z)), z = a r / c,
// r = sqrt(c^2 s^2 - x^2), h(z) = z I0(z) / I1(z) by its continued fraction
//   h = 2 + z^2/(4 + z^2/(6 + ...)), bottom-up from an odd depth D(z) (truncation error < 2e-8
// relative for z <= 250, about 2/3 of the levels of the earlier 8 + 4 sqrt(z) for z <= 9), two
// levels per division: from acc_{k+1}, acc_{k-1} = 2(k-1) + z^2 acc_{k+1} / (2k acc_{k+1} + z^2).
// Each lane keeps its own depth. On and beyond the cone |x| >= c s (1 - eps): c sign(x).
// ---------------------------------------------------------------------------------------------
KAC_HD int cf_depth(float z) { return (3 + (int)(3.25f * sqrtf(z) + 0.12f * z)) | 1; }

// c s - |x| for |x| near the cone: c s is rounded, and near the cone that rounding error would be
// most of the gap. Dekker's exact product (Veltkamp split, no FMA) gives c s = hi + lo exactly;
// hi - |x| is then exact (Sterbenz), so the gap keeps full relative precision.
KAC_HD float gap_to_cone(float c, float s, float ax) {
  const float hi = c * s;
  float t = 4097.0f * c;
  const float c_hi = t - (t - c), c_lo = c - c_hi;
  t = 4097.0f * s;
  const float s_hi = t - (t - s), s_lo = s - s_hi;
  const float lo = ((c_hi * s_hi - hi) + c_hi * s_lo + c_lo * s_hi) + c_lo * s_lo;
  return (hi - ax) + lo;
}

template <int W>
KAC_HD void kac_velocity_lanes(const float* s, const float* x, float a, float c, float eps,
                               float* v_out) {
  float z2[W], acc[W];
  int depth[W];
  int max_depth = 0;
  for (int l = 0; l < W; ++l) {
    const float reach = c * s[l];
    const float ax = fabsf(x[l]);
    const float gap = gap_to_cone(c, s[l], ax) * (reach + ax);  // (cs - |x|)(cs + |x|), factored
    const float r = sqrtf(gap > 0.0f ? gap : 0.0f);  // not fmaxf: that one does not vectorize
    const float z = a * r / c;
    z2[l] = z * z;
    depth[l] = cf_depth(z);
    acc[l] = 2.0f * (float)depth[l];
    max_depth = max_depth > depth[l] ? max_depth : depth[l];
  }
  for (int k = max_depth - 1; k >= 2; k -= 2) {  // depths are odd: pairs (k, k - 1) down to (2, 1)
    for (int l = 0; l < W; ++l) {
      const float next = 2.0f * (float)(k - 1) + z2[l] * acc[l] / (2.0f * (float)k * acc[l] + z2[l]);
      acc[l] = k < depth[l] ? next : acc[l];
    }
  }
  for (int l = 0; l < W; ++l) {
    const float reach = c * s[l];
    const float ax = fabsf(x[l]);
    const float on_cone = x[l] > 0.0f ? c : (x[l] < 0.0f ? -c : 0.0f);
    const float inside = a * x[l] / (a * s[l] + acc[l]);
    v_out[l] = ax >= reach * (1.0f - eps) ? on_cone : inside;
  }
}

// ---------------------------------------------------------------------------------------------
// Schedules: signal f(t) = 1 - t/T, clock g(t) = t ("t") or T (t/T)^2 ("t2").
// ---------------------------------------------------------------------------------------------
enum Clock : int { kClockLinear = 0, kClockQuadratic = 1 };

struct Schedule {
  float f, df, g, dg;
};

KAC_HD Schedule schedule(float t, float T, int clock) {
  Schedule out;
  const float tau = t / T;
  out.f = 1.0f - tau;
  out.df = -1.0f / T;
  out.g = clock == kClockQuadratic ? T * tau * tau : t;
  out.dg = clock == kClockQuadratic ? 2.0f * tau : 1.0f;
  return out;
}

// Flow-matching pair: x_t = f x0 + K_{g(t)}, u = f' x0 + g' v_K(g, K).
KAC_HD void flow_pair(const Schedule& sch, float x0, float k, float v, float* x_t, float* u) {
  *x_t = sch.f * x0 + k;
  *u = sch.df * x0 + sch.dg * v;
}

template <int W>
KAC_HD void noise_target_lanes(uint64_t seed, uint32_t offset, uint64_t first_element,
                               const float* x0, const float* t, float a, float c, float T,
                               int clock, float eps, float* x_t, float* u) {
  Schedule sch[W];
  float lambda[W], reach[W], g[W], k[W], v[W];
  for (int l = 0; l < W; ++l) {
    sch[l] = schedule(t[l], T, clock);
    g[l] = sch[l].g;
    lambda[l] = a * g[l];
    reach[l] = c * g[l];
  }
  kac_sample_lanes<W>(seed, offset, first_element, lambda, reach, k);
  kac_velocity_lanes<W>(g, k, a, c, eps, v);
  for (int l = 0; l < W; ++l) flow_pair(sch[l], x0[l], k[l], v[l], &x_t[l], &u[l]);
}

// ---------------------------------------------------------------------------------------------
// Sampler step (time runs from T down to 0, step h > 0), one element:
//   v  = v_u + w (v_c - v_u)               (velocity-space guidance; v = v_c when unguided)
//   x' = x - h (alpha v + beta v_prev)     (Euler: 1, 0; AB-2: 1 + r/2, -r/2; Heun 2nd stage:
//                                           1/2, 1/2; midpoint stages: Euler with h/2, h)
// then optionally clamp x' to [-1, 1] (the last step).
// ---------------------------------------------------------------------------------------------
KAC_HD float guided_velocity(float v_cond, float v_uncond, float w) {
  return v_uncond + w * (v_cond - v_uncond);
}

KAC_HD float step_position(float x, float v, float v_prev, float h, float alpha, float beta,
                           bool clamp) {
  const float x_new = x - h * (alpha * v + beta * v_prev);
  if (!clamp) return x_new;
  return fminf(fmaxf(x_new, -1.0f), 1.0f);
}

}  // namespace kac
