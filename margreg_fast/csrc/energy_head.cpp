// Native CPU kernel of the fused energy head, registered as torch.ops.margreg_fast.*.
//
// Semantics: exactly margreg_fast/_ops/reference.py. Per row, with p0 = softmax(z0), d = z1 - z0,
// dbar = sum_k p0_k d_k and u = d - dbar:
//
//     D = dbar + log1p( sum_k p0_k phi(u_k) ),   phi(u) = exp(u) - 1 - u   (Taylor series for |u| < 1/2)
//
// falling back to (m1 - m0) + (log s1 - log s0) when a class is -inf in one row only (or the
// difference overflows) or some u_k > U_MAX. Rows holding NaN/+inf give NaN; all -inf rows give NaN
// exactly as torch.logsumexp(z1) - torch.logsumexp(z0).
//
// Forward, parallel over rows. Short rows (C <= kLaneMaxClasses) go W at a time, transposed so
// that lane j of every vector holds row j: each per-row step below is then one vector operation for
// W rows, with no horizontal reductions (lanes_forward; its rare special rows redo the row path).
// Longer rows go one at a time while cache-hot:
//   pass 1: row maxima m0, m1 (NaN-propagating; a NaN/+inf maximum flags the row invalid);
//   pass 2: e0 = exp(z0 - m0) (kept in a per-thread scratch row), s0 = sum e0, sum e0 d, sum e0 |d|,
//           and a flag for an infinite d (a class masked in one row only);
//   pass 3: sum e0 * phi(u), phi by its series when all lanes have |u| < 1/2 (no exp), by
//           exp(u) - 1 - u when none do, blended otherwise;
//   log s1 (saved for the backward): lse1 = lse0 + D gives log s1 = (m0 - m1) + log s0 + D with no
//           exp over z1 while sum p0 |d| <= 1; otherwise (and on fallback rows) pass 4 sums exp(z1 - m1).
// So the common forward costs one exp per element, the backward two.
// Backward, one pass: dz0 = (gCE - gD) p0 - gCE onehot(y), dz1 = gD p1 with p = exp((z - m) - log s)
// rebuilt from the saved stats.
//
// Accumulation in float for float/bfloat16/float16 input (half rows are first converted to a
// per-thread float row), in double for double. Vectorised with at::vec::Vectorized: the loader
// (margreg_fast/_ops/native) compiles it on first use with -mavx2 -mfma -mf16c -DCPU_CAPABILITY_AVX2 when
// torch reports AVX2 or AVX512 for the CPU that runs it (then float exp is an inlined Cephes polynomial,
// ~2 ulp, and double exp Sleef's, <= 1 ulp); otherwise the same code compiles to at::vec's portable
// fallback. Only ATen and torch/library.h are included (no Python headers): the ops are registered
// with torch.library and the library is loaded with torch.ops.load_library.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/irange.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using at::vec::Vectorized;

// Must equal reference.U_MAX and reference.PHI_SERIES_CUTOFF.
constexpr double kUMax = 60.0;
constexpr double kSeriesCutoff = 0.5;
// Rows with sum_k p0_k |d_k| up to this derive log s1 from D instead of summing exp(z1 - m1).
constexpr double kDerivedSpreadMax = 1.0;
// Sums run over blocks of this many vectors, each block's partial then added to the row total:
// about kBlockVecs + C / (kBlockVecs * W) rounding steps instead of C / W (as torch's cascade sum).
constexpr int64_t kBlockVecs = 64;
// Rows per parallel chunk are chosen so a chunk holds at least this many elements.
constexpr int64_t kGrainElements = 32768;
// Forward rows of at most this many classes run W at a time, one per vector lane (lanes_forward): a
// tuning constant, the largest C at which the lane path was timed faster per row than the row path
// when it was introduced (commit 73b94a1; no result file holds those timings: rerun before changing it).
constexpr int64_t kLaneMaxClasses = 128;

template <typename T>
T inv_factorial(int k) {
  double f = 1.0;
  for (int i = 2; i <= k; ++i) f *= i;
  return static_cast<T>(1.0 / f);
}

// exp on a vector. float under AVX2: Cephes expf (Cody-Waite reduction x = n ln2 + r, degree-6
// polynomial, ~1 ulp), inlined instead of a call into Sleef. 2^n is applied as 2^(n/2) 2^(n - n/2)
// so subnormal results (x down to -103.97) come out right, as the reference's exp gives them;
// below that the result is 0 (-inf included), above 88.72 +inf, and NaN stays NaN.
// Elsewhere: at::vec's exp (Sleef, <= 1 ulp).
#define MF_INLINE inline __attribute__((always_inline))

