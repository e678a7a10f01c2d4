// Attention over a static KV cache reading only the slots each query may see.
//
// Why: the exported programs used to attend over every cache slot with batched matmuls
// and an additive mask, reading (and having XNNPACK repack) all S slots per layer and
// token. Here query t reads only slots [lo, pos[t]] (lo = pos[t] - window + 1 for a
// sliding window, else 0), so decode cost follows the position, not the cache size.
//
// Per work item (query t, KV head g), for the rep = H / KV query heads that share g:
//  1. scores[r, s] = scale * q[t, g*rep + r] . K[g, lo + s], from the transposed K cache
//     [KV, hd, S]: eight K^T rows at a time, each read as one contiguous run of the n
//     slots, all rep heads served by each load (no horizontal sums);
//  2. softmax per r: max, exp (Cephes' polynomial, ~1 ulp, vectorised), sum;
//  3. out[t, g*rep + r] = sum_s p[r, s] V[g, lo + s] / sum, from the V cache [KV, S, hd]:
//     tiles of 32 slots whose V rows stay in L1 while each head's hd accumulators stay
//     in registers.
// Each output block is written by one item in a fixed order: results do not depend on the
// thread count. Vectors are GCC/Clang vector extensions of W floats (16: AVX-512, 8: AVX2,
// 4: SSE / NEON), one body compiled per path with target attributes and chosen with the
// library's ISA setting (MOBILEMOE_KERNELS_ISA; avx512vnni selects the AVX-512 path).

#include "attend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "parallel.h"

#include "moe_ffn.h"
#include "vec.h"

#if defined(__x86_64__) || defined(__i386__)
#define MMOE_X86 1
#endif
#if defined(__aarch64__)
#define MMOE_NEON 1
#endif

