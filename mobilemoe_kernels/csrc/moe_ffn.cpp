// MoE SwiGLU feed-forward reading only the chosen experts' INT4 (R16K4) weights.
//
// Algorithm (prefill and decode alike):
//  1. check ids; counting sort of the T*K (token, slot) pairs by expert (stable);
//  2. per-token asymmetric INT8 quantization of x (torchao numerics);
//  3. W13 GEMM: work items (active expert, 16-row block); each item runs its expert's
//     tokens in micro-tiles of up to NT tokens x 16 rows, unpacking each weight group
//     once per tile; results go to gu[sorted pair, 2H];
//  4. h = silu(gate) * up, per-pair INT8 quantization;
//  5. W2 GEMM like 3 into y[sorted pair, D];
//  6. out[t] = sum_k gates[t,k] * y[pair(t,k)] in k order.
// Work items run on ExecuTorch's threadpool; every output element is produced by one
// item in a fixed order, so results do not depend on the thread count.
//
// Integer tricks. Every path computes acc[n] = sum_g s[n,g] * dot_g(q_w, q_a) (exact int32
// per group, fp32 across groups); the epilogue is y[n] = sa * (acc[n] - zp * corr[n]) with
// corr[n] = sum_g s[n,g] sum_c q_w (pack.py).
//  * AVX2 (maddubs, u8 x s8, int16 pair sums): weight nibbles v = q + 8 in [0, 15]
//    (nibble ^ 8) are the unsigned operand, q_a the signed one (no int16 saturation:
//    8 * 2 * 15 * 128 < 32768); dot(q_w, q_a) = dot(v, q_a) - 8 * sum(q_a).
//  * AVX512-VNNI (dpbusd, no saturation): weights as bytes q * 16 (masking with 0xF0),
//    activations u = q_a + 128 (stored as q_a ^ 0x80); dot(q_w, q_a) = dot(16 q_w, u) / 16
//    - 128 * sum(q_w), the last term folded as 128 * corr.
//  * NEON (AArch64): signed nibbles (arithmetic shifts), signed q_a; with the dot-product
//    extension (__ARM_FEATURE_DOTPROD, e.g. -march=armv8.2-a+dotprod) sdot by lane, else
//    vmull_s8/vmlal_s8 into int16 (at most 8 products of |.| <= 1024 per lane) and pairwise
//    widening adds. The per-group int32 dot is exact (the portable value); groups are
//    accumulated in fp32 with a fused multiply-add, as the portable path does on Arm
//    (std::fma there), so on AArch64 neon and portable give bit-identical results.

#include "moe_ffn.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MMOE_X86 1
#endif
#if defined(__aarch64__) || defined(__ARM_NEON)
#include <arm_neon.h>
#endif
#if defined(__aarch64__)
#define MMOE_NEON 1  // AArch64 (arm64-v8a); 32-bit Arm runs the portable path
#endif

#include "parallel.h"
#include "vec.h"