template <typename T>
MF_INLINE Vectorized<T> vexp(const Vectorized<T>& v) {
  return v.exp();
}
#if defined(CPU_CAPABILITY_AVX2)
template <>
MF_INLINE Vectorized<float> vexp(const Vectorized<float>& v) {
  const __m256 x = v;
  const __m256 lo = _mm256_set1_ps(-104.0f), hi = _mm256_set1_ps(88.72283935546875f);
  const __m256 xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));  // NaN in x passes through (2nd operand)
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i ni = _mm256_cvtps_epi32(n);  // in [-150, 128]
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 out = _mm256_mul_ps(_mm256_mul_ps(y, p1), p2);
  out = _mm256_blendv_ps(out, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  out = _mm256_blendv_ps(out, _mm256_set1_ps(std::numeric_limits<float>::infinity()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return out;
}
#endif

// Bit i set where lane i of a comparison mask is true.
template <typename T>
inline int true_lanes(const Vectorized<T>& mask) {
  constexpr int full = (1 << Vectorized<T>::size()) - 1;
  return full & ~mask.zero_mask();
}

template <typename T>
MF_INLINE T reduce_max_nan(const Vectorized<T>& v) {
  T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T out = lanes[0];
  for (int i = 1; i < Vectorized<T>::size(); ++i) {
    if (std::isnan(lanes[i]) || lanes[i] > out) out = lanes[i];
  }
  return out;
}

template <typename T>
MF_INLINE T reduce_sum(const Vectorized<T>& v) {
  T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T out = 0;
  for (int i = 0; i < Vectorized<T>::size(); ++i) out += lanes[i];
  return out;
}

#if defined(CPU_CAPABILITY_AVX2)
// Shuffle-tree reductions (the scalar loops above cost as much as a short row's arithmetic).
template <>
MF_INLINE float reduce_max_nan(const Vectorized<float>& v) {
  using V = Vectorized<float>;  // at::vec::maximum propagates NaN
  const __m256 x = v;
  V m = at::vec::maximum(V(_mm256_castps128_ps256(_mm256_castps256_ps128(x))),
                         V(_mm256_castps128_ps256(_mm256_extractf128_ps(x, 1))));
  __m128 h = _mm256_castps256_ps128(m);
  h = _mm256_castps256_ps128(at::vec::maximum(V(_mm256_castps128_ps256(h)),
                                              V(_mm256_castps128_ps256(_mm_movehl_ps(h, h)))));
  h = _mm256_castps256_ps128(at::vec::maximum(V(_mm256_castps128_ps256(h)),
                                              V(_mm256_castps128_ps256(_mm_shuffle_ps(h, h, 1)))));
  return _mm_cvtss_f32(h);
}

template <>
MF_INLINE float reduce_sum(const Vectorized<float>& v) {
  const __m256 x = v;
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}
#endif

// phi(u) = exp(u) - 1 - u on a vector: Horner series u^2 (1/2! + u/3! + ... + u^8/10!) where
// |u| < 1/2 (the reference's evaluation order), exp(u) - 1 - u elsewhere.
template <typename T>
struct Phi {
  using V = Vectorized<T>;
  V coef[9];
  Phi() {
    for (int k = 10; k >= 2; --k) coef[10 - k] = V(inv_factorial<T>(k));
  }
  MF_INLINE V series(const V& u) const {
    V s(T(0));
    for (int i = 0; i < 9; ++i) s = at::vec::fmadd(s, u, coef[i]);
    return s * u * u;
  }
  MF_INLINE V direct(const V& u) const { return vexp(u) - V(T(1)) - u; }
  MF_INLINE V operator()(const V& u) const {
    const V small = u.abs() < V(static_cast<T>(kSeriesCutoff));
    const int lanes = true_lanes(small);
    if (lanes == (1 << V::size()) - 1) return series(u);
    if (lanes == 0) return direct(u);
    return V::blendv(direct(u), series(u), small);
  }
};

// Calls step(k) for k = 0, W, 2W, ... < body, and flush() after every kBlockVecs calls and at the end.
template <typename Step, typename Flush>
inline void blocked(int64_t body, int64_t W, const Step& step, const Flush& flush) {
  for (int64_t start = 0; start < body; start += kBlockVecs * W) {
    const int64_t stop = std::min(body, start + kBlockVecs * W);
    for (int64_t k = start; k < stop; k += W) step(k);
    flush();
  }
}

// log1p(x) for x >= 0: its series to x^7 below 1e-3 (truncation < x^7 / 8 < 1.3e-22 relative),
// std::log1p above. The argument here, sum p0 phi(u) / s0 ~ var(u) / 2, is tiny for small steps, and
// the libm call costs as much as the rest of a short row.
template <typename T, typename X>
MF_INLINE X log1p_series(const X& x) {  // x (1 - x/2 + x^2/3 - ... + x^6/7), Horner; X is T or a vector of T
  X s(T(1) / T(7));
  for (int k = 6; k >= 1; --k) s = X(T(1) / T(k)) - x * s;
  return x * s;
}

template <typename T>
MF_INLINE T log1p_nonneg(T x) {
  return x < T(1e-3) ? log1p_series<T>(x) : std::log1p(x);
}

// The per-element difference d = z1 - z0, with d = 0 where both are -inf (a class masked in both
// rows), as in the reference.
template <typename T>
MF_INLINE Vectorized<T> difference(const Vectorized<T>& za, const Vectorized<T>& zb) {
  const Vectorized<T> d = zb - za;
  return d & (d == d);
}

template <typename T>
struct RowResult {
  T D, m0, log_s0, m1, log_s1;
  bool invalid;
};

// Loads a row chunk of `count` (< size) lanes, -inf in the rest: neutral for max, sum and d.
template <typename T>
MF_INLINE Vectorized<T> load_tail(const T* p, int64_t count) {
  using V = Vectorized<T>;
  return V::set(V(-std::numeric_limits<T>::infinity()), V::loadu(p, count), count);
}
#if defined(CPU_CAPABILITY_AVX2)
template <>
MF_INLINE Vectorized<float> load_tail(const float* p, int64_t count) {
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), _mm256_maskload_ps(p, mask),
                          _mm256_castsi256_ps(mask));
}
#endif

