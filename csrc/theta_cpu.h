// The fused CPU kernel of Θ (klas/kl.py, backend "native"): from logits to the running sums of
// ThetaAccumulator, with the softmax statistics and the cross product done block by block in
// each core's cache.
//
// Θ[a, b] = (self_term[a] − cross[a, b] + shift[b]) / N, where over the samples n (and classes c)
//   self_term[a] = Σ_n Σ_c p_a log p_a,   cross[a, b] = Σ_n Σ_c p_a u_b,   shift[b] = Σ_n L_b,
//   u_b = (z_b − max_c z_b) / T,  L_b = log Σ_c exp(u_b),  p_a = softmax(z_a / T).
//
// Cost model, for Ks source and Kt target probes over N samples and C classes:
//   FLOPs: 2·Ks·Kt·N·C for the cross product (it dominates once Ks, Kt ≳ 10), plus about 25
//          vector instructions per 8 logits for max, exp, sums and scaling;
//   bytes: the logits read once from memory, (Ks + Kt)·N·C·4; p and u are written to and read
//          back from a per-thread block buffer sized to stay in L2, never to memory.
// So it is compute bound: the cross product runs as 3×3 register tiles of dot products (9 FMAs
// per 6 loads; 4×4 with AVX-512), the threads take disjoint sample ranges with their own buffers
// and sums. With few classes (C ≤ 32, where one row fills less than a vector) the softmax runs on
// one sample per lane (the classes of a vector's samples transposed into a buffer), not a row at
// a time.
//
// Numerics: each block's fp32 tile sums cover a few samples (u is bounded by one sample's logit
// range), and blocks add up in float64, as in the PyTorch twin. A NaN or ±Inf logit is reported
// through the returned largest |logit| (+Inf), and without a bound its sums come out non-finite.
#pragma once

#include <cstdint>
#include <limits>

namespace klas {

// Logits [K, N, C] with contiguous classes: element (k, n, c) at data[k·stride_k + n·stride_n + c].
struct LogitRows {
  const float* data;
  int64_t probes;    // K
  int64_t samples;   // N
  int64_t classes;   // C
  int64_t stride_k;  // in floats
  int64_t stride_n;  // in floats
};

// The float64 sums the kernel adds to (+=): self_term [Ks], cross [Ks·Kt] row-major, shift [Kt].
struct ThetaSums {
  double* self_term;
  double* cross;
  double* shift;
};

// Code paths, each checked against the others by the tests: 4-float vectors (any CPU: "baseline"),
// AVX2 + FMA (3×3 tiles of 8-float vectors), AVX-512 (4×4 tiles of 16-float vectors).
enum class ThetaIsa { kAuto, kBaseline, kAvx2, kAvx512 };

// Whether this CPU runs `isa` (kAuto and kBaseline always).
bool theta_isa_supported(ThetaIsa isa);

// Adds the sums of all N samples. `tgt` null: Θ of `src` against itself (each row normalised
// once, Σ p log p from the product's diagonal). `threads` ≥ 1 threads take disjoint sample ranges.
// `block_bytes`: the per-thread buffer of p and u for one block of samples (0: the default).
// `isa`: kAuto takes the widest the CPU supports; an unsupported one throws std::invalid_argument.
// Returns the largest |logit| read (+Inf if any is NaN or ±Inf); when that is not ≤ max_abs_logit,
// nothing is added, so a caller's range check costs no pass of its own and a refused chunk leaves
// the sums as they were.
float theta_sums(const LogitRows& src, const LogitRows* tgt, float inv_temperature, const ThetaSums& out,
                 int threads, int64_t block_bytes, ThetaIsa isa = ThetaIsa::kAuto,
                 float max_abs_logit = std::numeric_limits<float>::infinity());

}  // namespace klas
