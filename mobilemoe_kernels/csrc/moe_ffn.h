// MoE SwiGLU feed-forward over the top-k chosen experts (mobilemoe_kernels).
// Layout and numerics: see mobilemoe_kernels/pack.py and reference.py.
#pragma once
#include <cstdint>

namespace mmoe {

// Returns 0 on success; 1 if an expert id is out of range (nothing written), with a
// message in last_error().
int moe_ffn_8da4w(const float* x, const int64_t* ids, const float* gates, int64_t T,
                  int64_t K, int64_t E, int64_t D, int64_t H, const uint8_t* w13p,
                  const uint16_t* w13s, const float* w13c, const uint8_t* w2p,
                  const uint16_t* w2s, const float* w2c, float* out);

int moe_ffn_f32(const float* x, const int64_t* ids, const float* gates, int64_t T,
                int64_t K, int64_t E, int64_t D, int64_t H, const float* w13,
                const float* w2, float* out);

const char* last_error();
void set_last_error(const char* msg);  // for the other kernels of the library
const char* isa_name();
int set_isa(const char* name);  // 0 ok, -1 unknown or unsupported

}  // namespace mmoe