// The last C % W elements of every row of length C, read as one vector with -inf in the other lanes
// (neutral for max, sum and d). When the row holds a full vector, the read is an ordinary load of the
// row's last W elements with the first W - tail lanes (already covered by the body) masked: no
// masked or partial load. `keep` has all bits set on the lanes that belong to the tail.
template <typename T>
struct RowTail {
  using V = Vectorized<T>;
  int64_t body, tail;
  bool overlap;
  V keep;
  explicit RowTail(int64_t C) {
    constexpr int64_t W = V::size();
    body = C - C % W;
    tail = C - body;
    overlap = tail > 0 && C >= W;
    T ones[W], bits[W];
    (V(T(0)) == V(T(0))).store(ones);
    for (int64_t i = 0; i < W; ++i) bits[i] = (overlap ? i >= W - tail : i < tail) ? ones[i] : T(0);
    keep = V::loadu(bits);
  }
  MF_INLINE V load(const T* row) const {
    if (overlap) return V::blendv(V(-std::numeric_limits<T>::infinity()), V::loadu(row + body + tail - V::size()), keep);
    return load_tail(row + body, tail);
  }
};

// Stores the first `count` (< size) lanes (no vmaskmovps: its store form is slow on AMD cores).
template <typename T>
MF_INLINE void store_tail(const Vectorized<T>& v, T* p, int64_t count) {
  v.store(p, count);
}

// log1p(x) for x >= 0 on a vector, as log1p_nonneg lane by lane (Sleef log1p where x >= 1e-3).
template <typename T>
MF_INLINE Vectorized<T> log1p_nonneg(const Vectorized<T>& x) {
  using V = Vectorized<T>;
  const V series = log1p_series<T>(x);
  const V small = x < V(T(1e-3));
  if (true_lanes(small) == (1 << V::size()) - 1) return series;
  return V::blendv(x.log1p(), series, small);
}

// The numeric steps of the forward, each written once and shared by row_forward (one row: vectors
// run along the classes, per-row values are scalars T) and lanes_forward (W rows: lane j is row j,
// per-row values are vectors). Where both kinds of per-row value occur, X is T or Vectorized<T>.

// The shift m of a row: its maximum where finite, else 0 (all -inf rows; NaN/+inf rows are invalid).
template <typename T>
MF_INLINE T finite_or_zero(T max) {
  return std::isfinite(max) ? max : T(0);
}
template <typename T>
MF_INLINE Vectorized<T> finite_or_zero(const Vectorized<T>& max) {
  using V = Vectorized<T>;
  return V::blendv(V(T(0)), max, max.abs() < V(std::numeric_limits<T>::infinity()));
}

