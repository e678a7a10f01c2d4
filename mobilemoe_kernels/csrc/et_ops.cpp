// ExecuTorch registration of mmoe::moe_ffn_8da4w.out, mmoe::moe_ffn_f32.out and mmoe::attend_kv.out.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include "attend.h"
#include "moe_ffn.h"

namespace mmoe {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

bool common_ok(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& ids, const Tensor& gates, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && x.dim() == 2, InvalidArgument, false,
                      "mmoe: x must be float32 [T, D]");
  ET_KERNEL_CHECK_MSG(ctx, ids.scalar_type() == ScalarType::Long && ids.dim() == 2 && ids.size(0) == x.size(0),
                      InvalidArgument, false, "mmoe: expert_ids must be int64 [T, K]");
  ET_KERNEL_CHECK_MSG(ctx,
                      gates.scalar_type() == ScalarType::Float && gates.dim() == 2 &&
                          gates.size(0) == ids.size(0) && gates.size(1) == ids.size(1),
                      InvalidArgument, false, "mmoe: gates must be float32 [T, K]");
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float && out.dim() == 2, InvalidArgument, false,
                      "mmoe: out must be float32 [T, D]");
  SizesType sz[2] = {(SizesType)x.size(0), (SizesType)x.size(1)};
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, {sz, 2}) == Error::Ok, InvalidArgument, false,
                      "mmoe: cannot resize out to [T, D]");
  return true;
}

int64_t first_bad_id(const Tensor& ids, int64_t E) {
  const int64_t* p = ids.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < (int64_t)ids.numel(); ++i)
    if (p[i] < 0 || p[i] >= E) return p[i];
  return 0;
}

// K in [1, E] and every expert id in [0, E): the kernels index weights by these ids.
bool routing_ok(KernelRuntimeContext& ctx, const Tensor& ids, int64_t E, const char* op) {
  const int64_t K = ids.size(1);
  ET_KERNEL_CHECK_MSG(ctx, K >= 1 && K <= E, InvalidArgument, false, "%s: K=%lld must be in [1, E=%lld]", op,
                      (long long)K, (long long)E);
  const int64_t bad = first_bad_id(ids, E);
  ET_KERNEL_CHECK_MSG(ctx, bad >= 0 && bad < E, InvalidArgument, false, "%s: expert id %lld out of range [0, %lld)",
                      op, (long long)bad, (long long)E);
  return true;
}

Tensor& moe_ffn_8da4w_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& ids, const Tensor& gates,
                          const Tensor& w13p, const Tensor& w13s, const Tensor& w13c, const Tensor& w2p,
                          const Tensor& w2s, const Tensor& w2c, Tensor& out) {
  if (!common_ok(ctx, x, ids, gates, out)) return out;
  ET_KERNEL_CHECK_MSG(ctx, w13p.scalar_type() == ScalarType::Byte && w13p.dim() == 4 && w13p.size(3) == 256,
                      InvalidArgument, out, "mmoe: w13_packed must be uint8 [E, 2H/16, D/32, 256]");
  const int64_t E = w13p.size(0), H = w13p.size(1) * 16 / 2, D = w13p.size(2) * 32, K = ids.size(1);
  ET_KERNEL_CHECK_MSG(ctx, D == x.size(1) && H % 32 == 0 && E >= 1, InvalidArgument, out,
                      "mmoe: w13_packed shape does not fit x (D=%lld) or H=%lld not a multiple of 32",
                      (long long)x.size(1), (long long)H);
  ET_KERNEL_CHECK_MSG(ctx,
                      w13s.scalar_type() == ScalarType::Half && w13s.dim() == 4 && w13s.size(0) == E &&
                          w13s.size(1) == 2 * H / 16 && w13s.size(2) == D / 32 && w13s.size(3) == 16,
                      InvalidArgument, out, "mmoe: w13_scales must be float16 [E, 2H/16, D/32, 16]");
  ET_KERNEL_CHECK_MSG(ctx,
                      w13c.scalar_type() == ScalarType::Float && w13c.dim() == 2 && w13c.size(0) == E &&
                          w13c.size(1) == 2 * H,
                      InvalidArgument, out, "mmoe: w13_corr must be float32 [E, 2H]");
  ET_KERNEL_CHECK_MSG(ctx,
                      w2p.scalar_type() == ScalarType::Byte && w2p.dim() == 4 && w2p.size(0) == E &&
                          w2p.size(1) == D / 16 && w2p.size(2) == H / 32 && w2p.size(3) == 256,
                      InvalidArgument, out, "mmoe: w2_packed must be uint8 [E, D/16, H/32, 256]");
  ET_KERNEL_CHECK_MSG(ctx,
                      w2s.scalar_type() == ScalarType::Half && w2s.dim() == 4 && w2s.size(0) == E &&
                          w2s.size(1) == D / 16 && w2s.size(2) == H / 32 && w2s.size(3) == 16,
                      InvalidArgument, out, "mmoe: w2_scales must be float16 [E, D/16, H/32, 16]");
  ET_KERNEL_CHECK_MSG(ctx,
                      w2c.scalar_type() == ScalarType::Float && w2c.dim() == 2 && w2c.size(0) == E &&
                          w2c.size(1) == D,
                      InvalidArgument, out, "mmoe: w2_corr must be float32 [E, D]");
  if (!routing_ok(ctx, ids, E, "mmoe::moe_ffn_8da4w")) return out;
  int rc = moe_ffn_8da4w(x.const_data_ptr<float>(), ids.const_data_ptr<int64_t>(), gates.const_data_ptr<float>(),
                         x.size(0), K, E, D, H, w13p.const_data_ptr<uint8_t>(),
                         static_cast<const uint16_t*>(w13s.const_data_ptr()), w13c.const_data_ptr<float>(),
                         w2p.const_data_ptr<uint8_t>(), static_cast<const uint16_t*>(w2s.const_data_ptr()),
                         w2c.const_data_ptr<float>(), out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, rc == 0, InvalidArgument, out, "%s", last_error());
  return out;
}