namespace mmoe {
namespace {

thread_local std::string g_last_error;

enum Isa { kPortable = 0, kAvx2 = 1, kAvx512Vnni = 2, kNeon = 3 };
const char* kIsaNames[] = {"portable", "avx2", "avx512vnni", "neon"};
constexpr int kNumIsas = 4;

bool isa_supported(int isa) {
#ifdef MMOE_X86
  __builtin_cpu_init();
  if (isa == kAvx2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  if (isa == kAvx512Vnni)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
#endif
#ifdef MMOE_NEON
  if (isa == kNeon) return true;  // Advanced SIMD is mandatory on AArch64
#endif
  return isa == kPortable;
}

int best_isa() {
  if (isa_supported(kAvx512Vnni)) return kAvx512Vnni;
  if (isa_supported(kAvx2)) return kAvx2;
  if (isa_supported(kNeon)) return kNeon;
  return kPortable;
}

int parse_isa(const char* s) {
  if (!s) return -1;
  for (int i = 0; i < kNumIsas; ++i)
    if (std::strcmp(s, kIsaNames[i]) == 0) return i;
  return -1;
}

int initial_isa() {
  const char* env = std::getenv("MOBILEMOE_KERNELS_ISA");
  if (env && *env) {
    int want = parse_isa(env);
    if (want < 0) {
      std::fprintf(stderr, "mobilemoe_kernels: unknown MOBILEMOE_KERNELS_ISA=%s; using %s\n", env,
                   kIsaNames[best_isa()]);
    } else if (!isa_supported(want)) {
      std::fprintf(stderr, "mobilemoe_kernels: MOBILEMOE_KERNELS_ISA=%s not supported here; using %s\n",
                   env, kIsaNames[best_isa()]);
    } else {
      return want;
    }
  }
  return best_isa();
}

int& current_isa() {
  static int isa = initial_isa();
  return isa;
}

inline float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t man = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal
      int e = -1;
      do { ++e; man <<= 1; } while (!(man & 0x400));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ---- activation quantization (torchao choose_qparams_affine + quantize_affine) ----
struct ActRow {
  const int8_t* q;   // [C]
  const int32_t* gs; // [C/32] group sums of q
  float scale;
  int32_t zp;
};

// torchao's asymmetric per-row INT8 parameters from the row's min and max (fp32, as torch).
inline void act_qparams(float mn, float mx, float* scale_out, float* zp_out) {
  const float min_neg = std::min(mn, 0.0f), max_pos = std::max(mx, 0.0f);
  const float scale = std::max((max_pos - min_neg) / 255.0f, 1.17549435e-38f);  // eps: FLT_MIN
  const float zpf = -128.0f - std::nearbyint(min_neg / scale);
  *scale_out = scale;
  *zp_out = std::min(std::max(zpf, -128.0f), 127.0f);
}

void quant_row(const float* v, int64_t C, int8_t* q, int32_t* gsum, float* scale_out, int32_t* zp_out) {
  float mn = v[0], mx = v[0];
  for (int64_t i = 1; i < C; ++i) { mn = std::min(mn, v[i]); mx = std::max(mx, v[i]); }
  float scale, zpf;
  act_qparams(mn, mx, &scale, &zpf);
  float inv = 1.0f / scale;
  for (int64_t i = 0; i < C; ++i) {
    float r = std::nearbyint(v[i] * inv) + zpf;
    r = std::min(std::max(r, -128.0f), 127.0f);
    q[i] = (int8_t)r;
  }
  for (int64_t g = 0; g < C / 32; ++g) {
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) s += q[g * 32 + j];
    gsum[g] = s;
  }
  *scale_out = scale;
  *zp_out = (int32_t)zpf;
}

#ifdef MMOE_X86
// Same numerics as quant_row (min/max are order-free; _mm256_round_ps nearest-even ==
// nearbyint under the default rounding mode; same fp32 operations per element).
// U8: store q ^ 0x80 (= q + 128 as a byte, what the VNNI path reads); the group sums are of q.
template <bool U8>
__attribute__((target("avx2,fma"))) void quant_row_avx2_t(const float* v, int64_t C, int8_t* q, int32_t* gsum,
                                                          float* scale_out, int32_t* zp_out) {
  __m256 vmn = _mm256_loadu_ps(v), vmx = vmn;
  for (int64_t i = 8; i < C; i += 8) {
    __m256 t = _mm256_loadu_ps(v + i);
    vmn = _mm256_min_ps(vmn, t);
    vmx = _mm256_max_ps(vmx, t);
  }
  alignas(32) float bmn[8], bmx[8];
  _mm256_store_ps(bmn, vmn);
  _mm256_store_ps(bmx, vmx);
  float mn = bmn[0], mx = bmx[0];
  for (int j = 1; j < 8; ++j) { mn = std::min(mn, bmn[j]); mx = std::max(mx, bmx[j]); }
  float scale, zpf;
  act_qparams(mn, mx, &scale, &zpf);
  const __m256 inv = _mm256_set1_ps(1.0f / scale), vzp = _mm256_set1_ps(zpf);
  const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
  for (int64_t g = 0; g < C / 32; ++g) {
    __m256i qi[4];
    for (int u = 0; u < 4; ++u) {
      __m256 t = _mm256_mul_ps(_mm256_loadu_ps(v + g * 32 + u * 8), inv);
      t = _mm256_add_ps(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vzp);
      t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
      qi[u] = _mm256_cvtps_epi32(t);
    }
    // pack 32 int32 -> 32 int8 in order
    __m256i p01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[0], qi[1]), 0xD8);
    __m256i p23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[2], qi[3]), 0xD8);
    __m256i b = _mm256_permute4x64_epi64(_mm256_packs_epi16(p01, p23), 0xD8);
    if (U8) b = _mm256_xor_si256(b, _mm256_set1_epi8((char)0x80));
    _mm256_storeu_si256((__m256i*)(q + g * 32), b);
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
    alignas(32) int32_t sb[8];
    _mm256_store_si256((__m256i*)sb, s);
    gsum[g] = sb[0] + sb[1] + sb[2] + sb[3] + sb[4] + sb[5] + sb[6] + sb[7];
  }
  *scale_out = scale;
  *zp_out = (int32_t)zpf;
}
void quant_row_avx2(const float* v, int64_t C, int8_t* q, int32_t* gsum, float* scale_out, int32_t* zp_out) {
  quant_row_avx2_t<false>(v, C, q, gsum, scale_out, zp_out);
}
void quant_row_avx2_u8(const float* v, int64_t C, int8_t* q, int32_t* gsum, float* scale_out, int32_t* zp_out) {
  quant_row_avx2_t<true>(v, C, q, gsum, scale_out, zp_out);
}
#endif