// Pass 2 over the classes, one vector at a time: e0 = exp(z0 - m0) (returned, for pass 3), and the
// sums s0 = sum e0, dsum = sum e0 d, spread = sum e0 |d|; infinite_d flags lanes where some d is
// infinite (a class masked in one row only).
template <typename T>
struct Pass2Sums {
  using V = Vectorized<T>;
  V s0 = V(T(0)), dsum = V(T(0)), spread = V(T(0)), infinite_d = V(T(0));
  MF_INLINE V add(const V& za, const V& zb, const V& m0) {
    const V ea = vexp(za - m0);
    const V d = difference(za, zb);
    const V ad = d.abs();
    infinite_d = infinite_d | (ad == V(std::numeric_limits<T>::infinity()));
    s0 = s0 + ea;
    dsum = at::vec::fmadd(ea, d, dsum);
    spread = at::vec::fmadd(ea, ad, spread);
    return ea;
  }
  // Adds these (block) sums into `total` and starts again from zero.
  MF_INLINE void flush_into(Pass2Sums& total) {
    total.s0 = total.s0 + s0, total.dsum = total.dsum + dsum, total.spread = total.spread + spread;
    total.infinite_d = total.infinite_d | infinite_d;
    *this = Pass2Sums();
  }
};

// Pass 3 over the classes: u = d - dbar (centred_u), acc = sum e0 phi(u) (add); too_large flags
// lanes where some u > U_MAX (exp could overflow: the row takes the max-shifted fallback).
template <typename T>
struct Pass3Sum {
  using V = Vectorized<T>;
  V acc = V(T(0)), too_large = V(T(0));
  static MF_INLINE V centred_u(const V& za, const V& zb, const V& dbar) { return difference(za, zb) - dbar; }
  MF_INLINE void add(const V& u, const V& ea, const Phi<T>& phi) {
    too_large = too_large | (u > V(static_cast<T>(kUMax)));
    acc = at::vec::fmadd(ea, phi(u), acc);
  }
  MF_INLINE void flush_into(Pass3Sum& total) {
    total.acc = total.acc + acc, total.too_large = total.too_large | too_large;
    *this = Pass3Sum();
  }
};

// The centred form D = dbar + log1p(sum e0 phi(u) / s0), dbar = dsum / s0.
template <typename X>
MF_INLINE X centred_difference(const X& dbar, const X& phi_sum, const X& s0) {
  return dbar + log1p_nonneg(phi_sum / s0);
}

// lse1 = lse0 + D, so log s1 = (m0 - m1) + log s0 + D without an exp over z1. Its absolute error
// is that of D, a few ulps of sum_k p0_k |d_k|: no worse than the direct sum while that spread is
// <= kDerivedSpreadMax (derives_log_s1); wider rows (and non-finite D) sum exp(z1 - m1) directly.
template <typename X>
MF_INLINE X derived_log_s1(const X& m0, const X& m1, const X& log_s0, const X& D) {
  return ((m0 - m1) + log_s0) + D;
}
template <typename T>
MF_INLINE bool derives_log_s1(T D, T spread, T s0) {
  return std::isfinite(D) && spread <= static_cast<T>(kDerivedSpreadMax) * s0;
}
template <typename T>
MF_INLINE Vectorized<T> derives_log_s1(const Vectorized<T>& D, const Vectorized<T>& spread, const Vectorized<T>& s0) {
  using V = Vectorized<T>;
  return (D.abs() < V(std::numeric_limits<T>::infinity())) & (spread <= V(static_cast<T>(kDerivedSpreadMax)) * s0);
}

