// Kernels for batch-1 (and small-batch) decoding on CPU, where every step streams the weights once:
// 1. gemma3_int4_logits: approximate logits of an int4 output head (gemma3/model/fast_head.py takes the best k of them
//    and recomputes those exactly from the fp32 weight).
//   weights: [V, D] as 4-bit codes, one fp16 scale per group of 32 along D (q = round(w / s), s = max|w| / 7, q in
//            [-8, 7], stored as the unsigned code q + 8), in blocks of 8 vocabulary rows: codes [V / 8][D / 64][8][32]
//            (per 64 weights of a row, 32 bytes, byte j holding weight j in its low nibble and weight j + 32 in its
//            high nibble), scales [V / 8][D / 32][8] (V padded to a multiple of 8 with zero rows).
//   hidden:  [M, D] fp32, quantized here to int8 per group of 32 (one fp32 scale each).
// Each group's product is an integer dot product (AVX2: maddubs of the unsigned codes and the signed activations, exact
// in int16 since 2 * 15 * 127 < 32767), the 8 rows' sums of a group gathered into one vector, minus 8 * the group's
// activation sum for the code offset, then scaled by the 8 rows' scales at once and summed in fp32 (8 rows a block:
// one fp32 conversion and scaling per group for all 8, not one per row). A 262144 x 640 head is 84 MB of codes and
// 10 MB of scales per token instead of 168 MB as int8.
// 2. gemma3_gemv_f16 and gemma3_decode_layer: one Gemma 3 decoder layer for one new token per row, the projections'
//    weights in fp16 (fp32 activations, fp32 accumulation: only the weights are rounded), norms, rotary embedding,
//    the KV-cache write and attention in fp32, in one call (gemma3/model/static_decode.py's Python step does the same
//    with ~35 torch calls, whose fixed costs were a third of a step for Gemma 3 270M).
// Plain C++ with C entry points and no torch headers, compiled for this CPU by gemma3/model/native_kernels.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define GEMMA3_AVX2 1
#include <immintrin.h>
#endif

#include "run_jobs.h"
#include "vexp.h"

namespace {

constexpr int64_t kGroup = 32;   // weights (and activations) per scale
constexpr int64_t kBlock = 64;   // weights per 32 bytes of codes
constexpr int64_t kBlockRows = 8;   // vocabulary rows packed together
constexpr int64_t kJobBlocks = 32;  // blocks of 8 rows per job

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu, bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // inf / nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

#ifdef GEMMA3_AVX2
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

struct Quantized {           // the hidden states, int8 per group of 32
  std::vector<int8_t> q;     // [M, D]
  std::vector<float> scale;  // [M, G]
  std::vector<float> sum;    // [M, G]: 8 * the group's sum of q (the codes' offset of 8, taken off at the end)
};

Quantized quantize(const float* x, int64_t M, int64_t D) {
  const int64_t G = D / kGroup;
  Quantized a{std::vector<int8_t>(M * D), std::vector<float>(M * G), std::vector<float>(M * G)};
  for (int64_t g = 0; g < M * G; ++g) {
    const float* v = x + g * kGroup;
    float peak = 0.0f;
    for (int64_t i = 0; i < kGroup; ++i) peak = std::max(peak, std::fabs(v[i]));
    const float inv = peak > 0.0f ? 127.0f / peak : 0.0f;
    int32_t total = 0;
    for (int64_t i = 0; i < kGroup; ++i) {
      const int32_t q = std::max(-127, std::min(127, static_cast<int32_t>(std::nearbyint(v[i] * inv))));
      a.q[g * kGroup + i] = static_cast<int8_t>(q);
      total += q;
    }
    a.scale[g] = peak / 127.0f;
    a.sum[g] = 8.0f * static_cast<float>(total);
  }
  return a;
}

#ifdef GEMMA3_AVX2
// [8] int32: lane r = the sum of p[r]'s 8 lanes.
inline __m256i gather_sums(const __m256i* p) {
  const __m256i t0 = _mm256_hadd_epi32(p[0], p[1]), t1 = _mm256_hadd_epi32(p[2], p[3]);
  const __m256i t2 = _mm256_hadd_epi32(p[4], p[5]), t3 = _mm256_hadd_epi32(p[6], p[7]);
  const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);  // [rows 0-3 | 0-3], [4-7 | 4-7]
  return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}
#endif

