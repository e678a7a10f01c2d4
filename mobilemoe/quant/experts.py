"""Fake quantization of the routed experts' stacked weights, as the deployed program sees them.

Training runs the experts on the routed path (``RoutedExperts.forward``: token sort, one
matmul pair per expert over the stacked ``w13 [E, 2H, D]`` and ``w2 [E, D, H]``). The
exported program runs the fixed-shape path (``StaticExperts``): two ``nn.Linear``,
``gate_up [E*2H, D]`` and ``down [D, E*H]``, quantized "8da4w" by torchao. For QAT to
train what is deployed, the routed path must see exactly the numbers the static path
computes:

* weights: INT4 symmetric groups of ``group_size`` along each static linear's input
  dim: ``gate_up`` groups run along D (the same as ``w13``'s last dim); ``down``'s groups
  run along its E*H input, so ``w2`` is laid out as ``[D, E*H]`` before grouping (when
  H % group_size == 0 every group lies inside one expert, otherwise groups span two
  experts, and this layout still matches the deployed one);
* activations: INT8 asymmetric per token. ``gate_up`` reads the token's row x_D; every
  routed copy of that row gets the same quantization. ``down`` reads the token's whole
  ``E*H`` hidden row, zeros for the unselected experts. Asymmetric qparams always
  include 0 in the range (torchao and XNNPACK alike), so the range of that row is the
  range of the token's K selected expert rows plus 0: quantizing the K rows laid side by
  side, ``[T, K*H]``, gives the same scale and zero point.

Both use torchao's own ``IntxFakeQuantizer`` (the module ``FakeQuantizedLinear`` uses),
so scale, zero point, rounding and straight-through gradients are torchao's.
``RoutedExperts`` calls these through its ``weight_fake_quant`` / ``act_fake_quant``
hooks; :func:`mobilemoe.quant.prepare_qat` installs them.
"""

from __future__ import annotations

import torch
from torch import nn


def _int4_weight_config(group_size: int):
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    # Symmetric INT4 in [-8, 7], one scale per group (PAPER.md, "QAT format").
    return IntxFakeQuantizeConfig(torch.int4, granularity=PerGroup(group_size), is_symmetric=True)


def _int8_token_config():
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    # What torchao infers from Int8DynamicActivationIntxWeightConfig for activations.
    return IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)


class ExpertWeightFakeQuantizer(nn.Module):
    """``fq(w13)`` / ``fq(w2)``: the stacked weight, fake-quantized in the static layout.

    Which of the two a tensor is follows from its shape: ``w13`` is [E, 2H, D] and ``w2``
    is [E, D, H] (equal shapes would need H = 0).
    """

    def __init__(self, n_experts: int, hidden: int, d_model: int, group_size: int):
        super().__init__()
        from torchao.quantization.qat import IntxFakeQuantizer

        self.n_experts, self.hidden, self.d_model = n_experts, hidden, d_model
        self.group_size = group_size
        # Two quantizers: torchao keeps the last scale on the module (handy to inspect).
        self.gate_up = IntxFakeQuantizer(_int4_weight_config(group_size))
        self.down = IntxFakeQuantizer(_int4_weight_config(group_size))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        E, H, D = self.n_experts, self.hidden, self.d_model
        if tuple(w.shape) == (E, 2 * H, D):  # gate_up rows: expert-major, groups along D
            return self.gate_up(w.reshape(E * 2 * H, D)).view(E, 2 * H, D)
        if tuple(w.shape) == (E, D, H):  # down: [D, E*H], groups along E*H
            w_DEH = w.permute(1, 0, 2).reshape(D, E * H)
            return self.down(w_DEH).view(D, E, H).permute(1, 0, 2)
        raise ValueError(f"expert weight of shape {tuple(w.shape)} is neither w13 {(E, 2 * H, D)} "
                         f"nor w2 {(E, D, H)}")

    def extra_repr(self) -> str:
        return f"experts={self.n_experts}, hidden={self.hidden}, int4 group={self.group_size}"


class ExpertActivationFakeQuantizer(nn.Module):
    """INT8 dynamic per-token activations of the expert linears, as the static path has them.

    ``fq(x_SD)``: rows are routed copies of token rows, quantized row by row (= per token).
    ``fq.per_token_group(h_SH, token_S, T)``: the gated hidden rows, quantized with one
    scale per *token* over all its K expert rows (the static ``down`` input row).
    """

    def __init__(self):
        super().__init__()
        from torchao.quantization.qat import IntxFakeQuantizer

        self.gate_up = IntxFakeQuantizer(_int8_token_config())
        self.down = IntxFakeQuantizer(_int8_token_config())

    def forward(self, x_SD: torch.Tensor) -> torch.Tensor:
        return self.gate_up(x_SD)

    def per_token_group(self, h_SH: torch.Tensor, token_S: torch.Tensor, T: int) -> torch.Tensor:
        S, H = h_SH.shape
        if S == 0:
            return h_SH
        if S % T:
            raise ValueError(f"{S} routed rows do not split evenly over {T} tokens")
        K = S // T
        # Group each token's K rows side by side: [T, K*H] has the range of the static
        # row [T, E*H] (zeros of unselected experts add nothing: 0 is always in range).
        by_token_S = torch.argsort(token_S, stable=True)
        h_TKH = h_SH.index_select(0, by_token_S).reshape(T, K * H)
        fq_SH = self.down(h_TKH).reshape(S, H)
        return torch.empty_like(fq_SH).index_copy(0, by_token_S, fq_SH)