// The forward passes on one contiguous row in the accumulation type T.
// `e0` is scratch of at least C + V::size() elements.
template <typename T>
RowResult<T> row_forward(const T* a, const T* b, const RowTail<T>& tl, T* e0, const Phi<T>& phi) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  constexpr T inf = std::numeric_limits<T>::infinity();
  const int64_t body = tl.body, tail = tl.tail;

  // pass 1: maxima
  V vm0(-inf), vm1(-inf);
  for (int64_t k = 0; k < body; k += W) {
    vm0 = at::vec::maximum(vm0, V::loadu(a + k));
    vm1 = at::vec::maximum(vm1, V::loadu(b + k));
  }
  if (tail) {
    vm0 = at::vec::maximum(vm0, tl.load(a));
    vm1 = at::vec::maximum(vm1, tl.load(b));
  }
  const T max0 = reduce_max_nan(vm0), max1 = reduce_max_nan(vm1);
  RowResult<T> r;
  r.invalid = std::isnan(max0) || std::isnan(max1) || max0 == inf || max1 == inf;
  r.m0 = finite_or_zero(max0);
  r.m1 = finite_or_zero(max1);

  // pass 2, summed in blocks (`block`, then added to `total`)
  const V vm0s(r.m0);
  Pass2Sums<T> total, block;
  blocked(body, W, [&](int64_t k) { block.add(V::loadu(a + k), V::loadu(b + k), vm0s).store(e0 + k); },
          [&] { block.flush_into(total); });
  if (tail) {
    block.add(tl.load(a), tl.load(b), vm0s).store(e0 + body);
    block.flush_into(total);
  }
  const T sum0 = reduce_sum(total.s0);
  r.log_s0 = std::log(sum0);
  const bool mismatch = true_lanes(total.infinite_d) != 0;

  // log s1 = log sum exp(z1 - m1) by one more pass (pass 4), or derived from D.
  auto direct_log_s1 = [&] {
    const V vm1s(r.m1), zero(T(0));
    V s1(T(0)), bs1(T(0));
    blocked(body, W, [&](int64_t k) { bs1 = bs1 + vexp(V::loadu(b + k) - vm1s); }, [&] {
      s1 = s1 + bs1;
      bs1 = zero;
    });
    if (tail) s1 = s1 + vexp(tl.load(b) - vm1s);
    return std::log(reduce_sum(s1));
  };
  // The max-shifted difference (m1 - m0) + (log s1 - log s0), or lse1 - lse0 when either is infinite.
  auto shifted = [&] {
    const T lse0 = max0 == -inf ? -inf : r.m0 + r.log_s0;
    const T lse1 = max1 == -inf ? -inf : r.m1 + r.log_s1;
    return (std::isfinite(lse0) && std::isfinite(lse1)) ? (r.m1 - r.m0) + (r.log_s1 - r.log_s0) : lse1 - lse0;
  };
  if (r.invalid || mismatch) {
    r.log_s1 = direct_log_s1();
    r.D = r.invalid ? std::numeric_limits<T>::quiet_NaN() : shifted();
    return r;
  }

  // pass 3: centred phi sum
  const T dbar = reduce_sum(total.dsum) / sum0;
  const V vdbar(dbar);
  Pass3Sum<T> phi_total, phi_block;
  blocked(body, W, [&](int64_t k) {
    phi_block.add(Pass3Sum<T>::centred_u(V::loadu(a + k), V::loadu(b + k), vdbar), V::loadu(e0 + k), phi);
  }, [&] { phi_block.flush_into(phi_total); });
  if (tail) {  // lanes outside the tail take u = 0: no part in the u > U_MAX test
    phi_block.add(Pass3Sum<T>::centred_u(tl.load(a), tl.load(b), vdbar) & tl.keep, V::loadu(e0 + body), phi);
    phi_block.flush_into(phi_total);
  }
  if (true_lanes(phi_total.too_large) != 0) {
    r.log_s1 = direct_log_s1();
    r.D = shifted();
    return r;
  }
  r.D = centred_difference(dbar, reduce_sum(phi_total.acc), sum0);
  r.log_s1 = derives_log_s1(r.D, reduce_sum(total.spread), sum0) ? derived_log_s1(r.m0, r.m1, r.log_s0, r.D)
                                                                   : direct_log_s1();
  return r;
}

// Lane-parallel results for W rows: lane j holds row j of the group.
template <typename T>
struct LaneResult {
  Vectorized<T> D, m0, log_s0, m1, log_s1;
  int special;  // bit j set: row j needs row_forward (invalid, a one-row mask, or some u > U_MAX)
};