// Logits of one block of 8 head rows (`code` [D / 64][8][32], `ws` [G][8]) for hidden row m: out[0 .. 8).
void block_logits(const uint8_t* code, const uint16_t* ws, const Quantized& a, int64_t m, int64_t D, float* out) {
  const int64_t G = D / kGroup;
  const int8_t* xq = a.q.data() + m * D;
  const float* xs = a.scale.data() + m * G;
  const float* off = a.sum.data() + m * G;
#ifdef GEMMA3_AVX2
  const __m256i nibble = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();  // [8] rows
  __m256i p[kBlockRows];
  for (int64_t b = 0; b < D / kBlock; ++b) {
    const uint8_t* cb = code + b * kBlockRows * 32;
    for (int64_t h = 0; h < 2; ++h) {  // the block's low nibbles (group 2b), then its high nibbles (group 2b + 1)
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * kBlock + h * kGroup));
      for (int64_t r = 0; r < kBlockRows; ++r) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cb + r * 32));
        const __m256i c = _mm256_and_si256(h ? _mm256_srli_epi16(v, 4) : v, nibble);
        p[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(c, x), ones);  // [8] int32 partial sums of row r
      }
      const int64_t g = 2 * b + h;
      const __m256 sums = _mm256_sub_ps(_mm256_cvtepi32_ps(gather_sums(p)), _mm256_set1_ps(off[g]));
      const __m128i w16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ws + g * kBlockRows));
      acc = _mm256_fmadd_ps(sums, _mm256_mul_ps(_mm256_cvtph_ps(w16), _mm256_set1_ps(xs[g])), acc);
    }
  }
  _mm256_storeu_ps(out, acc);
#else
  for (int64_t r = 0; r < kBlockRows; ++r) {
    float total = 0.0f;
    for (int64_t b = 0; b < D / kBlock; ++b) {
      const uint8_t* cr = code + (b * kBlockRows + r) * 32;
      int32_t lo = 0, hi = 0;
      for (int64_t j = 0; j < 32; ++j) {
        lo += static_cast<int32_t>(cr[j] & 0x0F) * xq[b * kBlock + j];
        hi += static_cast<int32_t>(cr[j] >> 4) * xq[b * kBlock + kGroup + j];
      }
      const int64_t g = 2 * b;
      total += half_to_float(ws[g * kBlockRows + r]) * xs[g] * (static_cast<float>(lo) - off[g]);
      total += half_to_float(ws[(g + 1) * kBlockRows + r]) * xs[g + 1] * (static_cast<float>(hi) - off[g + 1]);
    }
    out[r] = total;
  }
#endif
}

// ---- fp16 projections and the decoder layer ----

// Projection weights are fp16 in blocks of kRowBlock rows interleaved by 8 columns: block j holds, for each group of
// 8 columns c, rows 4j .. 4j + 3's 8 values in turn ([N / 4][K / 8][4][8]), so a block streams as one sequential
// read (a cache line per 8 columns) instead of four short rows; N is padded to a multiple of 4 with zero rows, K is a
// multiple of 8 (gemma3/model/fast_linears.py packs them).
constexpr int64_t kRowBlock = 4;

// y[m, n] = sum_k x[m, k] * w[n, k] for the rows n < N of blocks [j0, j1): x [M, K] fp32, y row stride ldy.
// The hidden rows in pairs, so each converted weight vector serves two of them.
void gemv_blocks(const float* x, int64_t M, int64_t K, const uint16_t* w, int64_t N, int64_t j0, int64_t j1, float* y,
                 int64_t ldy) {
  for (int64_t j = j0; j < j1; ++j) {
    const uint16_t* wb = w + j * kRowBlock * K;
    const int64_t rows = std::min(kRowBlock, N - j * kRowBlock);
    for (int64_t m = 0; m < M; m += 2) {
      const bool two = m + 1 < M;
      const float* x0 = x + m * K;
      const float* x1 = x + (two ? m + 1 : m) * K;
      float out0[kRowBlock], out1[kRowBlock];
#ifdef GEMMA3_AVX2
      __m256 a0[kRowBlock], a1[kRowBlock];
      for (int64_t r = 0; r < kRowBlock; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
      for (int64_t c = 0; c < K / 8; ++c) {
        const __m256 v0 = _mm256_loadu_ps(x0 + c * 8), v1 = _mm256_loadu_ps(x1 + c * 8);
        const uint16_t* wc = wb + c * kRowBlock * 8;
        for (int64_t r = 0; r < kRowBlock; ++r) {
          const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wc + r * 8)));
          a0[r] = _mm256_fmadd_ps(wv, v0, a0[r]);
          if (two) a1[r] = _mm256_fmadd_ps(wv, v1, a1[r]);
        }
      }
      for (int64_t r = 0; r < kRowBlock; ++r) {
        out0[r] = hsum(a0[r]);
        out1[r] = hsum(a1[r]);
      }
#else
      for (int64_t r = 0; r < kRowBlock; ++r) {
        out0[r] = out1[r] = 0.0f;
        for (int64_t c = 0; c < K / 8; ++c) {
          for (int64_t i = 0; i < 8; ++i) {
            const float wv = half_to_float(wb[(c * kRowBlock + r) * 8 + i]);
            out0[r] += wv * x0[c * 8 + i];
            out1[r] += wv * x1[c * 8 + i];
          }
        }
      }
#endif
      for (int64_t r = 0; r < rows; ++r) {
        y[m * ldy + j * kRowBlock + r] = out0[r];
        if (two) y[(m + 1) * ldy + j * kRowBlock + r] = out1[r];
      }
    }
  }
}