Tensor& moe_ffn_f32_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& ids, const Tensor& gates,
                        const Tensor& w13, const Tensor& w2, Tensor& out) {
  if (!common_ok(ctx, x, ids, gates, out)) return out;
  ET_KERNEL_CHECK_MSG(ctx, w13.scalar_type() == ScalarType::Float && w13.dim() == 3 && w13.size(2) == x.size(1) &&
                               w13.size(1) % 2 == 0,
                      InvalidArgument, out, "mmoe: w13 must be float32 [E, 2H, D]");
  const int64_t E = w13.size(0), H = w13.size(1) / 2, D = w13.size(2), K = ids.size(1);
  ET_KERNEL_CHECK_MSG(ctx,
                      w2.scalar_type() == ScalarType::Float && w2.dim() == 3 && w2.size(0) == E &&
                          w2.size(1) == D && w2.size(2) == H,
                      InvalidArgument, out, "mmoe: w2 must be float32 [E, D, H]");
  if (!routing_ok(ctx, ids, E, "mmoe::moe_ffn_f32")) return out;
  int rc = moe_ffn_f32(x.const_data_ptr<float>(), ids.const_data_ptr<int64_t>(), gates.const_data_ptr<float>(),
                       x.size(0), K, E, D, H, w13.const_data_ptr<float>(), w2.const_data_ptr<float>(),
                       out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, rc == 0, InvalidArgument, out, "%s", last_error());
  return out;
}

Tensor& attend_kv_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                      const Tensor& pos, int64_t window, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, q.scalar_type() == ScalarType::Float && q.dim() == 3, InvalidArgument, out,
                      "mmoe::attend_kv: q must be float32 [T, H, hd]");
  const int64_t T = q.size(0), H = q.size(1), hd = q.size(2);
  ET_KERNEL_CHECK_MSG(ctx, k.scalar_type() == ScalarType::Float && k.dim() == 3 && k.size(1) == hd, InvalidArgument,
                      out, "mmoe::attend_kv: k_cache_t must be float32 [KV, hd, Sk]");
  const int64_t KV = k.size(0), Sk = k.size(2);
  ET_KERNEL_CHECK_MSG(ctx,
                      v.scalar_type() == ScalarType::Float && v.dim() == 3 && v.size(0) == KV && v.size(1) <= Sk &&
                          v.size(2) == hd,
                      InvalidArgument, out, "mmoe::attend_kv: v_cache must be float32 [KV, S, hd] with S <= Sk");
  const int64_t S = v.size(1);
  ET_KERNEL_CHECK_MSG(ctx, pos.scalar_type() == ScalarType::Long && pos.dim() == 1 && pos.size(0) == T,
                      InvalidArgument, out, "mmoe::attend_kv: input_pos must be int64 [T]");
  ET_KERNEL_CHECK_MSG(ctx, window >= 0, InvalidArgument, out, "mmoe::attend_kv: window must be >= 0");
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float && out.dim() == 3, InvalidArgument, out,
                      "mmoe::attend_kv: out must be float32 [T, H, hd]");
  SizesType sz[3] = {(SizesType)T, (SizesType)H, (SizesType)hd};
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, {sz, 3}) == Error::Ok, InvalidArgument, out,
                      "mmoe::attend_kv: cannot resize out to [T, H, hd]");
  int rc = attend_kv(q.const_data_ptr<float>(), k.const_data_ptr<float>(), v.const_data_ptr<float>(),
                     pos.const_data_ptr<int64_t>(), T, H, KV, S, Sk, hd, window,
                     out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, rc == 0, InvalidArgument, out, "%s", last_error());
  return out;
}

}  // namespace
}  // namespace mmoe

EXECUTORCH_LIBRARY(mmoe, "moe_ffn_8da4w.out", mmoe::moe_ffn_8da4w_out);
EXECUTORCH_LIBRARY(mmoe, "moe_ffn_f32.out", mmoe::moe_ffn_f32_out);
EXECUTORCH_LIBRARY(mmoe, "attend_kv.out", mmoe::attend_kv_out);