// The forward on W short rows at once, lane j holding row j: the steps of row_forward, with every
// per-row step (maxima, sums, log, log1p) one vector operation for all W rows and no horizontal
// reductions. `a`, `b` hold the rows transposed (element k of row j at [k * W + j]); `e0` is
// scratch of C * W elements. Rows flagged in `special` take row_forward instead.
template <typename T>
LaneResult<T> lanes_forward(const T* a, const T* b, int64_t C, T* e0, const Phi<T>& phi) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const V inf(std::numeric_limits<T>::infinity());
  V max0(-std::numeric_limits<T>::infinity()), max1 = max0;
  for (int64_t k = 0; k < C; ++k) {
    max0 = at::vec::maximum(max0, V::loadu(a + k * W));
    max1 = at::vec::maximum(max1, V::loadu(b + k * W));
  }
  LaneResult<T> r;
  const V invalid = (max0 != max0) | (max1 != max1) | (max0 == inf) | (max1 == inf);
  r.m0 = finite_or_zero(max0);
  r.m1 = finite_or_zero(max1);

  Pass2Sums<T> sums;
  for (int64_t k = 0; k < C; ++k) sums.add(V::loadu(a + k * W), V::loadu(b + k * W), r.m0).store(e0 + k * W);
  r.log_s0 = sums.s0.log();
  const V dbar = sums.dsum / sums.s0;
  Pass3Sum<T> phi_sum;
  for (int64_t k = 0; k < C; ++k) {
    phi_sum.add(Pass3Sum<T>::centred_u(V::loadu(a + k * W), V::loadu(b + k * W), dbar), V::loadu(e0 + k * W), phi);
  }
  r.D = centred_difference(dbar, phi_sum.acc, sums.s0);
  r.special = true_lanes(invalid | sums.infinite_d | phi_sum.too_large);
  r.log_s1 = derived_log_s1(r.m0, r.m1, r.log_s0, r.D);
  const V derived = derives_log_s1(r.D, sums.spread, sums.s0);
  if (true_lanes(derived) != (1 << W) - 1) {
    V s1(T(0));
    for (int64_t k = 0; k < C; ++k) s1 = s1 + vexp(V::loadu(b + k * W) - r.m1);
    r.log_s1 = V::blendv(s1.log(), r.log_s1, derived);
  }
  return r;
}

// dz0 = (g_ce - g_d) p0, dz1 = g_d p1 on one row; the caller subtracts g_ce at the target.
template <typename T>
void row_backward(const T* a, const T* b, int64_t C, const T* st, T g_d, T g_ce, T* dz0, T* dz1) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const V m0(st[0]), ls0(st[1]), m1(st[2]), ls1(st[3]), c0(g_ce - g_d), c1(g_d);
  int64_t k = 0;
  for (; k + W <= C; k += W) {
    (c0 * vexp((V::loadu(a + k) - m0) - ls0)).store(dz0 + k);
    (c1 * vexp((V::loadu(b + k) - m1) - ls1)).store(dz1 + k);
  }
  if (k < C && C >= W) {  // overlap the last full vector: the map is elementwise, so rewriting is harmless
    k = C - W;
    (c0 * vexp((V::loadu(a + k) - m0) - ls0)).store(dz0 + k);
    (c1 * vexp((V::loadu(b + k) - m1) - ls1)).store(dz1 + k);
  } else if (k < C) {
    const int64_t n = C - k;
    store_tail(c0 * vexp((load_tail(a + k, n) - m0) - ls0), dz0 + k, n);
    store_tail(c1 * vexp((load_tail(b + k, n) - m1) - ls1), dz1 + k, n);
  }
}

// Rows to lanes: dst[k * W + j] = src[j * C + k] in the accumulation type, for W rows of length C.
template <typename T, typename scalar_t>
inline void rows_to_lanes(const scalar_t* src, int64_t C, T* dst) {
  constexpr int64_t W = Vectorized<T>::size();
  for (int64_t k = 0; k < C; ++k) {
    for (int64_t j = 0; j < W; ++j) dst[k * W + j] = static_cast<T>(src[j * C + k]);
  }
}

template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

void check_inputs(const at::Tensor& z0, const at::Tensor& z1, const std::optional<at::Tensor>& target) {
  TORCH_CHECK(z0.dim() == 2 && z1.dim() == 2, "energy_head: z0 and z1 must be 2-D (B, C), got ", z0.sizes(),
              " and ", z1.sizes());
  TORCH_CHECK(z0.sizes() == z1.sizes(), "energy_head: z0 and z1 shapes differ: ", z0.sizes(), " vs ", z1.sizes());
  TORCH_CHECK(z0.scalar_type() == z1.scalar_type(), "energy_head: z0 and z1 dtypes differ");
  TORCH_CHECK(z0.device().is_cpu() && z1.device().is_cpu(), "energy_head (native): CPU tensors only");
  TORCH_CHECK(at::isFloatingType(z0.scalar_type()), "energy_head: floating logits required, got ", z0.scalar_type());
  if (target.has_value()) {
    TORCH_CHECK(target->dim() == 1 && target->size(0) == z0.size(0), "energy_head: target must have shape (B,)");
    TORCH_CHECK(target->scalar_type() == at::kLong, "energy_head: target must be int64");
  }
}

