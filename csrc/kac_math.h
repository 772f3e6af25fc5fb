// Kac-process math shared by the CPU and CUDA kernels: one definition, two launchers.
//
// Everything here is plain IEEE float arithmetic (+, -, *, /, sqrt) plus our own exp/log
// polynomials, compiled without FMA contraction (-ffp-contract=off / -fmad=false), so the CPU and
// CUDA backends produce bit-identical numbers for the same (seed, offset).
// Math: ../shared/docs/kac-math.md sections 3-5; Python mirror: kacfast/ops/reference.py.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define KAC_HD __host__ __device__ __forceinline__
#else
#define KAC_HD inline
#endif

namespace kac {

// ---------------------------------------------------------------------------------------------
// Counter-based RNG: Philox4x32-10 (Salmon et al., SC'11). Stream of one element:
// key = seed, counter = (element_lo, element_hi, offset, block); draw k uses word k%4 of block k/4.
// ---------------------------------------------------------------------------------------------
struct Philox4 {
  uint32_t v[4];
};

KAC_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = (uint64_t)a * (uint64_t)b;
  *hi = (uint32_t)(p >> 32);
  *lo = (uint32_t)p;
}

KAC_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                             uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  Philox4 out = {{c0, c1, c2, c3}};
  return out;
}

// Sequential draws from one element's stream; refills four words per Philox call.
struct ElementStream {
  uint32_t key0, key1, elem_lo, elem_hi, offset;
  uint32_t block;
  int used;  // words of `cache` already handed out (4 = empty)
  Philox4 cache;

  KAC_HD ElementStream(uint64_t seed, uint32_t offset_, uint64_t element)
      : key0((uint32_t)seed), key1((uint32_t)(seed >> 32)), elem_lo((uint32_t)element),
        elem_hi((uint32_t)(element >> 32)), offset(offset_), block(0), used(4) {}

  KAC_HD uint32_t next() {
    if (used == 4) {
      cache = philox4x32_10(elem_lo, elem_hi, offset, block, key0, key1);
      ++block;
      used = 0;
    }
    return cache.v[used++];
  }
};

// Top 24 bits -> float exactly: [0, 1) and (0, 1].
KAC_HD float uniform_co(uint32_t w) { return (float)(w >> 8) * 5.9604644775390625e-08f; }
KAC_HD float uniform_oc(uint32_t w) { return (float)((w >> 8) + 1u) * 5.9604644775390625e-08f; }

// ---------------------------------------------------------------------------------------------
// exp / log in plain float arithmetic (about 1 ulp): the libm and CUDA versions differ in the last
// bit, and bit-identical CPU/CUDA noise needs one definition.
// ---------------------------------------------------------------------------------------------
KAC_HD float bits_to_float(uint32_t b) {
  union { uint32_t u; float f; } cvt;
  cvt.u = b;
  return cvt.f;
}
KAC_HD uint32_t float_to_bits(float f) {
  union { uint32_t u; float f; } cvt;
  cvt.f = f;
  return cvt.u;
}

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
// Exact Kac displacement X(s) of a 1-D Kac process (rate a, speed c) started at 0.
// n ~ Poisson(a s) switches by inverse CDF (in chunks of mean <= 32 so e^{-mean} stays normal),
// then X = sigma c s (S_even - S_odd) / (S_even + S_odd) with S_* sums of the n+1 Exp(1) spacings,
// each sum taken as -log of a product of uniforms (two logs per element, whatever n is).
// ---------------------------------------------------------------------------------------------
constexpr float kPoissonChunk = 32.0f;
constexpr int kPoissonCap = 256;  // P(Poisson(32) > 256) is far below float resolution
constexpr float kTwo64 = 1.8446744073709552e+19f;
constexpr float kTwoMinus64 = 5.421010862427522e-20f;
constexpr float kLog2Times64 = 44.3614195558365f;

