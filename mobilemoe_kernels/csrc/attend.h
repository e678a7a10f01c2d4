// Attention over a static KV cache that reads only the slots a query may see.
// Numerics: see mobilemoe_kernels/reference.py (attend_kv_reference).
#pragma once
#include <cstdint>

namespace mmoe {

// q [T, H, hd], K cache transposed [KV, hd, Sk] (Sk >= S: the exported model pads its rows
// so that their stride is not a power of two), V cache [KV, S, hd] (both already holding
// this call's K/V; the layouts the exported model's caches use), pos [T] the
// query positions, window 0 = none. Query t, head h reads KV head h / (H / KV), slots
// [max(0, pos[t] - window + 1), pos[t]], with scores scaled by hd^-0.5.
// out [T, H, hd]. Returns 0 on success; 1 if a position is outside [0, S) or the head
// counts do not divide (nothing written), with a message in last_error().
int attend_kv(const float* q, const float* k_t, const float* v, const int64_t* pos, int64_t T,
              int64_t H, int64_t KV, int64_t S, int64_t Sk, int64_t hd, int64_t window, float* out);

}  // namespace mmoe