inline int64_t grain_rows(int64_t C) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(C, 1)); }

// Row pointers in the accumulation type: the input row itself, or its conversion into `buf`.
template <typename scalar_t, typename T>
inline const T* as_acc(const scalar_t* row, int64_t C, T* buf) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    return row;
  } else {
    at::vec::convert(row, buf, C);
    return buf;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> energy_head_forward(const at::Tensor& z0_in, const at::Tensor& z1_in,
                                                                   const std::optional<at::Tensor>& target_in,
                                                                   int64_t ignore_index) {
  check_inputs(z0_in, z1_in, target_in);
  const at::Tensor z0 = z0_in.contiguous(), z1 = z1_in.contiguous();
  const int64_t B = z0.size(0), C = z0.size(1);
  const auto acc_dtype = z0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = z0.options().dtype(acc_dtype);
  at::Tensor D = at::empty({B}, opts), ce = at::empty({B}, opts), stats = at::empty({B, 4}, opts);
  const bool has_target = target_in.has_value();
  const at::Tensor target = has_target ? target_in->contiguous() : at::Tensor();
  if (B == 0) return {D, ce, stats};
  TORCH_CHECK(C > 0, "energy_head: C must be positive");

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z0.scalar_type(), "energy_head_forward", [&] {
    using T = acc_type_t<scalar_t>;
    constexpr bool convert = !std::is_same_v<scalar_t, T>;
    const scalar_t* pa = z0.const_data_ptr<scalar_t>();
    const scalar_t* pb = z1.const_data_ptr<scalar_t>();
    const int64_t* pt = has_target ? target.const_data_ptr<int64_t>() : nullptr;
    T* pD = D.mutable_data_ptr<T>();
    T* pce = ce.mutable_data_ptr<T>();
    T* pst = stats.mutable_data_ptr<T>();
    // Stores row i's results; its CE reads z0[i, y] from the input itself.
    auto emit = [&](int64_t i, const RowResult<T>& r) {
      pD[i] = r.D;
      T* st = pst + 4 * i;
      st[0] = r.m0, st[1] = r.log_s0, st[2] = r.m1, st[3] = r.log_s1;
      T ce_i = T(0);
      if (pt != nullptr && pt[i] != ignore_index) {
        const int64_t y = pt[i];
        // ValueError, worded as the Python check that other backends run (native.CHECKS_TARGET_RANGE).
        TORCH_CHECK_VALUE(y >= 0 && y < C, "target contains class index ", y, " outside [0, ", C,
                          ") (and not ignore_index=", ignore_index, ")");
        ce_i = r.invalid ? std::numeric_limits<T>::quiet_NaN() : r.log_s0 - (static_cast<T>(pa[i * C + y]) - r.m0);
      }
      pce[i] = ce_i;
    };
    at::parallel_for(0, B, grain_rows(C), [&](int64_t begin, int64_t end) {
      const Phi<T> phi;
      const RowTail<T> tl(C);
      constexpr int64_t W = Vectorized<T>::size();
      std::vector<T> e0(C + W), abuf(convert ? C : 0), bbuf(convert ? C : 0);
      auto by_row = [&](int64_t i) {
        const T* a = as_acc(pa + i * C, C, abuf.data());
        const T* b = as_acc(pb + i * C, C, bbuf.data());
        emit(i, row_forward(a, b, tl, e0.data(), phi));
      };
      int64_t i = begin;
      if (C <= kLaneMaxClasses) {  // short rows: W at a time, one per lane
        std::vector<T> a_lanes(C * W), b_lanes(C * W), e_lanes(C * W);
        T lanes[5][W];
        for (; i + W <= end; i += W) {
          rows_to_lanes(pa + i * C, C, a_lanes.data());
          rows_to_lanes(pb + i * C, C, b_lanes.data());
          const LaneResult<T> r = lanes_forward(a_lanes.data(), b_lanes.data(), C, e_lanes.data(), phi);
          r.D.store(lanes[0]), r.m0.store(lanes[1]), r.log_s0.store(lanes[2]), r.m1.store(lanes[3]);
          r.log_s1.store(lanes[4]);
          for (int64_t j = 0; j < W; ++j) {
            if ((r.special >> j) & 1) {
              by_row(i + j);
            } else {
              emit(i + j, RowResult<T>{lanes[0][j], lanes[1][j], lanes[2][j], lanes[3][j], lanes[4][j], false});
            }
          }
        }
      }
      for (; i < end; ++i) by_row(i);
    });
  });
  return {D, ce, stats};
}

