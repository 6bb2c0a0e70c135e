#include "theta_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>

// One body per routine, written with GCC/Clang vector types: instantiated for 4-float vectors
// (baseline, SSE2 on x86-64) and, on x86, inlined into functions compiled for AVX2 + FMA (8 floats)
// and AVX-512 (16 floats), chosen at run time.
#if defined(__x86_64__) || defined(_M_X64)
#define KLAS_HAVE_X86_SIMD 1
#define KLAS_AVX2 __attribute__((target("avx2,fma")))
#define KLAS_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif
#define KLAS_INLINE [[gnu::always_inline]] inline

namespace klas {
namespace {

using Isa = ThetaIsa;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
// p and u of one block of samples, per thread: about the L2 of current x86 cores (1–2 MiB). On
// the 2-core development machine 1–2 MiB ran about 10% faster than 256–512 KiB at C = 1000 (longer
// dot products per tile) and 4 MiB 25% slower at C = 10.
constexpr int64_t kDefaultBlockBytes = 1 << 20;
constexpr int64_t kPad = 16;  // buffer rows are padded with zeros to a multiple of the widest vector

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

bool cpu_supports(Isa isa) {
#ifdef KLAS_HAVE_X86_SIMD
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  if (isa == Isa::kAvx512) return avx512;
  if (isa == Isa::kAvx2) return avx2;
  return true;
#else
  return isa == Isa::kAuto || isa == Isa::kBaseline;
#endif
}

// ---------------------------------------------------------------------------------------------
// Vectors of L floats.
template <int L>
struct Vec {
  typedef float F __attribute__((vector_size(4 * L)));
  typedef int32_t I __attribute__((vector_size(4 * L)));
  static constexpr int64_t kLanes = L;
};

template <class V>
KLAS_INLINE typename V::F load(const float* p) {
  typename V::F v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class V>
KLAS_INLINE void store(float* p, typename V::F v) {
  std::memcpy(p, &v, sizeof(v));
}

template <class V>
KLAS_INLINE typename V::F splat(float x) {
  return typename V::F{} + x;
}

template <class V>
KLAS_INLINE typename V::F vmax(typename V::F a, typename V::F b) {
  return a > b ? a : b;
}

template <class V>
KLAS_INLINE typename V::F vmin(typename V::F a, typename V::F b) {
  return a < b ? a : b;
}

template <class V>
KLAS_INLINE float lane_sum(typename V::F v) {
  float s = 0.0f;
  for (int64_t l = 0; l < V::kLanes; ++l) s += v[l];
  return s;
}

template <class V>
KLAS_INLINE float lane_max(typename V::F v) {
  float m = v[0];
  for (int64_t l = 1; l < V::kLanes; ++l) m = std::max(m, v[l]);
  return m;
}

// exp(x) for x ≤ 0 (below −87.3 it gives about 1e-38 instead of 0): x = k·ln2 + r, |r| ≤ ln2/2,
// exp(r) = 1 + r + r²·P5(r) with the Cephes minimax coefficients (about 1 ulp), and 2^k written
// straight into the exponent bits.
template <class V>
KLAS_INLINE typename V::F exp_nonpositive(typename V::F x) {
  using F = typename V::F;
  using I = typename V::I;
  x = vmax<V>(x, splat<V>(-87.3f));
  const F shifter = splat<V>(12582912.0f);  // 1.5·2^23: adding and subtracting it rounds to an integer
  const F k = (x * 1.44269504088896341f + shifter) - shifter;
  F r = x - k * 0.693359375f;  // ln2 in two parts
  r = r - k * -2.12194440e-4f;
  F poly = splat<V>(1.9875691500e-4f);
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const F exp_r = poly * (r * r) + r + 1.0f;
  const I two_k = (__builtin_convertvector(k, I) + 127) << 23;
  return exp_r * (F)two_k;  // a cast between vector types of one size keeps the bits
}

// log(x) for finite x ≥ 1 (a softmax's Σ exp(u), whose largest term is exp(0)): x = m·2^e with
// m in [√½, √2), log m = f − f²/2 + f³·P8(f) for f = m − 1 with the Cephes minimax coefficients
// (about 1 ulp), and e·ln2 added in two parts.
template <class V>
KLAS_INLINE typename V::F log_at_least_one(typename V::F x) {
  using F = typename V::F;
  using I = typename V::I;
  const I bits = (I)x;
  F e = __builtin_convertvector((bits >> 23) - 127, F);
  F m = (F)((bits & 0x7fffff) | 0x3f800000);  // the mantissa in [1, 2)
  const auto big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.0f : e;
  const F f = m - 1.0f, f2 = f * f;
  F poly = splat<V>(7.0376836292e-2f);
  poly = poly * f - 1.1514610310e-1f;
  poly = poly * f + 1.1676998740e-1f;
  poly = poly * f - 1.2420140846e-1f;
  poly = poly * f + 1.4249322787e-1f;
  poly = poly * f - 1.6668057665e-1f;
  poly = poly * f + 2.0000714765e-1f;
  poly = poly * f - 2.4999993993e-1f;
  poly = poly * f + 3.3333331174e-1f;
  F y = f * f2 * poly + e * -2.12194440e-4f - 0.5f * f2;
  return f + y + e * 0.693359375f;
}

// ---------------------------------------------------------------------------------------------
// Softmax statistics of one row of C logits z:
//   u = (z − max z)·inv_t into `shifted` (if kShifted), p = exp(u) / Σ exp(u) into `probs` (if
//   kProbs); returns L = log Σ exp(u) and Σ p log p = Σ p u − L. A row with NaN or ±Inf returns
//   NaN for both and fills the written outputs with NaN.
struct RowStats {
  float log_total;
  float neg_entropy;
};

// The three passes over a row, each over [begin, end) with W-float vectors, then what is left
// with W/2 and so on down to single floats (the same polynomial exp for every element).
template <int W>
KLAS_INLINE void scan_pass(const float* z, int64_t begin, int64_t end, float& max, float& min, float& check) {
  using V = Vec<W>;
  typename V::F max_v = splat<V>(-kInf), min_v = splat<V>(kInf), check_v{};  // x − x: 0 for finite x, else NaN
  int64_t c = begin;
  for (; c + W <= end; c += W) {
    const typename V::F x = load<V>(z + c);
    max_v = vmax<V>(max_v, x);
    min_v = vmin<V>(min_v, x);
    check_v += x - x;
  }
  if (c > begin) {
    max = std::max(max, lane_max<V>(max_v));
    min = std::min(min, -lane_max<V>(-min_v));
    check += lane_sum<V>(check_v);
  }
  if constexpr (W > 1)
    if (c < end) scan_pass<W / 2>(z, c, end, max, min, check);
}

template <int W, bool kShifted, bool kProbs>
KLAS_INLINE void exp_pass(const float* z, int64_t begin, int64_t end, float max, float inv_t, float* shifted,
                          float* probs, float& sum, float& dot) {
  using V = Vec<W>;
  typename V::F sum_v{}, dot_v{};
  int64_t c = begin;
  for (; c + W <= end; c += W) {
    const typename V::F u = (load<V>(z + c) - max) * inv_t;
    const typename V::F e = exp_nonpositive<V>(u);
    if (kShifted) store<V>(shifted + c, u);
    if (kProbs) store<V>(probs + c, e);
    sum_v += e;
    dot_v += e * u;
  }
  if (c > begin) {
    sum += lane_sum<V>(sum_v);
    dot += lane_sum<V>(dot_v);
  }
  if constexpr (W > 1)
    if (c < end) exp_pass<W / 2, kShifted, kProbs>(z, c, end, max, inv_t, shifted, probs, sum, dot);
}

template <int W>
KLAS_INLINE void scale_pass(float* probs, int64_t begin, int64_t end, float factor) {
  using V = Vec<W>;
  int64_t c = begin;
  for (; c + W <= end; c += W) store<V>(probs + c, load<V>(probs + c) * factor);
  if constexpr (W > 1)
    if (c < end) scale_pass<W / 2>(probs, c, end, factor);
}

template <int W, bool kShifted, bool kProbs>
KLAS_INLINE RowStats row_stats(const float* z, int64_t cols, float inv_t, float* shifted, float* probs,
                               float& max_abs) {
  float max = -kInf, min = kInf, check = 0.0f;
  scan_pass<W>(z, 0, cols, max, min, check);
  if (check != 0.0f) {
    max_abs = kInf;
    if (kShifted) std::fill(shifted, shifted + cols, kNaN);
    if (kProbs) std::fill(probs, probs + cols, kNaN);
    return {kNaN, kNaN};
  }
  max_abs = std::max(max_abs, std::max(max, -min));
  float sum = 0.0f, dot = 0.0f;
  exp_pass<W, kShifted, kProbs>(z, 0, cols, max, inv_t, shifted, probs, sum, dot);
  const float inv_sum = 1.0f / sum;
  if (kProbs) scale_pass<W>(probs, 0, cols, inv_sum);
  const float log_total = std::log(sum);
  return {log_total, dot * inv_sum - log_total};
}

// Softmax statistics of W samples at once, one per lane, for few classes (C ≤ kMaxGroupClasses),
// where a row of C logits fills less than one vector: x[c·W + l] holds class c of sample l (lanes
// at or after `valid` repeat a valid sample and are masked out). u and p are written class-major,
// class c of the W samples at [c·W, (c + 1)·W): the product only needs p and u of one sample and
// class at the same position, and every row of a block goes through the same code.
constexpr int64_t kMaxGroupClasses = 32;

struct GroupSums {
  double log_total = 0.0;    // Σ over the valid lanes of L
  double neg_entropy = 0.0;  // Σ over the valid lanes of Σ p log p (when p is written)
};

template <class V, bool kShifted, bool kProbs>
KLAS_INLINE void group_stats(const float* x, int64_t cols, int64_t valid, float inv_t, float* shifted, float* probs,
                             GroupSums& sums, float& max_abs) {
  using F = typename V::F;
  constexpr int64_t W = V::kLanes;
  F max_v = splat<V>(-kInf), min_v = splat<V>(kInf), check_v{};
  for (int64_t c = 0; c < cols; ++c) {
    const F xc = load<V>(x + c * W);
    max_v = vmax<V>(max_v, xc);
    min_v = vmin<V>(min_v, xc);
    check_v += xc - xc;
  }
  const float check = lane_sum<V>(check_v);
  max_abs = check != 0.0f ? kInf : std::max(max_abs, lane_max<V>(vmax<V>(max_v, -min_v)));
  F lane{};
  for (int64_t l = 0; l < W; ++l) lane[l] = static_cast<float>(l);
  const F mask = lane < static_cast<float>(valid) ? splat<V>(1.0f) : splat<V>(0.0f);
  F sum_v{}, dot_v{};
  for (int64_t c = 0; c < cols; ++c) {
    const F u = (load<V>(x + c * W) - max_v) * inv_t;
    const F e = exp_nonpositive<V>(u);
    if (kShifted) store<V>(shifted + c * W, u * mask);
    if (kProbs) store<V>(probs + c * W, e);
    sum_v += e;
    dot_v += e * u;
  }
  const F inv_sum = 1.0f / sum_v;
  const F log_total = log_at_least_one<V>(sum_v);
  if (kProbs) {
    const F factor = inv_sum * mask;
    for (int64_t c = 0; c < cols; ++c) store<V>(probs + c * W, load<V>(probs + c * W) * factor);
    sums.neg_entropy += lane_sum<V>((dot_v * inv_sum - log_total) * mask);
  }
  sums.log_total += lane_sum<V>(log_total * mask);
}

// Samples l < W, each at z + min(l, valid − 1)·stride_n, into x class-major: x[c·W + l] (plain
// loads and stores: on the development CPU faster than the AVX2 / AVX-512 gather instructions).
template <int64_t W>
KLAS_INLINE void transpose_group(const float* z, int64_t stride_n, int64_t cols, int64_t valid, float* x) {
  for (int64_t l = 0; l < W; ++l) {
    const float* row = z + std::min(l, valid - 1) * stride_n;
    for (int64_t c = 0; c < cols; ++c) x[c * W + l] = row[c];
  }
}

// One group of W samples: transposed, then its statistics (every code path the same way).
template <class V, bool kShifted, bool kProbs>
KLAS_INLINE void group_of_samples(const float* z, int64_t stride_n, int64_t cols, int64_t valid, float inv_t,
                                  float* shifted, float* probs, GroupSums& sums, float& max_abs) {
  float x[kMaxGroupClasses * V::kLanes];
  transpose_group<V::kLanes>(z, stride_n, cols, valid, x);
  group_stats<V, kShifted, kProbs>(x, cols, valid, inv_t, shifted, probs, sums, max_abs);
}

// ---------------------------------------------------------------------------------------------
// Dot products of R rows of p with S rows of u, each `len` floats (a multiple of kPad) apart by
// `stride`: out[r·S + s] = Σ_j p[r][j] u[s][j], accumulated per lane in fp32.
template <class V, int R, int S>
KLAS_INLINE void dot_tile(const float* p, const float* u, int64_t stride, int64_t len, float* out) {
  using F = typename V::F;
  F acc[R][S] = {};
  for (int64_t j = 0; j < len; j += V::kLanes) {
    F us[S];
    for (int s = 0; s < S; ++s) us[s] = load<V>(u + s * stride + j);
    for (int r = 0; r < R; ++r) {
      const F pr = load<V>(p + r * stride + j);
      for (int s = 0; s < S; ++s) acc[r][s] += pr * us[s];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < S; ++s) out[r * S + s] = lane_sum<V>(acc[r][s]);
}

// The routines of one instruction set, all compiled with its target attribute (ATTR) so that the
// vector helpers above inline into code for its registers.
#define KLAS_ISA_ROUTINES(ATTR)                                                                          \
  template <bool kShifted, bool kProbs>                                                                  \
  ATTR static RowStats row(const float* z, int64_t cols, float inv_t, float* shifted, float* probs,      \
                           float& max_abs) {                                                             \
    return row_stats<V::kLanes, kShifted, kProbs>(z, cols, inv_t, shifted, probs, max_abs);              \
  }                                                                                                      \
  template <bool kShifted, bool kProbs>                                                                  \
  ATTR static void group(const float* z, int64_t stride_n, int64_t cols, int64_t valid, float inv_t,    \
                         float* shifted, float* probs, GroupSums& sums, float& max_abs) {                \
    group_of_samples<V, kShifted, kProbs>(z, stride_n, cols, valid, inv_t, shifted, probs, sums, max_abs); \
  }                                                                                                      \
  template <int R, int S>                                                                                \
  ATTR static void dot(const float* p, const float* u, int64_t stride, int64_t len, float* out) {        \
    dot_tile<V, R, S>(p, u, stride, len, out);                                                           \
  }

// One instantiation per instruction set, each with the largest tile its registers hold.
struct BaselineIsa {
  using V = Vec<4>;
  static constexpr int kTile = 3;  // 9 accumulators + 3 loads of u + 1 of p: 13 of 16 registers
  KLAS_ISA_ROUTINES()
};

#ifdef KLAS_HAVE_X86_SIMD
struct Avx2Isa {
  using V = Vec<8>;
  static constexpr int kTile = 3;
  KLAS_ISA_ROUTINES(KLAS_AVX2)
};

struct Avx512Isa {
  using V = Vec<16>;
  static constexpr int kTile = 4;  // 16 accumulators + 4 loads of u + 1 of p: 21 of 32 registers
  KLAS_ISA_ROUTINES(KLAS_AVX512)
};
#endif
#undef KLAS_ISA_ROUTINES

// Tile<R, S> for run-time R, S ≤ Code::kTile (the edge tiles of the [Ks, Kt] product).
template <class Code, int R, int S = 1>
void dot_tile_sized(int r, int s, const float* p, const float* u, int64_t stride, int64_t len, float* out) {
  if constexpr (R > 1) {
    if (r < R) return dot_tile_sized<Code, R - 1, S>(r, s, p, u, stride, len, out);
  }
  if constexpr (S < Code::kTile) {
    if (s > S) return dot_tile_sized<Code, R, S + 1>(r, s, p, u, stride, len, out);
  }
  Code::template dot<R, S>(p, u, stride, len, out);
}

// cross[a·kt + b] += Σ_j p[a][j] u[b][j] for every a < ks, b < kt.
template <class Code>
void add_cross_products(const float* p, int64_t ks, const float* u, int64_t kt, int64_t stride, int64_t len,
                        double* cross) {
  constexpr int kTile = Code::kTile;
  float tile[kTile * kTile];
  for (int64_t a0 = 0; a0 < ks; a0 += kTile) {
    const int r = static_cast<int>(std::min<int64_t>(kTile, ks - a0));
    for (int64_t b0 = 0; b0 < kt; b0 += kTile) {
      const int s = static_cast<int>(std::min<int64_t>(kTile, kt - b0));
      dot_tile_sized<Code, kTile>(r, s, p + a0 * stride, u + b0 * stride, stride, len, tile);
      for (int i = 0; i < r; ++i)
        for (int k = 0; k < s; ++k) cross[(a0 + i) * kt + b0 + k] += tile[i * s + k];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One thread's share: samples [begin, end) in blocks of `block` samples, its own buffers and sums.
struct Job {
  LogitRows src;
  const LogitRows* tgt;  // null: src against itself
  float inv_t;
  int64_t block;  // a multiple of kGroupSamples when `grouped`
  bool grouped;   // few classes: W samples per vector (group_stats), else one row at a time (row_stats)
};

// The widest vector's lanes: grouped blocks hold whole groups of every code path.
constexpr int64_t kGroupSamples = 16;

// One thread's block buffers (p of the source rows, u of the target rows, `stride` floats per
// probe) and sums; allocated before the threads start, so running out of memory raises.
struct Workspace {
  Workspace(int64_t ks, int64_t kt, int64_t stride_)
      : stride(stride_), probs(static_cast<size_t>(ks * stride_), 0.0f), shifted(static_cast<size_t>(kt * stride_), 0.0f),
        self_term(ks, 0.0), cross(static_cast<size_t>(ks * kt), 0.0), shift(kt, 0.0) {}
  int64_t stride;
  std::vector<float> probs, shifted;
  std::vector<double> self_term, cross, shift;
  float max_abs = 0.0f;  // the largest |logit| read; +Inf once a NaN or ±Inf was read
};

// The softmax statistics of probe rows [K, nb samples] of `rows` from sample n0 into the block
// buffers (p into `probs` if kProbs, u into `shifted` if kShifted, each row `stride` floats), and
// per probe the sums: `log_total[k]` += Σ L, `neg_entropy[k]` += Σ Σ p log p (if not null). Returns
// the floats written per row (then padded with zeros to a multiple of kPad).
template <class Code, bool kShifted, bool kProbs>
int64_t block_stats(const Job& job, const LogitRows& rows, int64_t n0, int64_t nb, Workspace& out, float* probs,
                    float* shifted, double* log_total, double* neg_entropy) {
  const int64_t cols = rows.classes, stride = out.stride;
  constexpr int64_t W = Code::V::kLanes;
  const int64_t len = job.grouped ? round_up(nb, W) * cols : nb * cols, padded = round_up(len, kPad);
  for (int64_t k = 0; k < rows.probes; ++k) {
    float* p_row = kProbs ? probs + k * stride : nullptr;
    float* u_row = kShifted ? shifted + k * stride : nullptr;
    const float* z = rows.data + k * rows.stride_k + n0 * rows.stride_n;
    if (job.grouped) {
      GroupSums sums;
      for (int64_t g = 0; g < nb; g += W)
        Code::template group<kShifted, kProbs>(z + g * rows.stride_n, rows.stride_n, cols, std::min(W, nb - g), job.inv_t,
                                               kShifted ? u_row + g * cols : nullptr,
                                               kProbs ? p_row + g * cols : nullptr, sums, out.max_abs);
      log_total[k] += sums.log_total;
      if (neg_entropy) neg_entropy[k] += sums.neg_entropy;
    } else {
      for (int64_t i = 0; i < nb; ++i) {
        const RowStats st = Code::template row<kShifted, kProbs>(z + i * rows.stride_n, cols, job.inv_t,
                                                                 kShifted ? u_row + i * cols : nullptr,
                                                                 kProbs ? p_row + i * cols : nullptr, out.max_abs);
        log_total[k] += st.log_total;
        if (neg_entropy) neg_entropy[k] += st.neg_entropy;
      }
    }
    if (kProbs) std::fill(p_row + len, p_row + padded, 0.0f);
    if (kShifted) std::fill(u_row + len, u_row + padded, 0.0f);
  }
  return padded;
}

template <class Code>
void run_share(const Job& job, int64_t begin, int64_t end, Workspace& out) {
  const bool same = job.tgt == nullptr;
  const int64_t ks = job.src.probes, kt = same ? ks : job.tgt->probes;
  std::vector<double> log_total(static_cast<size_t>(ks), 0.0);
  for (int64_t n0 = begin; n0 < end; n0 += job.block) {
    const int64_t nb = std::min(job.block, end - n0);
    int64_t padded;
    if (same) {  // Σ p log p = (Σ p u, the product's diagonal) − L
      padded = block_stats<Code, true, true>(job, job.src, n0, nb, out, out.probs.data(), out.shifted.data(),
                                             out.shift.data(), nullptr);
    } else {
      padded = block_stats<Code, false, true>(job, job.src, n0, nb, out, out.probs.data(), nullptr, log_total.data(),
                                              out.self_term.data());
      block_stats<Code, true, false>(job, *job.tgt, n0, nb, out, nullptr, out.shifted.data(), out.shift.data(), nullptr);
    }
    add_cross_products<Code>(out.probs.data(), ks, out.shifted.data(), kt, out.stride, padded, out.cross.data());
  }
  if (same)
    for (int64_t a = 0; a < ks; ++a) out.self_term[a] += out.cross[a * kt + a] - out.shift[a];
}

}  // namespace

bool theta_isa_supported(ThetaIsa isa) { return cpu_supports(isa); }

float theta_sums(const LogitRows& src, const LogitRows* tgt, float inv_temperature, const ThetaSums& out, int threads,
                 int64_t block_bytes, ThetaIsa isa, float max_abs_logit) {
  if (!theta_isa_supported(isa)) throw std::invalid_argument("this CPU does not support the requested instruction set");
  if (isa == Isa::kAuto) isa = cpu_supports(Isa::kAvx512) ? Isa::kAvx512 : cpu_supports(Isa::kAvx2) ? Isa::kAvx2 : Isa::kBaseline;
  auto share = run_share<BaselineIsa>;
#ifdef KLAS_HAVE_X86_SIMD
  if (isa == Isa::kAvx512) share = run_share<Avx512Isa>;
  if (isa == Isa::kAvx2) share = run_share<Avx2Isa>;
#endif
  const int64_t n = src.samples, cols = src.classes;
  const bool grouped = cols <= kMaxGroupClasses;
  const int64_t rows_per_sample = src.probes + (tgt ? tgt->probes : src.probes);
  const int64_t bytes = block_bytes > 0 ? block_bytes : kDefaultBlockBytes;
  int64_t block = std::clamp<int64_t>(bytes / (4 * cols * rows_per_sample), 1, std::max<int64_t>(n, 1));
  if (grouped) block = round_up(block, kGroupSamples);
  const Job job{src, tgt, inv_temperature, block, grouped};
  const int64_t blocks = (n + block - 1) / block;
  const int64_t workers = std::clamp<int64_t>(threads, 1, std::max<int64_t>(blocks, 1));
  // Contiguous sample ranges of whole blocks, one per thread; the sums are added in thread order.
  const int64_t blocks_per_worker = (blocks + workers - 1) / workers;
  const int64_t ks = src.probes, kt = tgt ? tgt->probes : src.probes;
  std::vector<Workspace> partials;
  partials.reserve(static_cast<size_t>(workers));
  for (int64_t w = 0; w < workers; ++w) partials.emplace_back(ks, kt, round_up(block * cols, kPad));
  std::vector<std::thread> pool;
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t begin = std::min(n, w * blocks_per_worker * block), end = std::min(n, begin + blocks_per_worker * block);
    pool.emplace_back(share, std::cref(job), begin, end, std::ref(partials[w]));
  }
  share(job, 0, std::min(n, blocks_per_worker * block), partials[0]);
  for (auto& t : pool) t.join();
  float max_abs = 0.0f;
  for (const Workspace& part : partials) max_abs = std::max(max_abs, part.max_abs);
  if (!(max_abs <= max_abs_logit)) return max_abs;  // beyond the bound: the sums are left as they were
  for (const Workspace& part : partials) {
    for (int64_t a = 0; a < ks; ++a) out.self_term[a] += part.self_term[a];
    for (int64_t i = 0; i < ks * kt; ++i) out.cross[i] += part.cross[i];
    for (int64_t b = 0; b < kt; ++b) out.shift[b] += part.shift[b];
  }
  return max_abs;
}

}  // namespace klas