struct Projection {  // one weight [N, K] writing columns [col, col + N) of an output with row stride ldy
  const uint16_t* w;
  int64_t N;
  float* y;
  int64_t col, ldy;
};

// Several projections of the same input x [M, K], split across the threads by blocks of 16 output rows.
void project(const float* x, int64_t M, int64_t K, const std::vector<Projection>& ps, int64_t threads) {
  constexpr int64_t kChunk = 4;  // row blocks per job
  std::vector<int64_t> first{0};  // job index where each projection starts
  for (const auto& p : ps) first.push_back(first.back() + (p.N + kChunk * kRowBlock - 1) / (kChunk * kRowBlock));
  gemma3::run_jobs(first.back(), threads, [&](int64_t begin, int64_t end) {
    for (size_t i = 0; i < ps.size(); ++i) {
      const int64_t lo = std::max(begin, first[i]), hi = std::min(end, first[i + 1]);
      if (lo >= hi) continue;
      const Projection& p = ps[i];
      const int64_t blocks = (p.N + kRowBlock - 1) / kRowBlock;
      gemv_blocks(x, M, K, p.w, p.N, (lo - first[i]) * kChunk, std::min(blocks, (hi - first[i]) * kChunk),
                  p.y + p.col, p.ldy);
    }
  });
}

// Gemma's RMSNorm of `rows` rows of width d: out = x * rsqrt(mean(x^2) + eps) * weight (weight = 1 + the module's).
void rms_norm(const float* x, const float* weight, float* out, int64_t rows, int64_t d, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += x[r * d + i] * x[r * d + i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) out[r * d + i] = x[r * d + i] * inv * weight[i];
  }
}

// x * cos + rotate_half(x) * sin for `heads` heads of width hd (rotate_half(x) = [-x2, x1]).
void rotary(float* x, const float* cos, const float* sin, int64_t heads, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * hd;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
  }
}

// Gemma's gelu_pytorch_tanh, 0.5 x (1 + tanh(y)) with y = sqrt(2 / pi) (x + 0.044715 x^3), written as x / (1 +
// exp(-2y)) so the loop vectorises (std::tanh is a libm call per element).
inline float gelu_tanh(float x) {
  const float y = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.0f + gemma3::vexp(-2.0f * y));
}

}  // namespace

// codes, scales as above (V rows: V / 8 blocks, rounded up), hidden [M, D] fp32 (D a multiple of 64) -> logits [M, V].
extern "C" void gemma3_int4_logits(const uint8_t* codes, const uint16_t* scales, const float* hidden, float* logits,
                                   int64_t M, int64_t V, int64_t D, int64_t threads) {
  const Quantized a = quantize(hidden, M, D);
  const int64_t G = D / kGroup, blocks = (V + kBlockRows - 1) / kBlockRows;
  gemma3::run_jobs((blocks + kJobBlocks - 1) / kJobBlocks, threads, [&](int64_t begin, int64_t end) {
    float out[kBlockRows];
    for (int64_t j = begin * kJobBlocks; j < std::min(blocks, end * kJobBlocks); ++j) {
      const int64_t rows = std::min(kBlockRows, V - j * kBlockRows);
      for (int64_t m = 0; m < M; ++m) {
        block_logits(codes + j * kBlockRows * (D / 2), scales + j * kBlockRows * G, a, m, D, out);
        std::memcpy(logits + m * V + j * kBlockRows, out, rows * sizeof(float));
      }
    }
  });
}

// 1 when the AVX2 paths were compiled in, 0 for the portable loops (the tests run both where they can).
extern "C" int64_t gemma3_decode_vectorised() {
#ifdef GEMMA3_AVX2
  return 1;
#else
  return 0;
#endif
}

// y [M, N] = x [M, K] (fp32) times w [N, K] (fp16, row blocks interleaved as above) transposed, on `threads` threads.
extern "C" void gemma3_gemv_f16(const float* x, const uint16_t* w, float* y, int64_t M, int64_t N, int64_t K,
                                int64_t threads) {
  project(x, M, K, {Projection{w, N, y, 0, N}}, threads);
}