std::tuple<at::Tensor, at::Tensor> energy_head_backward(const at::Tensor& z0_in, const at::Tensor& z1_in,
                                                        const std::optional<at::Tensor>& target_in,
                                                        int64_t ignore_index, const at::Tensor& stats_in,
                                                        const at::Tensor& grad_d_in,
                                                        const std::optional<at::Tensor>& grad_ce_in) {
  check_inputs(z0_in, z1_in, target_in);
  const at::Tensor z0 = z0_in.contiguous(), z1 = z1_in.contiguous();
  const int64_t B = z0.size(0), C = z0.size(1);
  const auto acc_dtype = z0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(stats_in.dim() == 2 && stats_in.size(0) == B && stats_in.size(1) == 4,
              "energy_head_backward: stats must have shape (B, 4)");
  TORCH_CHECK(grad_d_in.dim() == 1 && grad_d_in.size(0) == B, "energy_head_backward: grad_d must have shape (B,)");
  const at::Tensor stats = stats_in.to(acc_dtype).contiguous();
  const at::Tensor grad_d = grad_d_in.to(acc_dtype).contiguous();
  const bool use_ce = target_in.has_value() && grad_ce_in.has_value();
  at::Tensor target, grad_ce;
  if (use_ce) {
    TORCH_CHECK(grad_ce_in->dim() == 1 && grad_ce_in->size(0) == B,
                "energy_head_backward: grad_ce must have shape (B,)");
    target = target_in->contiguous();
    grad_ce = grad_ce_in->to(acc_dtype).contiguous();
  }
  at::Tensor dz0 = at::empty({B, C}, z0.options()), dz1 = at::empty({B, C}, z1.options());
  if (B == 0 || C == 0) return {dz0, dz1};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z0.scalar_type(), "energy_head_backward", [&] {
    using T = acc_type_t<scalar_t>;
    constexpr bool convert = !std::is_same_v<scalar_t, T>;
    const scalar_t* pa = z0.const_data_ptr<scalar_t>();
    const scalar_t* pb = z1.const_data_ptr<scalar_t>();
    scalar_t* po0 = dz0.mutable_data_ptr<scalar_t>();
    scalar_t* po1 = dz1.mutable_data_ptr<scalar_t>();
    const T* pst = stats.const_data_ptr<T>();
    const T* pgd = grad_d.const_data_ptr<T>();
    const int64_t* pt = use_ce ? target.const_data_ptr<int64_t>() : nullptr;
    const T* pgce = use_ce ? grad_ce.const_data_ptr<T>() : nullptr;
    at::parallel_for(0, B, grain_rows(C), [&](int64_t begin, int64_t end) {
      std::vector<T> abuf(convert ? C : 0), bbuf(convert ? C : 0), o0(convert ? C : 0), o1(convert ? C : 0);
      for (int64_t i = begin; i < end; ++i) {
        const T* a = as_acc(pa + i * C, C, abuf.data());
        const T* b = as_acc(pb + i * C, C, bbuf.data());
        T* out0 = convert ? o0.data() : reinterpret_cast<T*>(po0 + i * C);
        T* out1 = convert ? o1.data() : reinterpret_cast<T*>(po1 + i * C);
        int64_t y = -1;
        T g_ce = T(0);
        if (pt != nullptr && pt[i] != ignore_index) {
          y = pt[i];
          TORCH_CHECK(y >= 0 && y < C, "energy_head: target ", y, " out of range [0, ", C, ")");
          g_ce = pgce[i];
        }
        row_backward(a, b, C, pst + 4 * i, pgd[i], g_ce, out0, out1);
        if (y >= 0) out0[y] += -g_ce;
        if constexpr (convert) {
          at::vec::convert(out0, po0 + i * C, C);
          at::vec::convert(out1, po1 + i * C, C);
        }
      }
    });
  });
  return {dz0, dz1};
}

}  // namespace

TORCH_LIBRARY(margreg_fast, m) {
  m.def("energy_head_forward(Tensor z0, Tensor z1, Tensor? target, int ignore_index) -> (Tensor, Tensor, Tensor)");
  m.def(
      "energy_head_backward(Tensor z0, Tensor z1, Tensor? target, int ignore_index, Tensor stats, Tensor grad_d, "
      "Tensor? grad_ce) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(margreg_fast, CPU, m) {
  m.impl("energy_head_forward", &energy_head_forward);
  m.impl("energy_head_backward", &energy_head_backward);
}
