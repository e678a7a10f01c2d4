// Standalone self-test of the kernel library's SIMD paths against its portable path, with
// no ExecuTorch (MMOE_NO_EXECUTORCH: serial parallel_for). The kernel sources are included
// whole, so their internal functions are reachable. Build and run: mobilemoe_kernels/cross_test.sh
// (native x86: portable vs avx2 / avx512vnni; AArch64 under qemu-user: portable vs neon).
//
// Checks, for every SIMD path this CPU has:
//  * integer parts exact: per-row INT8 activation quantization (q, group sums, scale, zero
//    point) and (NEON) the per-group int32 INT8 x INT4 dot;
//  * fp32 parts: the 16-row micro-kernels' accumulators, moe_ffn_8da4w, moe_ffn_f32 and
//    attend_kv, as max|a - b| / max|b| <= 1e-5 (on AArch64 neon must equal portable
//    bit for bit, which it does); x86's end-to-end 8da4w output may differ by one INT8 step
//    of a requantized hidden value (the paths' fp32 sums differ by rounding), checked
//    against 2e-3 there.
// Prints one line per check and a summary; exit status 1 on any mismatch.
#ifndef MMOE_NO_EXECUTORCH
#define MMOE_NO_EXECUTORCH 1
#endif
#include "../csrc/moe_ffn.cpp"
#include "../csrc/attend.cpp"

#include <cinttypes>
#include <cstdarg>
#include <random>

namespace {

int g_fail = 0, g_checks = 0;
bool g_verbose = false;

void report(bool ok, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void report(bool ok, const char* fmt, ...) {
  ++g_checks;
  if (!ok) ++g_fail;
  if (!ok || g_verbose) {
    va_list ap;
    va_start(ap, fmt);
    std::printf("%s ", ok ? "ok  " : "FAIL");
    std::vprintf(fmt, ap);
    std::printf("\n");
    va_end(ap);
  }
}

// max|a - b| / max|b|; inf if a non-finite value appears in either
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    num = std::max(num, (double)std::fabs(a[i] - b[i]));
    den = std::max(den, (double)std::fabs(b[i]));
  }
  return den > 0 ? num / den : num;
}

uint16_t float_to_half(float f) {  // normal positive values only (scales)
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t e = ((b >> 23) & 0xFF) - 127 + 15, m = (b >> 13) & 0x3FF;
  return (uint16_t)((e << 10) | m);
}