KAC_HD int poisson_switches(float lambda, ElementStream& rng, float* sign) {
  const uint32_t first = rng.next();
  *sign = (first & 1u) ? -1.0f : 1.0f;  // bit 0 is unused by the 24-bit uniform
  float u = uniform_co(first);
  int n = 0;
  float remaining = lambda;
  while (true) {
    const float mean = remaining < kPoissonChunk ? remaining : kPoissonChunk;
    float p = kac_exp(-mean);
    float cdf = p;
    int j = 0;
    while (u >= cdf && j < kPoissonCap) {
      ++j;
      p = p * (mean / (float)j);
      cdf = cdf + p;
    }
    n += j;
    remaining = remaining - mean;
    if (!(remaining > 0.0f)) break;
    u = uniform_co(rng.next());
  }
  return n;
}

// -log(prod) kept exact over any number of factors: renormalize by 2^64 when the product gets small.
struct LogProduct {
  float prod = 1.0f;
  int rescales = 0;
  KAC_HD void mul(float u) {
    prod = prod * u;
    if (prod < kTwoMinus64) {
      prod = prod * kTwo64;
      ++rescales;
    }
  }
  KAC_HD float neg_log() const { return (float)rescales * kLog2Times64 - kac_log(prod); }
};

// lambda = a s, reach = c s. Returns X in [-reach, reach].
KAC_HD float kac_sample(float lambda, float reach, ElementStream& rng) {
  float sign;
  const int n = poisson_switches(lambda, rng, &sign);
  LogProduct even, odd;
  for (int i = 0; i <= n; ++i) {
    const float u = uniform_oc(rng.next());
    if (i & 1) odd.mul(u); else even.mul(u);
  }
  const float s_even = even.neg_log();
  const float s_odd = odd.neg_log();
  const float total = s_even + s_odd;
  // total == 0 only if every uniform was exactly 1 (probability 2^-24 per draw): the atom.
  const float frac = total > 0.0f ? (s_even - s_odd) / total : 1.0f;
  return sign * reach * frac;
}

// ---------------------------------------------------------------------------------------------
// Conditional velocity v_K(s, x) = E[V(s) | X(s) = x] = a x / (a s + h(z)), z = a r / c,
// r = sqrt(c^2 s^2 - x^2), h(z) = z I0(z) / I1(z) by its continued fraction (bottom-up, depth
// 8 + 4 sqrt(z): relative error < 3e-8 for z <= 150). On and beyond the cone: c sign(x).
// ---------------------------------------------------------------------------------------------
KAC_HD float kac_h(float z) {
  const float z2 = z * z;
  const int depth = 8 + (int)(4.0f * sqrtf(z));
  float acc = 2.0f * (float)depth;
  for (int k = depth - 1; k >= 1; --k) acc = 2.0f * (float)k + z2 / acc;
  return acc;
}

KAC_HD float kac_velocity(float s, float x, float a, float c, float eps) {
  const float reach = c * s;
  const float ax = x < 0.0f ? -x : x;
  if (ax >= reach * (1.0f - eps)) return x > 0.0f ? c : (x < 0.0f ? -c : 0.0f);
  const float gap = (reach - ax) * (reach + ax);  // factored: no cancellation near the cone
  const float r = sqrtf(gap > 0.0f ? gap : 0.0f);
  const float z = a * r / c;
  return a * x / (a * s + kac_h(z));
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
  if (clock == kClockQuadratic) {
    out.g = T * tau * tau;
    out.dg = 2.0f * tau;
  } else {
    out.g = t;
    out.dg = 1.0f;
  }
  return out;
}

// One element of the flow-matching pair: x_t = f x0 + K_{g(t)}, u = f' x0 + g' v_K(g, K).
struct NoiseTarget {
  float x_t, u;
};

KAC_HD NoiseTarget noise_target(float x0, const Schedule& sch, float a, float c, float eps,
                                ElementStream& rng) {
  const float k = kac_sample(a * sch.g, c * sch.g, rng);
  NoiseTarget out;
  out.x_t = sch.f * x0 + k;
  out.u = sch.df * x0 + sch.dg * kac_velocity(sch.g, k, a, c, eps);
  return out;
}

}  // namespace kac