#ifdef MMOE_NEON
// Same numerics as quant_row (frintn = nearbyint under the default rounding mode; same
// fp32 operations per element; min/max are order-free).
void quant_row_neon(const float* v, int64_t C, int8_t* q, int32_t* gsum, float* scale_out, int32_t* zp_out) {
  float32x4_t vmn = vld1q_f32(v), vmx = vmn;
  for (int64_t i = 4; i < C; i += 4) {
    const float32x4_t t = vld1q_f32(v + i);
    vmn = vminq_f32(vmn, t);
    vmx = vmaxq_f32(vmx, t);
  }
  float scale, zpf;
  act_qparams(vminvq_f32(vmn), vmaxvq_f32(vmx), &scale, &zpf);
  const float32x4_t inv = vdupq_n_f32(1.0f / scale), vzp = vdupq_n_f32(zpf);
  const float32x4_t lo = vdupq_n_f32(-128.0f), hi = vdupq_n_f32(127.0f);
  for (int64_t g = 0; g < C / 32; ++g) {
    int32x4_t qi[8];
    for (int u = 0; u < 8; ++u) {
      float32x4_t t = vmulq_f32(vld1q_f32(v + g * 32 + u * 4), inv);
      t = vaddq_f32(vrndnq_f32(t), vzp);
      t = vminq_f32(vmaxq_f32(t, lo), hi);
      qi[u] = vcvtq_s32_f32(t);  // exact: t is an integer in [-128, 127]
    }
    for (int u = 0; u < 8; u += 2) {
      const int16x8_t h = vcombine_s16(vmovn_s32(qi[u]), vmovn_s32(qi[u + 1]));
      vst1_s8(q + g * 32 + u * 4, vmovn_s16(h));
    }
    const int32x4_t s = vaddq_s32(vaddq_s32(vaddq_s32(qi[0], qi[1]), vaddq_s32(qi[2], qi[3])),
                                  vaddq_s32(vaddq_s32(qi[4], qi[5]), vaddq_s32(qi[6], qi[7])));
    gsum[g] = vaddvq_s32(s);
  }
  *scale_out = scale;
  *zp_out = (int32_t)zpf;
}
#endif

using QuantFn = void (*)(const float*, int64_t, int8_t*, int32_t*, float*, int32_t*);

// ---- 16-row x NT-token micro-kernels: acc[i*16 + r] = sum_g s[r,g] * dot_g(q_w[r], q_a[i]) ----
// wp: row block start (G groups x 256 bytes); sc: G x 16 fp16 scales.

// d[r] = dot(q_w[r], q_a) over one group (exact int32), for the 16 rows of block b.
inline void dot_group_portable(const uint8_t* b, const int8_t* qa, int32_t* d) {
  for (int r = 0; r < 16; ++r) {
    int32_t acc = 0;
    for (int s = 0; s < 4; ++s) {
      for (int j = 0; j < 4; ++j) {
        uint8_t byte = b[s * 64 + r * 4 + j];
        int lo = (int)(byte & 0xF); lo = lo >= 8 ? lo - 16 : lo;
        int hi = (int)(byte >> 4); hi = hi >= 8 ? hi - 16 : hi;
        acc += lo * qa[s * 4 + j] + hi * qa[(s + 4) * 4 + j];
      }
    }
    d[r] = acc;
  }
}

void rb_portable(const uint8_t* wp, const uint16_t* sc, int64_t G, int nt, const ActRow* a, float* acc, const float*) {
  for (int i = 0; i < nt; ++i) {
    float* o = acc + i * 16;
    for (int r = 0; r < 16; ++r) o[r] = 0.0f;
    for (int64_t g = 0; g < G; ++g) {
      int32_t d[16];
      dot_group_portable(wp + g * 256, a[i].q + g * 32, d);
      for (int r = 0; r < 16; ++r) {
#ifdef MMOE_X86
        o[r] += half_to_float(sc[g * 16 + r]) * (float)d[r];
#else  // fused, as the NEON path (and whatever contraction the compiler would choose)
        o[r] = std::fma(half_to_float(sc[g * 16 + r]), (float)d[r], o[r]);
#endif
      }
    }
  }
}

#ifdef MMOE_X86
inline int32_t load_i32(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

template <int NT>
__attribute__((target("avx2,fma,f16c"))) void rb_avx2_t(const uint8_t* wp, const uint16_t* sc, int64_t G,
                                                          const ActRow* a, float* acc) {
  const __m256i m0f = _mm256_set1_epi8(0x0F);
  const __m256i x88 = _mm256_set1_epi8((char)0x88);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int h = 0; h < 2; ++h) {
    __m256 facc[NT];
    for (int i = 0; i < NT; ++i) facc[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      const uint8_t* b = wp + g * 256 + h * 32;
      __m256i w[8];
      for (int s = 0; s < 4; ++s) {
        __m256i raw = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(b + s * 64)), x88);
        w[s] = _mm256_and_si256(raw, m0f);
        w[s + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m0f);
      }
      __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sc + g * 16 + h * 8)));
      for (int i = 0; i < NT; ++i) {
        const int8_t* qa = a[i].q + g * 32;
        __m256i s16 = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(load_i32(qa)));
        for (int s = 1; s < 8; ++s)
          s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[s], _mm256_set1_epi32(load_i32(qa + s * 4))));
        __m256i s32 = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones), _mm256_set1_epi32(8 * a[i].gs[g]));
        facc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), scale, facc[i]);
      }
    }
    for (int i = 0; i < NT; ++i) _mm256_storeu_ps(acc + i * 16 + h * 8, facc[i]);
  }
}

