// Selective scan forward on CPU, fused: for a tile of channels, the recurrence over time
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t,   y_t = <C_t, h_t> + D * u_t,   y_t *= silu(z_t)
// with the tile's state in L1 ([d_state][16 channels]), reading u, delta and z once and writing y once. The inner
// loops run across the tile's channels (one vector of 16 lanes, or two of 8), so <C_t, h_t> needs no horizontal sum.
// Training: gemma3_scan_backward recomputes a tile's states over time (kept in a buffer of the tile's own), then walks
// back through them once, giving the gradients of u, delta, A, B and C (D, the gate and delta's softplus stay in
// PyTorch's autograd around it: gemma3/model/selective_scan.py).
// Plain C++ with a C entry point and no torch headers: gemma3/model/native_kernels.py compiles it in about a second
// with -O3 -march=native (each machine gets its own vector width) and -fopenmp, and calls it through ctypes.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "run_jobs.h"
#include "vexp.h"

namespace {

using gemma3::run_jobs;
using gemma3::vexp;

constexpr int64_t kTile = 16;      // channels per tile: one AVX512 vector, two AVX2 vectors
constexpr int64_t kMaxState = 64;  // d_state up to this

struct Rows {  // a tile's rows: channel c's timestep t at [c * L + t]
  const float* u;
  const float* delta;
  const float* z;  // nullptr: no gate
  float* y;
};

// W channels (W = kTile, or 1 for a group's last channels); N = d_state when compiled for it, else n at run time.
// A: the tile's first channel's [N] row (rows of A are n apart); Bt, Ct: this batch and group's [L, N];
// dskip: the tile's D values or nullptr.
template <int64_t N, int64_t W>
void scan_tile(Rows r, const float* A, const float* Bt, const float* Ct, const float* dskip, int64_t L, int64_t n_rt) {
  const int64_t n = N > 0 ? N : n_rt;
  alignas(64) float h[kMaxState][W];
  alignas(64) float a[kMaxState][W];
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < W; ++c) {
      h[i][c] = 0.0f;
      a[i][c] = A[c * n + i];
    }
  }
  alignas(64) float dt[W], du[W], acc[W];
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t c = 0; c < W; ++c) {
      dt[c] = r.delta[c * L + t];
      du[c] = dt[c] * r.u[c * L + t];
      acc[c] = 0.0f;
    }
    const float* b = Bt + t * n;
    const float* cc = Ct + t * n;
    for (int64_t i = 0; i < n; ++i) {
      const float bi = b[i], ci = cc[i];
#pragma omp simd aligned(h, a, dt, du, acc : 64)
      for (int64_t c = 0; c < W; ++c) {
        const float hi = vexp(dt[c] * a[i][c]) * h[i][c] + du[c] * bi;
        h[i][c] = hi;
        acc[c] += hi * ci;
      }
    }
    for (int64_t c = 0; c < W; ++c) r.y[c * L + t] = acc[c];
  }
  for (int64_t c = 0; c < W; ++c) {  // D skip and silu gate, vectorised along time
    float* yr = r.y + c * L;
    const float* ur = r.u + c * L;
    const float ds = dskip != nullptr ? dskip[c] : 0.0f;
    if (r.z != nullptr) {
      const float* zr = r.z + c * L;
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) yr[t] = (yr[t] + ds * ur[t]) * (zr[t] / (1.0f + vexp(-zr[t])));
    } else if (ds != 0.0f) {
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) yr[t] += ds * ur[t];
    }
  }
}

template <int64_t W>
void run_tile(int64_t n, Rows r, const float* A, const float* Bt, const float* Ct, const float* dskip, int64_t L) {
  if (n == 16) {
    scan_tile<16, W>(r, A, Bt, Ct, dskip, L, n);
  } else if (n == 8) {
    scan_tile<8, W>(r, A, Bt, Ct, dskip, L, n);
  } else {
    scan_tile<0, W>(r, A, Bt, Ct, dskip, L, n);
  }
}


struct GradRows {  // a tile's rows, as Rows, for the backward: inputs, the output's gradient, the inputs' gradients
  const float* u;
  const float* delta;
  const float* dy;
  float* du;
  float* ddelta;
};