std::mt19937 rng(1234);
float urand(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
int irand(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

std::vector<int> simd_isas() {
  std::vector<int> v;
  for (int i = 1; i < mmoe::kNumIsas; ++i)
    if (mmoe::isa_supported(i)) v.push_back(i);
  return v;
}

mmoe::QuantFn quant_for(int isa) {
#ifdef MMOE_X86
  if (isa == mmoe::kAvx2 || isa == mmoe::kAvx512Vnni) return mmoe::quant_row_avx2;
#endif
#ifdef MMOE_NEON
  if (isa == mmoe::kNeon) return mmoe::quant_row_neon;
#endif
  (void)isa;
  return mmoe::quant_row;
}

void test_quant(int isa) {
  for (int64_t C : {32, 64, 96, 384, 768}) {
    for (int rep = 0; rep < 20; ++rep) {
      std::vector<float> v(C);
      const float sc = std::pow(10.0f, urand(-3, 2)), off = rep % 3 == 0 ? urand(0, 2) * sc : 0.0f;
      for (auto& x : v) x = urand(-sc, sc) + off;
      if (rep == 1) std::fill(v.begin(), v.end(), 0.0f);
      if (rep == 2) for (int64_t i = 0; i < C; ++i) v[i] = (float)(i % 7) * 0.5f;  // exact .5 ties
      std::vector<int8_t> q0(C), q1(C);
      std::vector<int32_t> g0(C / 32), g1(C / 32);
      float s0, s1;
      int32_t z0, z1;
      mmoe::quant_row(v.data(), C, q0.data(), g0.data(), &s0, &z0);
      quant_for(isa)(v.data(), C, q1.data(), g1.data(), &s1, &z1);
      bool ok = q0 == q1 && g0 == g1 && s0 == s1 && z0 == z1;
#ifdef MMOE_X86
      if (isa == mmoe::kAvx512Vnni) {  // the VNNI path's quantizer: the same, stored as q ^ 0x80
        std::vector<int8_t> q2(C);
        std::vector<int32_t> g2(C / 32);
        float s2;
        int32_t z2;
        mmoe::quant_row_avx2_u8(v.data(), C, q2.data(), g2.data(), &s2, &z2);
        for (auto& x : q2) x = (int8_t)((uint8_t)x ^ 0x80u);
        ok = ok && q0 == q2 && g0 == g2 && s0 == s2 && z0 == z2;
      }
#endif
      if (!ok || rep == 0)
        report(ok, "%s quant_row C=%" PRId64 " rep %d: int8 values, group sums, scale, zero point exact",
               mmoe::kIsaNames[isa], C, rep);
    }
  }
}

void test_dot_group(int isa) {
#ifdef MMOE_NEON
  if (isa != mmoe::kNeon) return;
  int bad = 0;
  for (int rep = 0; rep < 2000; ++rep) {
    uint8_t b[256];
    int8_t qa[32];
    for (auto& x : b) x = (uint8_t)(rep < 10 ? 0x88 : irand(0, 255));  // 0x88: all -8
    for (auto& x : qa) x = (int8_t)(rep < 5 ? -128 : rep < 10 ? 127 : irand(-128, 127));
    int32_t d0[16], d1[16];
    mmoe::dot_group_portable(b, qa, d0);
    mmoe::dot_group_neon(b, qa, d1);
    bad += std::memcmp(d0, d1, sizeof d0) != 0;
  }
#if defined(__ARM_FEATURE_DOTPROD)
  const char* how = "sdot";
#else
  const char* how = "vmull_s8/vmlal_s8";
#endif
  report(bad == 0, "neon (%s) int32 group dot: 2000 random blocks (incl. -8 x -128, -8 x 127), %d differ", how, bad);
#else
  (void)isa;
#endif
}

struct Packed {
  std::vector<uint8_t> p;
  std::vector<uint16_t> s;
  std::vector<float> c;
};

// random R16K4 weights for E experts of N rows x Kin inputs, with their corr terms
Packed make_packed(int64_t E, int64_t N, int64_t Kin) {
  const int64_t nrb = N / 16, G = Kin / 32;
  Packed P;
  P.p.resize(E * nrb * G * 256);
  P.s.resize(E * nrb * G * 16);
  P.c.assign(E * N, 0.0f);
  for (auto& x : P.p) x = (uint8_t)irand(0, 255);
  for (auto& x : P.s) x = float_to_half(urand(0.002f, 0.05f));
  int8_t ones[32];
  std::fill(ones, ones + 32, 1);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t rb = 0; rb < nrb; ++rb)
      for (int64_t g = 0; g < G; ++g) {
        int32_t sums[16];
        const int64_t blk = (e * nrb + rb) * G + g;
        mmoe::dot_group_portable(P.p.data() + blk * 256, ones, sums);
        for (int r = 0; r < 16; ++r)
          P.c[e * N + rb * 16 + r] += mmoe::half_to_float(P.s[blk * 16 + r]) * (float)sums[r];
      }
  return P;
}

void test_microkernel(int isa) {
  const int64_t G = 24;
  constexpr int kMaxRows = 16;
  Packed W = make_packed(1, 16, G * 32);
  std::vector<int8_t> q(kMaxRows * G * 32);
  std::vector<int32_t> gs(kMaxRows * G);
  float sa[kMaxRows];
  int32_t za[kMaxRows];
  for (int i = 0; i < kMaxRows; ++i) {
    std::vector<float> v(G * 32);
    for (auto& x : v) x = urand(-3, 3);
    mmoe::quant_row(v.data(), G * 32, q.data() + i * G * 32, gs.data() + i * G, &sa[i], &za[i]);
  }
  int nt_max = 0;
  mmoe::RbFn rb = mmoe::pick(isa, &nt_max);
  std::vector<int8_t> qu(q);  // VNNI reads q ^ 0x80
  if (isa == mmoe::kAvx512Vnni)
    for (auto& x : qu) x = (int8_t)((uint8_t)x ^ 0x80u);
  for (int nt = 1; nt <= std::min(nt_max, kMaxRows); ++nt) {
    // the accumulators (scale 1, zero point 0: the epilogue returns them unchanged), then the
    // epilogue with the rows' own scale and zero point; outputs ldo = 24 floats apart
    for (int with_qparams = 0; with_qparams < 2; ++with_qparams) {
      mmoe::ActRow rows0[kMaxRows], rows1[kMaxRows];
      for (int i = 0; i < nt; ++i) {
        const float s = with_qparams ? sa[i] : 1.0f;
        const int32_t z = with_qparams ? za[i] : 0;
        rows0[i] = {q.data() + i * G * 32, gs.data() + i * G, s, z};
        rows1[i] = {qu.data() + i * G * 32, gs.data() + i * G, s, z};
      }
      const int64_t ldo = 24;
      std::vector<float> acc0(nt * 16), a0(nt * ldo, 0.0f), a1(nt * ldo, 0.0f);
      mmoe::rb_portable(W.p.data(), W.s.data(), G, nt, rows0, acc0.data(), W.c.data());
      for (int i = 0; i < nt; ++i)
        for (int r = 0; r < 16; ++r)
          a0[i * ldo + r] = rows0[i].scale * (acc0[i * 16 + r] - (float)rows0[i].zp * W.c[r]);
      rb(W.p.data(), W.s.data(), G, nt, rows1, W.c.data(), a1.data(), ldo);
      const double err = rel_err(a1, a0);
      report(err <= 1e-5, "%s micro-kernel nt=%d G=%" PRId64 "%s: rel err %.3g%s", mmoe::kIsaNames[isa], nt, G,
             with_qparams ? " (with epilogue)" : "", err, err == 0 ? " (bit-identical)" : "");
    }
  }
}

struct MoeCase {
  int64_t T, K, E, D, H;
};

void test_moe(int isa) {
  const MoeCase cases[] = {{1, 1, 1, 64, 32},   {1, 4, 8, 128, 64},  {1, 8, 8, 64, 96},  {1, 2, 16, 256, 128},
                           {128, 1, 8, 64, 32}, {128, 4, 16, 256, 128}, {128, 6, 6, 96, 64}, {17, 3, 5, 160, 32}};
  for (const MoeCase& c : cases) {
    Packed w13 = make_packed(c.E, 2 * c.H, c.D), w2 = make_packed(c.E, c.D, c.H);
    std::vector<float> x(c.T * c.D), gates(c.T * c.K);
    std::vector<int64_t> ids(c.T * c.K);
    for (auto& v : x) v = urand(-2, 2);
    for (int64_t t = 0; t < c.T; ++t) {
      std::vector<int64_t> perm(c.E);
      for (int64_t e = 0; e < c.E; ++e) perm[e] = e;
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int64_t k = 0; k < c.K; ++k) {
        // T=1: distinct experts; prefill: every other token skips expert 0 (empty experts occur)
        ids[t * c.K + k] = perm[k];
        gates[t * c.K + k] = urand(0.05f, 1.0f);
      }
    }
    std::vector<float> o0(c.T * c.D), o1(c.T * c.D);
    mmoe::set_isa("portable");
    int rc0 = mmoe::moe_ffn_8da4w(x.data(), ids.data(), gates.data(), c.T, c.K, c.E, c.D, c.H, w13.p.data(),
                                  w13.s.data(), w13.c.data(), w2.p.data(), w2.s.data(), w2.c.data(), o0.data());
    mmoe::set_isa(mmoe::kIsaNames[isa]);
    int rc1 = mmoe::moe_ffn_8da4w(x.data(), ids.data(), gates.data(), c.T, c.K, c.E, c.D, c.H, w13.p.data(),
                                  w13.s.data(), w13.c.data(), w2.p.data(), w2.s.data(), w2.c.data(), o1.data());
    double err = rel_err(o1, o0);
    const double tol = isa == mmoe::kNeon ? 1e-5 : 2e-3;
    report(rc0 == 0 && rc1 == 0 && err <= tol, "%s moe_ffn_8da4w T=%" PRId64 " K=%" PRId64 " E=%" PRId64 " D=%" PRId64
           " H=%" PRId64 ": rel err %.3g (tol %.0e)%s", mmoe::kIsaNames[isa], c.T, c.K, c.E, c.D, c.H, err, tol,
           err == 0 ? " (bit-identical)" : "");
    // fp32 experts (plain C++ on every path)
    std::vector<float> w13f(c.E * 2 * c.H * c.D), w2f(c.E * c.D * c.H);
    for (auto& v : w13f) v = urand(-0.1f, 0.1f);
    for (auto& v : w2f) v = urand(-0.1f, 0.1f);
    mmoe::set_isa("portable");
    rc0 = mmoe::moe_ffn_f32(x.data(), ids.data(), gates.data(), c.T, c.K, c.E, c.D, c.H, w13f.data(), w2f.data(),
                            o0.data());
    mmoe::set_isa(mmoe::kIsaNames[isa]);
    rc1 = mmoe::moe_ffn_f32(x.data(), ids.data(), gates.data(), c.T, c.K, c.E, c.D, c.H, w13f.data(), w2f.data(),
                            o1.data());
    err = rel_err(o1, o0);
    report(rc0 == 0 && rc1 == 0 && err <= 1e-5, "%s moe_ffn_f32 T=%" PRId64 " K=%" PRId64 " E=%" PRId64
           ": rel err %.3g", mmoe::kIsaNames[isa], c.T, c.K, c.E, err);
  }
  // bad expert id: error, nothing written
  std::vector<float> x(64), o(64, 7.0f), g(1, 1.0f);
  std::vector<int64_t> bad(1, 3);
  Packed w13 = make_packed(2, 64, 64), w2 = make_packed(2, 64, 32);
  mmoe::set_isa(mmoe::kIsaNames[isa]);
  const int rc = mmoe::moe_ffn_8da4w(x.data(), bad.data(), g.data(), 1, 1, 2, 64, 32, w13.p.data(), w13.s.data(),
                                     w13.c.data(), w2.p.data(), w2.s.data(), w2.c.data(), o.data());
  report(rc == 1 && o[0] == 7.0f, "%s moe_ffn_8da4w rejects expert id 3 of E=2", mmoe::kIsaNames[isa]);
}