namespace mmoe {
namespace {

using vec::exp_nonpos;
using vec::load;
using vec::splat;
using vec::store;
using vec::Vec;

struct Args {
  const float* q;
  const float* kT;  // [KV, hd, Sk], Sk >= S (a row stride off powers of two avoids cache-set conflicts)
  const float* v;   // [KV, S, hd]
  const int64_t* pos;
  int64_t T, H, KV, S, Sk, hd, window;
  float scale;
  float* out;
};

template <int W>
MMOE_INLINE float hsum(typename Vec<W>::f v) {
  float a[W];
  std::memcpy(a, &v, sizeof a);
  float s = 0.0f;
  for (int j = 0; j < W; ++j) s += a[j];
  return s;
}

template <int W>
MMOE_INLINE float hmax(typename Vec<W>::f v) {
  float a[W];
  std::memcpy(a, &v, sizeof a);
  float m = a[0];
  for (int j = 1; j < W; ++j) m = a[j] > m ? a[j] : m;
  return m;
}

// sc[r][0..n) = scale * q[r] . K^T[:, lo..lo+n) for the rep query heads of one KV head;
// kT: that head's [hd, Sk]; sc rows are ld >= round_up(n, W) apart. Rows of K^T are read
// eight at a time, each as one contiguous run (few streams for the prefetcher), and
// every score is stored once per eight rows.
template <int W>
MMOE_INLINE void scores_block(const float* q, int64_t rep, const float* kT, int64_t Sk, int64_t hd, int64_t lo,
                              int64_t n, float scale, float* sc, int64_t ld) {
  using F = typename Vec<W>::f;
  constexpr int kRows = 8;
  const int64_t nv = std::min<int64_t>(n, ((Sk - lo) / W) * W);  // vector part stays in the rows
  for (int64_t r = 0; r < rep; ++r) std::fill(sc + r * ld, sc + r * ld + n, 0.0f);
  int64_t d0 = 0;
  for (; d0 + kRows <= hd; d0 += kRows) {
    const float* k0 = kT + d0 * Sk + lo;
    int64_t j = 0;
    for (; j < nv; j += W) {
      F kv[kRows];
#pragma GCC unroll 8
      for (int i = 0; i < kRows; ++i) kv[i] = load<W>(k0 + i * Sk + j);
      for (int64_t r = 0; r < rep; ++r) {
        const float* qr = q + r * hd + d0;
        F acc = load<W>(sc + r * ld + j);
#pragma GCC unroll 8
        for (int i = 0; i < kRows; ++i) acc += qr[i] * kv[i];
        store<W>(sc + r * ld + j, acc);
      }
    }
    for (; j < n; ++j)
      for (int64_t r = 0; r < rep; ++r) {
        float a = 0.0f;
        for (int i = 0; i < kRows; ++i) a += q[r * hd + d0 + i] * k0[i * Sk + j];
        sc[r * ld + j] += a;
      }
  }
  for (; d0 < hd; ++d0)  // rows left over when hd % 8 != 0
    for (int64_t r = 0; r < rep; ++r)
      for (int64_t j = 0; j < n; ++j) sc[r * ld + j] += q[r * hd + d0] * kT[d0 * Sk + lo + j];
  for (int64_t r = 0; r < rep; ++r)
    for (int64_t j = 0; j < n; ++j) sc[r * ld + j] *= scale;
}

// x <- exp(x - max x) in place over [0, n); returns 1 / sum.
template <int W>
MMOE_INLINE float softmax_row(float* x, int64_t n) {
  using F = typename Vec<W>::f;
  int64_t i = 0;
  F vm = splat<W>(x[0]);
  for (; i + W <= n; i += W) {
    const F v = load<W>(x + i);
    vm = v > vm ? v : vm;
  }
  float m = hmax<W>(vm);
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  F acc{};
  i = 0;
  for (; i + W <= n; i += W) {
    const F e = exp_nonpos<W>(load<W>(x + i) - m);
    store<W>(x + i, e);
    acc += e;
  }
  float sum = hsum<W>(acc);
  if (i < n) {  // tail through a padded tile
    float tile[W];
    for (int j = 0; j < W; ++j) tile[j] = i + j < n ? x[i + j] - m : -87.0f;
    store<W>(tile, exp_nonpos<W>(load<W>(tile)));
    for (int64_t j = 0; i + j < n; ++j) {
      x[i + j] = tile[j];
      sum += tile[j];
    }
  }
  return 1.0f / sum;
}

// og[r] = sum_s p[r][s] V[s] over n slots, for NV = hd / W vectors per row held in
// registers across a tile of slots (the tile's V rows stay in L1 for the rep heads).
template <int W, int NV>
MMOE_INLINE void pv_block(const float* p, int64_t ld, int64_t rep, const float* v, int64_t hd, int64_t n, float* og) {
  using F = typename Vec<W>::f;
  constexpr int64_t kTile = 32;
  for (int64_t s0 = 0; s0 < n; s0 += kTile) {
    const int64_t s1 = std::min<int64_t>(n, s0 + kTile);
    for (int64_t r = 0; r < rep; ++r) {
      F acc[NV];
#pragma GCC unroll 16
      for (int a = 0; a < NV; ++a) acc[a] = load<W>(og + r * hd + a * W);
      const float* pr = p + r * ld;
      for (int64_t s = s0; s < s1; ++s) {
        const float w = pr[s];
        const float* vr = v + s * hd;
#pragma GCC unroll 16
        for (int a = 0; a < NV; ++a) acc[a] += w * load<W>(vr + a * W);
      }
#pragma GCC unroll 16
      for (int a = 0; a < NV; ++a) store<W>(og + r * hd + a * W, acc[a]);
    }
  }
}

MMOE_INLINE void pv_generic(const float* p, int64_t ld, int64_t rep, const float* v, int64_t hd, int64_t n,
                            float* og) {
  for (int64_t s = 0; s < n; ++s)
    for (int64_t r = 0; r < rep; ++r) {
      const float w = p[r * ld + s];
      for (int64_t d = 0; d < hd; ++d) og[r * hd + d] += w * v[s * hd + d];
    }
}

template <int W>
MMOE_INLINE void pv(const float* p, int64_t ld, int64_t rep, const float* v, int64_t hd, int64_t n, float* og) {
  if (hd == 1 * W) return pv_block<W, 1>(p, ld, rep, v, hd, n, og);
  if (hd == 2 * W) return pv_block<W, 2>(p, ld, rep, v, hd, n, og);
  if (hd == 4 * W) return pv_block<W, 4>(p, ld, rep, v, hd, n, og);
  if (hd == 8 * W) return pv_block<W, 8>(p, ld, rep, v, hd, n, og);
  if (hd == 16 * W) return pv_block<W, 16>(p, ld, rep, v, hd, n, og);
  pv_generic(p, ld, rep, v, hd, n, og);
}

// One (query, KV head) item; scores: scratch of rep * round_up(n, W) floats.
template <int W>
MMOE_INLINE void attend_item(const Args& A, int64_t t, int64_t g, float* scores) {
  const int64_t rep = A.H / A.KV, hd = A.hd;
  const int64_t p = A.pos[t];
  const int64_t lo = A.window > 0 ? std::max<int64_t>(0, p - A.window + 1) : 0;
  const int64_t n = p - lo + 1;
  const int64_t ld = (n + W - 1) / W * W;
  const float* qg = A.q + (t * A.H + g * rep) * hd;
  const float* kT = A.kT + g * hd * A.Sk;
  const float* vg = A.v + (g * A.S + lo) * hd;
  float* og = A.out + (t * A.H + g * rep) * hd;
  float inv[64];
  scores_block<W>(qg, rep, kT, A.Sk, hd, lo, n, A.scale, scores, ld);
  for (int64_t r = 0; r < rep; ++r) inv[r] = softmax_row<W>(scores + r * ld, n);
  std::fill(og, og + rep * hd, 0.0f);
  pv<W>(scores, ld, rep, vg, hd, n, og);
  for (int64_t r = 0; r < rep; ++r)
    for (int64_t d = 0; d < hd; ++d) og[r * hd + d] *= inv[r];
}

template <int W>
MMOE_INLINE void run_range(const Args& A, int64_t b, int64_t e, std::vector<float>& scratch) {
  for (int64_t i = b; i < e; ++i) {
    const int64_t t = i / A.KV, g = i % A.KV;
    const int64_t need = (A.H / A.KV) * (A.pos[t] + 1 + W);
    if ((int64_t)scratch.size() < need) scratch.resize(need);
    attend_item<W>(A, t, g, scratch.data());
  }
}

void range_portable(const Args& A, int64_t b, int64_t e, std::vector<float>& s) { run_range<4>(A, b, e, s); }
#ifdef MMOE_X86
__attribute__((target("avx2,fma"))) void range_avx2(const Args& A, int64_t b, int64_t e, std::vector<float>& s) {
  run_range<8>(A, b, e, s);
}
__attribute__((target("avx512f,avx512vl,avx512bw,fma"))) void range_avx512(const Args& A, int64_t b, int64_t e,
                                                                           std::vector<float>& s) {
  run_range<16>(A, b, e, s);
}
#endif
#ifdef MMOE_NEON
// The 4-wide body on AArch64: Vec<4> values are NEON q registers and `acc += w * v` becomes
// fmla (GCC contracts by default in C++, Clang within an expression).
void range_neon(const Args& A, int64_t b, int64_t e, std::vector<float>& s) { run_range<4>(A, b, e, s); }
#endif

using RangeFn = void (*)(const Args&, int64_t, int64_t, std::vector<float>&);

RangeFn pick_range() {
  const char* isa = isa_name();
#ifdef MMOE_X86
  if (std::strcmp(isa, "avx512vnni") == 0) return range_avx512;
  if (std::strcmp(isa, "avx2") == 0) return range_avx2;
#endif
#ifdef MMOE_NEON
  if (std::strcmp(isa, "neon") == 0) return range_neon;
#endif
  (void)isa;
  return range_portable;
}

thread_local std::vector<float> t_scores;

}  // namespace

int attend_kv(const float* q, const float* kT, const float* v, const int64_t* pos, int64_t T, int64_t H, int64_t KV,
              int64_t S, int64_t Sk, int64_t hd, int64_t window, float* out) {
  char buf[200];
  if (Sk < S) {
    std::snprintf(buf, sizeof buf, "mmoe::attend_kv: the K cache's rows (%lld) are shorter than the V cache (%lld)",
                  (long long)Sk, (long long)S);
    set_last_error(buf);
    return 1;
  }
  if (KV < 1 || H % KV != 0 || H / KV > 64 || hd < 1) {
    std::snprintf(buf, sizeof buf, "mmoe::attend_kv: H=%lld must be a multiple of KV=%lld (at most 64 per KV head)",
                  (long long)H, (long long)KV);
    set_last_error(buf);
    return 1;
  }
  for (int64_t t = 0; t < T; ++t)
    if (pos[t] < 0 || pos[t] >= S) {
      std::snprintf(buf, sizeof buf, "mmoe::attend_kv: position %lld out of the cache's range [0, %lld)",
                    (long long)pos[t], (long long)S);
      set_last_error(buf);
      return 1;
    }
  const float scale = 1.0f / std::sqrt((float)hd);
  const Args A{q, kT, v, pos, T, H, KV, S, Sk, hd, window, scale, out};
  const RangeFn fn = pick_range();
  executorch::extension::parallel_for(0, T * KV, 1, [&](int64_t b, int64_t e) { fn(A, b, e, t_scores); });
  return 0;
}

}  // namespace mmoe

extern "C" {
__attribute__((visibility("default"))) int mmoe_attend_kv_raw(const float* q, const float* k_t, const float* v,
                                                              const int64_t* pos, int64_t T, int64_t H, int64_t KV,
                                                              int64_t S, int64_t Sk, int64_t hd, int64_t window,
                                                              float* out) {
  return mmoe::attend_kv(q, k_t, v, pos, T, H, KV, S, Sk, hd, window, out);
}
}