// VNNI: weights as signed bytes q*16 (high nibble: & 0xF0; low nibble: << 4 then & 0xF0),
// activations unsigned u = q_a + 128 (ActRow.q holds q_a ^ 0x80 on this path): dpbusd gives
// 16 * dot_g(q_w, u), and sum_g s_g dot_g(q_w, q_a) = (sum_g s_g * 16 dot_g(q_w, u)) / 16
// - 128 * corr. The epilogue is fused: out[i * ldo + r] = scale_i * (acc - zp_i * corr[r]),
// with acc - zp_i * corr[r] as one FMA (one rounding; the shared scalar epilogue of the other
// paths rounds the product too).
// Per group the 8 unpacked weight vectors serve all NT tokens; the tokens run in chunks of
// up to kVnniChunk whose int32 accumulators advance together (one dpbusd chain per token,
// kVnniChunk chains in flight against dpbusd's latency), then one convert and one FMA per
// token and group. Only 512-bit dpbusd, convert and FMA per token: the unpacking (12
// operations per group) is shared by the tile.
constexpr int kVnniChunk = 6;
template <int NT>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c"))) void rb_vnni_t(
    const uint8_t* wp, const uint16_t* sc, int64_t G, const ActRow* a, const float* corr, float* out,
    int64_t ldo) {
  const __m512i mf0 = _mm512_set1_epi8((char)0xF0);
  const int8_t* q[NT];
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) q[i] = a[i].q;
  __m512 facc[NT];
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) facc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* b = wp + g * 256;
    // the weights 16 groups ahead (the next row block's after the last groups: blocks are
    // contiguous per expert), and their scales
    _mm_prefetch((const char*)(b + 4096), _MM_HINT_T0);
    _mm_prefetch((const char*)(b + 4096 + 64), _MM_HINT_T0);
    _mm_prefetch((const char*)(b + 4096 + 128), _MM_HINT_T0);
    _mm_prefetch((const char*)(b + 4096 + 192), _MM_HINT_T0);
    _mm_prefetch((const char*)(sc + g * 16 + 256), _MM_HINT_T0);
    __m512i w[8];
    for (int s = 0; s < 4; ++s) {
      const __m512i raw = _mm512_loadu_si512((const void*)(b + s * 64));
      w[s] = _mm512_and_si512(_mm512_slli_epi16(raw, 4), mf0);
      w[s + 4] = _mm512_and_si512(raw, mf0);
    }
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(sc + g * 16)));
#pragma GCC unroll 4
    for (int i0 = 0; i0 < NT; i0 += kVnniChunk) {
      constexpr int kC = NT < kVnniChunk ? NT : kVnniChunk;
      __m512i acc[kC];
#pragma GCC unroll 8
      for (int i = 0; i < kC; ++i) acc[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int s = 0; s < 8; ++s) {
#pragma GCC unroll 8
        for (int i = 0; i < kC; ++i)
          if (i0 + i < NT)
            acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_set1_epi32(load_i32(q[i0 + i] + g * 32 + s * 4)), w[s]);
      }
#pragma GCC unroll 8
      for (int i = 0; i < kC; ++i)
        if (i0 + i < NT) facc[i0 + i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i]), scale, facc[i0 + i]);
    }
  }
  const __m512 vc = _mm512_loadu_ps(corr);
  const __m512 c128 = _mm512_mul_ps(vc, _mm512_set1_ps(128.0f));
  const __m512 inv16 = _mm512_set1_ps(1.0f / 16.0f);
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) {
    const __m512 acc = _mm512_fmsub_ps(facc[i], inv16, c128);
    const __m512 centered = _mm512_fnmadd_ps(_mm512_set1_ps((float)a[i].zp), vc, acc);  // acc - zp * corr
    _mm512_storeu_ps(out + i * ldo, _mm512_mul_ps(_mm512_set1_ps(a[i].scale), centered));
  }
}

void rb_avx2(const uint8_t* wp, const uint16_t* sc, int64_t G, int nt, const ActRow* a, float* acc, const float*) {
  switch (nt) {
    case 1: rb_avx2_t<1>(wp, sc, G, a, acc); break;
    case 2: rb_avx2_t<2>(wp, sc, G, a, acc); break;
    case 3: rb_avx2_t<3>(wp, sc, G, a, acc); break;
    default: rb_avx2_t<4>(wp, sc, G, a, acc); break;
  }
}
template <int... Ns>
struct VnniTable {
  static constexpr void (*fns[])(const uint8_t*, const uint16_t*, int64_t, const ActRow*, const float*, float*,
                                 int64_t) = {rb_vnni_t<Ns>...};
};
constexpr int kVnniMaxNt = 12;
void rb_vnni(const uint8_t* wp, const uint16_t* sc, int64_t G, int nt, const ActRow* a, const float* corr,
             float* out, int64_t ldo) {
  using T = VnniTable<1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12>;
  T::fns[std::min(std::max(nt, 1), kVnniMaxNt) - 1](wp, sc, G, a, corr, out, ldo);
}
#endif