// The backward of y_t = <C_t, h_t> (no D, no gate) over one tile of W channels. dA: the tile's first channel's [N]
// row of this batch's dA (written); dBt, dCt: this tile's own [L, N] partial sums (added to; the caller sums the
// tiles of a group); hs: room for L * N * W floats.
template <int64_t N, int64_t W>
void scan_tile_backward(GradRows r, const float* A, const float* Bt, const float* Ct, float* dA, float* dBt, float* dCt,
                        int64_t L, int64_t n_rt, float* hs) {
  const int64_t n = N > 0 ? N : n_rt;
  alignas(64) float h[kMaxState][W];
  alignas(64) float a[kMaxState][W];
  alignas(64) float g[kMaxState][W];   // dLoss / dh_t, carried back in time
  alignas(64) float ga[kMaxState][W];  // dA's sums over time
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < W; ++c) {
      h[i][c] = g[i][c] = ga[i][c] = 0.0f;
      a[i][c] = A[c * n + i];
    }
  }
  alignas(64) float dt[W], uu[W], dy[W], ddt[W], duu[W];
  for (int64_t t = 0; t < L; ++t) {  // the states, as the forward computes them
    for (int64_t c = 0; c < W; ++c) {
      dt[c] = r.delta[c * L + t];
      uu[c] = dt[c] * r.u[c * L + t];
    }
    const float* b = Bt + t * n;
    for (int64_t i = 0; i < n; ++i) {
      const float bi = b[i];
      float* out = hs + (t * n + i) * W;
#pragma omp simd aligned(h, a, dt, uu : 64)
      for (int64_t c = 0; c < W; ++c) {
        h[i][c] = vexp(dt[c] * a[i][c]) * h[i][c] + uu[c] * bi;
        out[c] = h[i][c];
      }
    }
  }
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int64_t c = 0; c < W; ++c) {
      dt[c] = r.delta[c * L + t];
      uu[c] = r.u[c * L + t];
      dy[c] = r.dy[c * L + t];
      ddt[c] = duu[c] = 0.0f;
    }
    const float* b = Bt + t * n;
    const float* cc = Ct + t * n;
    for (int64_t i = 0; i < n; ++i) {
      const float bi = b[i], ci = cc[i];
      const float* ht = hs + (t * n + i) * W;
      const float* hp = t > 0 ? hs + ((t - 1) * n + i) * W : nullptr;
      float sc = 0.0f, sb = 0.0f;
#pragma omp simd aligned(a, g, ga, dt, uu, dy, ddt, duu : 64) reduction(+ : sc, sb)
      for (int64_t c = 0; c < W; ++c) {
        const float gi = g[i][c] + dy[c] * ci;  // h_t's gradient: from y_t, and from h_{t+1} (carried)
        const float e = vexp(dt[c] * a[i][c]);
        const float prev = hp != nullptr ? hp[c] : 0.0f;
        const float gpe = gi * prev * e;  // through exp(delta_t * A) * h_{t-1}
        sc += dy[c] * ht[c];
        sb += gi * dt[c] * uu[c];
        ddt[c] += gpe * a[i][c] + gi * uu[c] * bi;
        duu[c] += gi * dt[c] * bi;
        ga[i][c] += gpe * dt[c];
        g[i][c] = gi * e;
      }
      dCt[t * n + i] += sc;
      dBt[t * n + i] += sb;
    }
    for (int64_t c = 0; c < W; ++c) {
      r.ddelta[c * L + t] = ddt[c];
      r.du[c * L + t] = duu[c];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < W; ++c) dA[c * n + i] = ga[i][c];
  }
}

template <int64_t W>
void run_tile_backward(int64_t n, GradRows r, const float* A, const float* Bt, const float* Ct, float* dA, float* dBt,
                       float* dCt, int64_t L, float* hs) {
  if (n == 16) {
    scan_tile_backward<16, W>(r, A, Bt, Ct, dA, dBt, dCt, L, n, hs);
  } else if (n == 8) {
    scan_tile_backward<8, W>(r, A, Bt, Ct, dA, dBt, dCt, L, n, hs);
  } else {
    scan_tile_backward<0, W>(r, A, Bt, Ct, dA, dBt, dCt, L, n, hs);
  }
}

struct Tile {
  int64_t b, d0, width;  // batch row, first channel, channels (kTile, or fewer for a group's last tile)
  int64_t bc;            // where this batch row and group's [L, N] start in Bt / Ct
};

// Job j of batch * groups * tiles, in (batch, group, tile) order; bc_stride = L * N.
inline Tile tile_of(int64_t job, int64_t groups, int64_t tiles, int64_t per_group, int64_t bc_stride) {
  const int64_t b = job / (groups * tiles), g = (job / tiles) % groups, tile = job % tiles;
  const int64_t d0 = g * per_group + tile * kTile;
  return Tile{b, d0, std::min(kTile, (g + 1) * per_group - d0), (b * groups + g) * bc_stride};
}

}  // namespace