// One Gemma 3 decoder layer for one new token in each of B rows, as gemma3/model/static_decode.py's _Layer.step:
//   h [B, D] (the residual stream, updated in place); w: q, k, v, o, gate, up, down weights ([out, in], fp16, row
//   blocks interleaved as above);
//   norms: input, q, k, post-attention, pre-feedforward, post-feedforward weights (1 + the module's, fp32);
//   cos, sin [B, hd] (this token's rotary rows); keys, values [B, Hk, T, hd] fp32 (this token's written at `col`);
//   key_ok [B, T] (0: a padding position); window: the sliding window (0: full attention); I: the MLP's width.
extern "C" void gemma3_decode_layer(float* h, const uint16_t* const* w, const float* const* norms, const float* cos,
                                    const float* sin, float* keys, float* values, const uint8_t* key_ok, int64_t B,
                                    int64_t D, int64_t Hq, int64_t Hk, int64_t hd, int64_t I, int64_t T, int64_t col,
                                    int64_t window, float scaling, float eps, int64_t threads) {
  const int64_t Q = Hq * hd, KV = Hk * hd;
  std::vector<float> x(B * D), qkv(B * (Q + 2 * KV)), attn(B * Q), o(B * D), gu(B * 2 * I);
  rms_norm(h, norms[0], x.data(), B, D, eps);
  const int64_t ld = Q + 2 * KV;
  project(x.data(), B, D, {{w[0], Q, qkv.data(), 0, ld}, {w[1], KV, qkv.data(), Q, ld}, {w[2], KV, qkv.data(), Q + KV, ld}},
          threads);
  for (int64_t b = 0; b < B; ++b) {
    float* q = qkv.data() + b * ld;
    float* k = q + Q;
    const float* v = k + KV;
    rms_norm(q, norms[1], q, Hq, hd, eps);
    rms_norm(k, norms[2], k, Hk, hd, eps);
    rotary(q, cos + b * hd, sin + b * hd, Hq, hd);
    rotary(k, cos + b * hd, sin + b * hd, Hk, hd);
    for (int64_t j = 0; j < Hk; ++j) {
      std::memcpy(keys + ((b * Hk + j) * T + col) * hd, k + j * hd, hd * sizeof(float));
      std::memcpy(values + ((b * Hk + j) * T + col) * hd, v + j * hd, hd * sizeof(float));
    }
  }
  const int64_t first = window > 0 ? std::max<int64_t>(0, col - window + 1) : 0;
  gemma3::run_jobs(B * Hq, threads, [&](int64_t begin, int64_t end) {
    std::vector<float> p(col + 1);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / Hq, head = job % Hq, j = head / (Hq / Hk);
      const float* q = qkv.data() + b * ld + head * hd;
      const float* kc = keys + (b * Hk + j) * T * hd;
      const float* vc = values + (b * Hk + j) * T * hd;
      float peak = -INFINITY;
      for (int64_t t = first; t <= col; ++t) {
        if (!key_ok[b * T + t]) continue;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < hd; ++i) dot += q[i] * kc[t * hd + i];
        p[t] = dot * scaling;
        peak = std::max(peak, p[t]);
      }
      float total = 0.0f;
      float* out = attn.data() + b * Q + head * hd;
      std::fill(out, out + hd, 0.0f);
      for (int64_t t = first; t <= col; ++t) {
        if (!key_ok[b * T + t]) continue;
        const float e = std::exp(p[t] - peak);
        total += e;
        for (int64_t i = 0; i < hd; ++i) out[i] += e * vc[t * hd + i];
      }
      for (int64_t i = 0; i < hd; ++i) out[i] /= total;
    }
  });
  project(attn.data(), B, Q, {{w[3], D, o.data(), 0, D}}, threads);
  rms_norm(o.data(), norms[3], o.data(), B, D, eps);
  for (int64_t i = 0; i < B * D; ++i) h[i] += o[i];
  rms_norm(h, norms[4], x.data(), B, D, eps);
  project(x.data(), B, D, {{w[4], I, gu.data(), 0, 2 * I}, {w[5], I, gu.data(), I, 2 * I}}, threads);
  for (int64_t b = 0; b < B; ++b) {
    float* g = gu.data() + b * 2 * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) g[i] = gelu_tanh(g[i]) * g[I + i];
    for (int64_t i = 0; i < I; ++i) gu[b * I + i] = g[i];  // compact to [B, I] (row b's gate half moves down)
  }
  project(gu.data(), B, I, {{w[6], D, o.data(), 0, D}}, threads);
  rms_norm(o.data(), norms[5], o.data(), B, D, eps);
  for (int64_t i = 0; i < B * D; ++i) h[i] += o[i];
}