#ifdef MMOE_NEON
// Rows 4k..4k+3 of a block: wl[s] / wh[s] hold their low / high nibbles of step s (signed),
// 4 bytes per row; returns the four rows' exact int32 group dots with q_a (32 bytes).
inline int32x4_t neon_dot4(const int8x16_t* wl, const int8x16_t* wh, const int8_t* qa) {
#if defined(__ARM_FEATURE_DOTPROD)
  const int8x16_t a0 = vld1q_s8(qa), a1 = vld1q_s8(qa + 16);
  int32x4_t d = vdotq_laneq_s32(vdupq_n_s32(0), wl[0], a0, 0);
  d = vdotq_laneq_s32(d, wl[1], a0, 1);
  d = vdotq_laneq_s32(d, wl[2], a0, 2);
  d = vdotq_laneq_s32(d, wl[3], a0, 3);
  d = vdotq_laneq_s32(d, wh[0], a1, 0);
  d = vdotq_laneq_s32(d, wh[1], a1, 1);
  d = vdotq_laneq_s32(d, wh[2], a1, 2);
  d = vdotq_laneq_s32(d, wh[3], a1, 3);
  return d;
#else
  int8x8_t ad[8];  // the 4 activations of step s, twice (one copy per row of a half)
  for (int s = 0; s < 8; ++s) {
    int32_t v;
    std::memcpy(&v, qa + s * 4, 4);
    ad[s] = vreinterpret_s8_s32(vdup_n_s32(v));
  }
  int16x8_t pl = vmull_s8(vget_low_s8(wl[0]), ad[0]), ph = vmull_s8(vget_high_s8(wl[0]), ad[0]);
  for (int s = 1; s < 4; ++s) {
    pl = vmlal_s8(pl, vget_low_s8(wl[s]), ad[s]);
    ph = vmlal_s8(ph, vget_high_s8(wl[s]), ad[s]);
  }
  for (int s = 0; s < 4; ++s) {
    pl = vmlal_s8(pl, vget_low_s8(wh[s]), ad[s + 4]);
    ph = vmlal_s8(ph, vget_high_s8(wh[s]), ad[s + 4]);
  }
  // pl: rows 4k, 4k+1 (4 int16 each); pairwise widening sums, then pairs of pairs
  return vpaddq_s32(vpaddlq_s16(pl), vpaddlq_s16(ph));
#endif
}

// Signed nibbles of rows 4k..4k+3 of block b: low nibble (<< 4, arithmetic >> 4), high (>> 4).
inline void neon_unpack4(const uint8_t* b, int k, int8x16_t* wl, int8x16_t* wh) {
  for (int s = 0; s < 4; ++s) {
    const int8x16_t raw = vreinterpretq_s8_u8(vld1q_u8(b + s * 64 + k * 16));
    wl[s] = vshrq_n_s8(vshlq_n_s8(raw, 4), 4);
    wh[s] = vshrq_n_s8(raw, 4);
  }
}

// Same as dot_group_portable (for the self-test).
inline void dot_group_neon(const uint8_t* b, const int8_t* qa, int32_t* d) {
  for (int k = 0; k < 4; ++k) {
    int8x16_t wl[4], wh[4];
    neon_unpack4(b, k, wl, wh);
    vst1q_s32(d + 4 * k, neon_dot4(wl, wh, qa));
  }
}

template <int NT>
void rb_neon_t(const uint8_t* wp, const uint16_t* sc, int64_t G, const ActRow* a, float* acc) {
  float32x4_t facc[NT][4];
  for (int i = 0; i < NT; ++i)
    for (int k = 0; k < 4; ++k) facc[i][k] = vdupq_n_f32(0.0f);
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* b = wp + g * 256;
    __builtin_prefetch(b + 2048);
    for (int k = 0; k < 4; ++k) {
      int8x16_t wl[4], wh[4];
      neon_unpack4(b, k, wl, wh);
      const float32x4_t scale = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc + g * 16 + 4 * k)));
      for (int i = 0; i < NT; ++i) {
        const int32x4_t d = neon_dot4(wl, wh, a[i].q + g * 32);
        facc[i][k] = vfmaq_f32(facc[i][k], scale, vcvtq_f32_s32(d));
      }
    }
  }
  for (int i = 0; i < NT; ++i)
    for (int k = 0; k < 4; ++k) vst1q_f32(acc + i * 16 + 4 * k, facc[i][k]);
}