struct AttCase {
  int64_t T, H, KV, hd, S, window, p0;
};

void test_attend(int isa) {
  const AttCase cases[] = {{1, 4, 4, 64, 300, 0, 250},   {1, 6, 2, 64, 300, 0, 299},  {1, 6, 2, 64, 300, 16, 250},
                           {1, 4, 4, 48, 200, 16, 3},    {128, 4, 4, 64, 300, 0, 0},  {128, 6, 2, 64, 300, 16, 40},
                           {128, 6, 2, 32, 160, 0, 20},  {5, 12, 4, 64, 2048, 512, 1900}};
  for (const AttCase& c : cases) {
    const int64_t Sk = c.S + 5;
    std::vector<float> q(c.T * c.H * c.hd), kT(c.KV * c.hd * Sk, NAN), v(c.KV * c.S * c.hd, NAN);
    std::vector<int64_t> pos(c.T);
    for (int64_t t = 0; t < c.T; ++t) pos[t] = c.p0 + t;
    const int64_t last = pos[c.T - 1];
    for (auto& x : q) x = urand(-1, 1);
    for (int64_t g = 0; g < c.KV; ++g)
      for (int64_t d = 0; d < c.hd; ++d)
        for (int64_t s = 0; s <= last; ++s) kT[(g * c.hd + d) * Sk + s] = urand(-1, 1);
    for (int64_t g = 0; g < c.KV; ++g)
      for (int64_t s = 0; s <= last; ++s)
        for (int64_t d = 0; d < c.hd; ++d) v[(g * c.S + s) * c.hd + d] = urand(-1, 1);
    std::vector<float> o0(q.size()), o1(q.size());
    mmoe::set_isa("portable");
    const int rc0 = mmoe::attend_kv(q.data(), kT.data(), v.data(), pos.data(), c.T, c.H, c.KV, c.S, Sk, c.hd,
                                    c.window, o0.data());
    mmoe::set_isa(mmoe::kIsaNames[isa]);
    const int rc1 = mmoe::attend_kv(q.data(), kT.data(), v.data(), pos.data(), c.T, c.H, c.KV, c.S, Sk, c.hd,
                                    c.window, o1.data());
    const double err = rel_err(o1, o0);
    report(rc0 == 0 && rc1 == 0 && err <= 1e-5, "%s attend_kv T=%" PRId64 " H=%" PRId64 " KV=%" PRId64 " hd=%" PRId64
           " window=%" PRId64 " pos>=%" PRId64 ": rel err %.3g%s (unwritten slots NaN)", mmoe::kIsaNames[isa], c.T, c.H,
           c.KV, c.hd, c.window, c.p0, err, err == 0 ? " (bit-identical)" : "");
  }
}

