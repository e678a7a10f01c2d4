// Portable fixed-width vectors (GCC/Clang vector extensions) and the vectorised exp shared by
// attend.cpp (softmax) and moe_ffn.cpp (SwiGLU). W floats per value, matching the path's
// registers (16: AVX-512, 8: AVX2, 4: SSE / NEON); each body is compiled per path with
// target attributes, so the compiler keeps the values in registers.
#pragma once

#include <cstdint>
#include <cstring>

#define MMOE_INLINE static inline __attribute__((always_inline))

namespace mmoe {
namespace vec {

template <int W>
struct Vec {
  typedef float f __attribute__((vector_size(W * 4)));
  typedef int32_t i __attribute__((vector_size(W * 4)));
};

template <int W>
MMOE_INLINE typename Vec<W>::f load(const float* p) {
  typename Vec<W>::f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <int W>
MMOE_INLINE void store(float* p, typename Vec<W>::f v) {
  std::memcpy(p, &v, sizeof v);
}
template <int W>
MMOE_INLINE typename Vec<W>::f splat(float x) {
  return typename Vec<W>::f{} + x;
}

// exp(x) for x <= 0 (Cephes' expf polynomial; 2^n through the exponent bits). Below -87: ~0.
template <int W>
MMOE_INLINE typename Vec<W>::f exp_nonpos(typename Vec<W>::f x) {
  using F = typename Vec<W>::f;
  using I = typename Vec<W>::i;
  const F lo = splat<W>(-87.0f), magic = splat<W>(12582912.0f);  // 1.5 * 2^23: adding it rounds
  x = x < lo ? lo : x;
  const F t = x * 1.44269504088896341f + magic;
  const F n = t - magic;
  F r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F p = splat<W>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  I ti;
  std::memcpy(&ti, &t, sizeof t);
  const I bits = (ti - 0x4B400000 + 127) << 23;
  F two_n;
  std::memcpy(&two_n, &bits, sizeof bits);
  return p * two_n;
}

// silu(x) = x / (1 + exp(-x)), as x * e' / (1 + e) with e = exp(-|x|) <= 1 (no overflow) and
// e' = 1 for x >= 0, e for x < 0.
template <int W>
MMOE_INLINE typename Vec<W>::f silu(typename Vec<W>::f x) {
  using F = typename Vec<W>::f;
  const F zero = splat<W>(0.0f), one = splat<W>(1.0f);
  const F ax = x < zero ? -x : x;
  const F e = exp_nonpos<W>(-ax);
  const F num = x < zero ? e : one;
  return x * num / (one + e);
}

}  // namespace vec
}  // namespace mmoe