void rb_neon(const uint8_t* wp, const uint16_t* sc, int64_t G, int nt, const ActRow* a, float* acc, const float*) {
  switch (nt) {
    case 1: rb_neon_t<1>(wp, sc, G, a, acc); break;
    case 2: rb_neon_t<2>(wp, sc, G, a, acc); break;
    case 3: rb_neon_t<3>(wp, sc, G, a, acc); break;
    default: rb_neon_t<4>(wp, sc, G, a, acc); break;
  }
}
#endif

// A path's micro-kernel with the epilogue: out[i * ldo + r] = a[i].scale * (acc[i][r] - a[i].zp * corr[r])
// for the nt tokens i and 16 rows r of one row block.
using RbFn = void (*)(const uint8_t*, const uint16_t*, int64_t, int, const ActRow*, const float*, float*, int64_t);
using RbAccFn = void (*)(const uint8_t*, const uint16_t*, int64_t, int, const ActRow*, float*, const float*);

// The paths whose micro-kernel returns the accumulators: the shared scalar epilogue.
template <RbAccFn F>
void rb_epilogue(const uint8_t* wp, const uint16_t* sc, int64_t G, int nt, const ActRow* a, const float* corr,
                 float* out, int64_t ldo) {
  alignas(64) float acc[16 * 16];
  F(wp, sc, G, nt, a, acc, corr);
  for (int i = 0; i < nt; ++i) {
    float* o = out + i * ldo;
    const float sa = a[i].scale;
    const float zp = (float)a[i].zp;
    for (int r = 0; r < 16; ++r) o[r] = sa * (acc[i * 16 + r] - zp * corr[r]);
  }
}

RbFn pick(int isa, int* nt_max) {
#ifdef MMOE_X86
  if (isa == kAvx512Vnni) { *nt_max = kVnniMaxNt; return rb_vnni; }
  if (isa == kAvx2) { *nt_max = 4; return rb_epilogue<rb_avx2>; }
#endif
#ifdef MMOE_NEON
  if (isa == kNeon) { *nt_max = 4; return rb_epilogue<rb_neon>; }
#endif
  *nt_max = 4;
  return rb_epilogue<rb_portable>;
}

// h[j] = silu(gate[j]) * up[j] for j < H (H % 32 == 0), W floats at a time (vec::silu: the
// same operations on every path of one width; on AArch64 the portable and neon paths both
// run the 4-wide body, so they stay bit-identical).
template <int W>
inline __attribute__((always_inline)) void swiglu_row_w(const float* gate, const float* up, int64_t H, float* h) {
  for (int64_t j = 0; j < H; j += W)
    vec::store<W>(h + j, vec::silu<W>(vec::load<W>(gate + j)) * vec::load<W>(up + j));
}
void swiglu_row_4(const float* gate, const float* up, int64_t H, float* h) { swiglu_row_w<4>(gate, up, H, h); }
#ifdef MMOE_X86
__attribute__((target("avx2,fma"))) void swiglu_row_8(const float* gate, const float* up, int64_t H, float* h) {
  swiglu_row_w<8>(gate, up, H, h);
}
__attribute__((target("avx512f,avx512vl,avx512bw,fma"))) void swiglu_row_16(const float* gate, const float* up,
                                                                            int64_t H, float* h) {
  swiglu_row_w<16>(gate, up, H, h);
}
#endif
using SwigluFn = void (*)(const float*, const float*, int64_t, float*);

SwigluFn pick_swiglu(int isa) {
#ifdef MMOE_X86
  if (isa == kAvx512Vnni) return swiglu_row_16;
  if (isa == kAvx2) return swiglu_row_8;
#endif
  (void)isa;
  return swiglu_row_4;
}

struct Scratch {
  std::vector<int64_t> counts, offsets, order, pos_of_pair, active;
  std::vector<ActRow> rows;  // a GEMM stage's activation rows, by sorted pair
  int64_t P = 0;             // pairs (T * K)
  std::vector<int8_t> qx, qh;
  std::vector<int32_t> gx, gh, zx, zh;
  std::vector<float> sx, sh, gu, y;
};

thread_local Scratch t_scratch;

template <typename V>
void ensure(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

bool check_ids(const int64_t* ids, int64_t n, int64_t E) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= E) {
      char buf[160];
      std::snprintf(buf, sizeof(buf), "mmoe: expert id %lld (at flat index %lld) out of range [0, %lld)",
                    (long long)ids[i], (long long)i, (long long)E);
      g_last_error = buf;
      return false;
    }
  }
  return true;
}