// The vectorised SwiGLU of each path against silu in double: a few ulp (the exp polynomial,
// ~1 ulp, and the division), over the hidden values' range and its extremes; on AArch64 neon
// and portable run the same 4-wide body (bit-identical).
void test_swiglu(int isa) {
  const int64_t H = 256;
  std::vector<float> gate(H), up(H), h0(H), h1(H);
  const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 80.0f, -80.0f, 87.5f, -87.5f, 100.0f, -100.0f, 1e4f, -1e4f};
  for (int64_t j = 0; j < H; ++j) {
    gate[j] = j < 12 ? special[j] : urand(-12, 12);
    up[j] = urand(-2, 2);
  }
  mmoe::pick_swiglu(mmoe::kPortable)(gate.data(), up.data(), H, h0.data());
  mmoe::pick_swiglu(isa)(gate.data(), up.data(), H, h1.data());
  double worst = 0;  // |h - exact| / (|exact| + 1e-30), in float epsilons
  for (int64_t j = 0; j < H; ++j) {
    const double x = gate[j], exact = x / (1.0 + std::exp(-x)) * (double)up[j];
    worst = std::max(worst, std::fabs(h1[j] - exact) / (std::fabs(exact) * 1.1920929e-7 + 1e-30));
  }
  const double err = rel_err(h1, h0);
  report(worst <= 8 && err <= 1e-6, "%s swiglu: max %.2f ulp from exact, rel err %.3g vs portable%s",
         mmoe::kIsaNames[isa], worst, err, err == 0 ? " (bit-identical)" : "");
}

}  // namespace

int main(int argc, char** argv) {
  g_verbose = argc > 1 && std::strcmp(argv[1], "-v") == 0;
#if defined(__aarch64__)
  const char* arch = "aarch64";
#elif defined(__x86_64__)
  const char* arch = "x86_64";
#else
  const char* arch = "other";
#endif
#if defined(__ARM_FEATURE_DOTPROD)
  const char* dp = " +dotprod";
#else
  const char* dp = "";
#endif
  std::printf("kernel_selftest: %s%s, default path %s\n", arch, dp, mmoe::isa_name());
  const std::vector<int> isas = simd_isas();
  if (isas.empty()) {
    std::printf("kernel_selftest: no SIMD path on this CPU, nothing to compare\n");
    return 1;
  }
  for (int isa : isas) {
    test_quant(isa);
    test_dot_group(isa);
    test_microkernel(isa);
    test_swiglu(isa);
    test_moe(isa);
    test_attend(isa);
  }
  std::string names;
  for (int isa : isas) names += std::string(names.empty() ? "" : ", ") + mmoe::kIsaNames[isa];
  std::printf("kernel_selftest: %s: %d checks against portable, %d failed\n", names.c_str(), g_checks, g_fail);
  return g_fail ? 1 : 0;
}