// u, delta, z, y: [B, D, L] fp32 contiguous (delta biased and softplus-ed; z and D may be null); A: [D, N]; Bt, Ct:
// [B, G, L, N] (channels split into G equal groups). Runs on `threads` threads (the caller's one of them).
extern "C" void gemma3_scan_forward(const float* u, const float* delta, const float* A, const float* Bt,
                                    const float* Ct, const float* D, const float* z, float* y, int64_t batch,
                                    int64_t channels, int64_t L, int64_t groups, int64_t n, int64_t threads) {
  const int64_t per_group = channels / groups;
  const int64_t tiles = (per_group + kTile - 1) / kTile;  // per (batch, group); the last may be partial
  const int64_t jobs = batch * groups * tiles;
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const Tile tl = tile_of(job, groups, tiles, per_group, L * n);
      const int64_t b = tl.b, d0 = tl.d0, width = tl.width;
      const float* bt = Bt + tl.bc;
      const float* ct = Ct + tl.bc;
      for (int64_t c = 0; c < width; c += (width == kTile ? kTile : 1)) {
        const int64_t off = (b * channels + d0 + c) * L;
        Rows r{u + off, delta + off, z != nullptr ? z + off : nullptr, y + off};
        const float* ds = D != nullptr ? D + d0 + c : nullptr;
        if (width == kTile) {
          run_tile<kTile>(n, r, A + (d0 + c) * n, bt, ct, ds, L);
        } else {
          run_tile<1>(n, r, A + (d0 + c) * n, bt, ct, ds, L);
        }
      }
    }
  };
  run_jobs(jobs, threads, work);
}

// The gradients of y = scan(u, delta, A, B, C) (no D, no gate; shapes as gemma3_scan_forward's) given dy: du, ddelta
// [B, D, L]; dA_part [B, D, N] (one row per batch element: the caller sums them); dBt_part, dCt_part [B, G, tiles, L,
// N], zeroed by the caller (one slice per tile of 16 channels: the caller sums them).
extern "C" void gemma3_scan_backward(const float* u, const float* delta, const float* A, const float* Bt,
                                     const float* Ct, const float* dy, float* du, float* ddelta, float* dA_part,
                                     float* dBt_part, float* dCt_part, int64_t batch, int64_t channels, int64_t L,
                                     int64_t groups, int64_t n, int64_t threads) {
  const int64_t per_group = channels / groups;
  const int64_t tiles = (per_group + kTile - 1) / kTile;
  const int64_t jobs = batch * groups * tiles;
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<float> hs(static_cast<size_t>(L * n * kTile));
    for (int64_t job = begin; job < end; ++job) {
      const Tile tl = tile_of(job, groups, tiles, per_group, L * n);
      const int64_t b = tl.b, d0 = tl.d0, width = tl.width;
      const float* bt = Bt + tl.bc;
      const float* ct = Ct + tl.bc;
      float* dbt = dBt_part + job * L * n;  // jobs run over (batch, group, tile) in the partials' own order
      float* dct = dCt_part + job * L * n;
      for (int64_t c = 0; c < width; c += (width == kTile ? kTile : 1)) {
        const int64_t off = (b * channels + d0 + c) * L;
        GradRows r{u + off, delta + off, dy + off, du + off, ddelta + off};
        float* da = dA_part + (b * channels + d0 + c) * n;
        if (width == kTile) {
          run_tile_backward<kTile>(n, r, A + (d0 + c) * n, bt, ct, da, dbt, dct, L, hs.data());
        } else {
          run_tile_backward<1>(n, r, A + (d0 + c) * n, bt, ct, da, dbt, dct, L, hs.data());
        }
      }
    }
  };
  run_jobs(jobs, threads, work);
}

// 1 when built with OpenMP (the threads are then an OpenMP team), 0 for the std::thread version.
extern "C" int gemma3_uses_openmp() {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

// The machine's peak for the scan's two kinds of arithmetic, for the bench's bound: `iters` rounds over 256
// independent lanes (enough vectors in flight to hide latency) of this file's exp (kind 0) or of a multiply-add
// (kind 1), on `threads` threads. Returns a checksum (so the loops are not optimised away); the caller times it.
extern "C" float gemma3_peak_loop(int64_t kind, int64_t iters, int64_t threads) {
  constexpr int64_t kLanes = 256;
  std::vector<float> sums(static_cast<size_t>(std::max<int64_t>(1, threads)), 0.0f);
  auto work = [&](int64_t w) {
    alignas(64) float x[kLanes];
    for (int64_t c = 0; c < kLanes; ++c) x[c] = -1.0f - 0.001f * static_cast<float>(c + w);
    for (int64_t it = 0; it < iters; ++it) {
      if (kind == 0) {
#pragma omp simd aligned(x : 64)
        for (int64_t c = 0; c < kLanes; ++c) x[c] = -vexp(x[c]);  // stays in [-1, -exp(-1)]
      } else {
#pragma omp simd aligned(x : 64)
        for (int64_t c = 0; c < kLanes; ++c) x[c] = x[c] * 0.999f + 0.0001f;
      }
    }
    float s = 0.0f;
    for (int64_t c = 0; c < kLanes; ++c) s += x[c];
    sums[static_cast<size_t>(w)] = s;
  };
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(std::max<int64_t>(1, threads)))
  work(omp_get_thread_num());
#else
  std::vector<std::thread> pool;
  for (int64_t w = 1; w < threads; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& t : pool) t.join();
#endif
  float total = 0.0f;
  for (float s : sums) total += s;
  return total;
}