// Stable counting sort of pairs p = t*K + k by expert.
void sort_pairs(Scratch& S, const int64_t* ids, int64_t P, int64_t E) {
  ensure(S.counts, E); ensure(S.offsets, E + 1); ensure(S.order, P); ensure(S.pos_of_pair, P);
  S.P = P;
  std::fill(S.counts.begin(), S.counts.begin() + E, 0);
  for (int64_t p = 0; p < P; ++p) S.counts[ids[p]]++;
  S.offsets[0] = 0;
  S.active.clear();
  for (int64_t e = 0; e < E; ++e) {
    S.offsets[e + 1] = S.offsets[e] + S.counts[e];
    if (S.counts[e]) S.active.push_back(e);
  }
  std::vector<int64_t>& fill = S.counts;  // reuse as cursor
  for (int64_t e = 0; e < E; ++e) fill[e] = S.offsets[e];
  for (int64_t p = 0; p < P; ++p) {
    int64_t at = fill[ids[p]]++;
    S.order[at] = p;
    S.pos_of_pair[p] = at;
  }
}

// Chunks of about 1/8 of a thread's share: few dispatches, still balanced. Results do not
// depend on it (each item is computed whole by one thread).
inline int64_t grain(int64_t n) {
  const int64_t th = std::max<int64_t>(1, executorch::extension::get_thread_count());
  return std::max<int64_t>(1, n / (8 * th));
}

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

// out[t] = sum_k gates[t,k] * y[pair(t,k)], summed in k order (the first term written, not
// added to zero: the same value).
void combine(const Scratch& S, const float* gates, const float* y, int64_t T, int64_t K, int64_t D, float* out) {
  executorch::extension::parallel_for(0, T, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* o = out + t * D;
      if (K == 0) {
        for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
        continue;
      }
      const float g0 = gates[t * K];
      const float* y0 = y + S.pos_of_pair[t * K] * D;
      for (int64_t d = 0; d < D; ++d) o[d] = g0 * y0[d];
      for (int64_t k = 1; k < K; ++k) {
        const float g = gates[t * K + k];
        const float* yr = y + S.pos_of_pair[t * K + k] * D;
        for (int64_t d = 0; d < D; ++d) o[d] += g * yr[d];
      }
    }
  });
}

// One quantized GEMM stage: for each active expert and 16-row block, rows n of
// out_rows[sorted pair, N] = act.scale * (acc - act.zp * corr[n]).
void qgemm_stage(Scratch& S, RbFn rb, int nt_max, const uint8_t* wp, const uint16_t* ws, const float* wc,
                 int64_t N, int64_t Kin, const int8_t* qa, const int32_t* gsum, const float* sa, const int32_t* za,
                 bool act_by_token, int64_t K, float* outp) {
  const int64_t nrb = N / 16, G = Kin / 32;
  const int64_t P = S.P;
  ensure(S.rows, P);
  for (int64_t j = 0; j < P; ++j) {  // once per stage, not per row block
    const int64_t src = act_by_token ? S.order[j] / K : j;
    S.rows[j] = ActRow{qa + src * Kin, gsum + src * G, sa[src], za[src]};
  }
  const ActRow* rows = S.rows.data();
  const int64_t nitems = (int64_t)S.active.size() * nrb;
  executorch::extension::parallel_for(0, nitems, grain(nitems), [&](int64_t ib, int64_t ie) {
    for (int64_t it = ib; it < ie; ++it) {
      const int64_t e = S.active[it / nrb];
      const int64_t r0 = it % nrb;
      const uint8_t* wblk = wp + ((e * nrb + r0) * G) * 256;
      const uint16_t* sblk = ws + ((e * nrb + r0) * G) * 16;
      const float* corr = wc + e * N + r0 * 16;
      const int64_t beg = S.offsets[e], end = S.offsets[e + 1];
      const int64_t ntiles = (end - beg + nt_max - 1) / nt_max;
      for (int64_t tile = 0, j = beg; tile < ntiles; ++tile) {
        const int nt = (int)((end - j) / (ntiles - tile));
        rb(wblk, sblk, G, nt, rows + j, corr, outp + j * N + r0 * 16, N);
        j += nt;
      }
    }
  });
}

}  // namespace

const char* last_error() { return g_last_error.c_str(); }
void set_last_error(const char* msg) { g_last_error = msg; }
const char* isa_name() { return kIsaNames[current_isa()]; }

int set_isa(const char* name) {
  int want = parse_isa(name);
  if (want < 0 || !isa_supported(want)) return -1;
  current_isa() = want;
  return 0;
}

int moe_ffn_8da4w(const float* x, const int64_t* ids, const float* gates, int64_t T, int64_t K, int64_t E,
                  int64_t D, int64_t H, const uint8_t* w13p, const uint16_t* w13s, const float* w13c,
                  const uint8_t* w2p, const uint16_t* w2s, const float* w2c, float* out) {
  const int64_t P = T * K;
  if (!check_ids(ids, P, E)) return 1;
  Scratch& S = t_scratch;
  sort_pairs(S, ids, P, E);
  int nt_max = 4;
  RbFn rb = pick(current_isa(), &nt_max);
  const SwigluFn swiglu = pick_swiglu(current_isa());
  // VNNI reads u = q + 128 (q ^ 0x80): its quantizer stores that
  QuantFn quant = quant_row;
#ifdef MMOE_X86
  if (current_isa() == kAvx2) quant = quant_row_avx2;
  if (current_isa() == kAvx512Vnni) quant = quant_row_avx2_u8;
#endif
#ifdef MMOE_NEON
  if (current_isa() == kNeon) quant = quant_row_neon;
#endif
  const int64_t H2 = 2 * H;
  // 2. quantize x per token
  ensure(S.qx, T * D); ensure(S.gx, T * (D / 32)); ensure(S.sx, T); ensure(S.zx, T);
  executorch::extension::parallel_for(0, T, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      quant(x + t * D, D, S.qx.data() + t * D, S.gx.data() + t * (D / 32), S.sx.data() + t, S.zx.data() + t);
  });
  // 3. W13
  ensure(S.gu, P * H2);
  qgemm_stage(S, rb, nt_max, w13p, w13s, w13c, H2, D, S.qx.data(), S.gx.data(), S.sx.data(), S.zx.data(), true, K,
              S.gu.data());
  // 4. SwiGLU + quantize h per pair (sorted order)
  ensure(S.qh, P * H); ensure(S.gh, P * (H / 32)); ensure(S.sh, P); ensure(S.zh, P);
  executorch::extension::parallel_for(0, P, 1, [&](int64_t b, int64_t e) {
    float hbuf[4096];
    std::vector<float> big;
    float* hb = hbuf;
    if (H > 4096) { big.resize(H); hb = big.data(); }
    for (int64_t i = b; i < e; ++i) {
      const float* g = S.gu.data() + i * H2;
      swiglu(g, g + H, H, hb);
      quant(hb, H, S.qh.data() + i * H, S.gh.data() + i * (H / 32), S.sh.data() + i, S.zh.data() + i);
    }
  });
  // 5. W2
  ensure(S.y, P * D);
  qgemm_stage(S, rb, nt_max, w2p, w2s, w2c, D, H, S.qh.data(), S.gh.data(), S.sh.data(), S.zh.data(), false, K,
              S.y.data());
  // 6. combine
  combine(S, gates, S.y.data(), T, K, D, out);
  return 0;
}

int moe_ffn_f32(const float* x, const int64_t* ids, const float* gates, int64_t T, int64_t K, int64_t E, int64_t D,
                int64_t H, const float* w13, const float* w2, float* out) {
  const int64_t P = T * K;
  if (!check_ids(ids, P, E)) return 1;
  Scratch& S = t_scratch;
  sort_pairs(S, ids, P, E);
  const int64_t H2 = 2 * H;
  ensure(S.gu, P * H2);
  ensure(S.y, P * D);
  // h (in place in gu's first H columns) per sorted pair, then y.
  executorch::extension::parallel_for(0, P, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t p = S.order[i];
      const int64_t ex = ids[p];
      const float* xr = x + (p / K) * D;
      float* g = S.gu.data() + i * H2;
      const float* W = w13 + ex * H2 * D;
      for (int64_t n = 0; n < H2; ++n) {
        const float* wr = W + n * D;
        float s = 0.0f;
        for (int64_t d = 0; d < D; ++d) s += wr[d] * xr[d];
        g[n] = s;
      }
      for (int64_t j = 0; j < H; ++j) g[j] = silu(g[j]) * g[H + j];
      const float* W2 = w2 + ex * D * H;
      float* yr = S.y.data() + i * D;
      for (int64_t n = 0; n < D; ++n) {
        const float* wr = W2 + n * H;
        float s = 0.0f;
        for (int64_t j = 0; j < H; ++j) s += wr[j] * g[j];
        yr[n] = s;
      }
    }
  });
  combine(S, gates, S.y.data(), T, K, D, out);
  return 0;
}

}  // namespace mmoe

extern "C" {
__attribute__((visibility("default"))) int mmoe_moe_ffn_8da4w_raw(
    const float* x, const int64_t* ids, const float* gates, int64_t T, int64_t K, int64_t E, int64_t D, int64_t H,
    const uint8_t* w13p, const uint16_t* w13s, const float* w13c, const uint8_t* w2p, const uint16_t* w2s,
    const float* w2c, float* out) {
  return mmoe::moe_ffn_8da4w(x, ids, gates, T, K, E, D, H, w13p, w13s, w13c, w2p, w2s, w2c, out);
}
__attribute__((visibility("default"))) int mmoe_moe_ffn_f32_raw(const float* x, const int64_t* ids,
                                                                 const float* gates, int64_t T, int64_t K, int64_t E,
                                                                 int64_t D, int64_t H, const float* w13,
                                                                 const float* w2, float* out) {
  return mmoe::moe_ffn_f32(x, ids, gates, T, K, E, D, H, w13, w2, out);
}
__attribute__((visibility("default"))) const char* mmoe_isa() { return mmoe::isa_name(); }
__attribute__((visibility("default"))) int mmoe_set_isa(const char* name) { return mmoe::set_isa(name); }
__attribute__((visibility("default"))) const char* mmoe_last_error() { return mmoe::last_error(); }
}
