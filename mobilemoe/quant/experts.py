"""The routed experts in the deployment format: fake quantization for QAT, and the converted form.

The exported program runs the routed experts with mobilemoe's top-k kernel
(``mmoe::moe_ffn_8da4w``, package ``mobilemoe_kernels``, docs/kernels.md). Its numbers:

* weights: symmetric INT4 in [-8, 7], one float16 scale per group of 32 along each
  expert matrix's input dim (``w13 [E, 2H, D]``: groups along D; ``w2 [E, D, H]``: along H);
* activations: INT8 asymmetric, dynamic, one scale and zero point per row: the token's
  row x_D at the gate/up projection, and each (token, chosen expert) hidden row h_H at the
  down projection; the gate multiplies the expert's output afterwards.

``ExpertFakeQuant`` is that arithmetic in float with straight-through gradients, installed
on ``RoutedExperts.fake_quant`` by :func:`mobilemoe.quant.prepare_qat`, so training sees what
ships; ``QuantizedExperts`` holds the packed weights :func:`mobilemoe.quant.convert_qat`
makes and calls the kernel's torch op (in eager runs its CPU implementation, the pure-torch
reference). Training-time fake quantization and the converted model are the same
computation up to float summation order (tests/quant/test_quant_qat.py holds this).
"""

from __future__ import annotations

import torch
from torch import nn

KERNEL_GROUP = 32  # the kernel's INT4 group (mobilemoe_kernels.pack.GROUP; docs/paper.md: g32)


class ExpertFakeQuant(nn.Module):
    """``.weight(w)``: INT4 g32 quant-dequant of a stacked expert weight [E, N, Kin];
    ``.act(x)``: INT8 per-row quant-dequant of expert input rows. Both straight-through."""

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        from mobilemoe_kernels.reference import fake_quant_weight_int4_g32

        return fake_quant_weight_int4_g32(w)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        from mobilemoe_kernels.reference import fake_quant_act_int8_per_row

        return fake_quant_act_int8_per_row(x)

    def extra_repr(self) -> str:
        return f"weights int4 group {KERNEL_GROUP} fp16 scales, activations int8 per row"


def kernel_shape_problem(d_model: int, hidden: int) -> str | None:
    """Why the INT4 kernel cannot hold experts of these widths, or None."""
    if d_model % KERNEL_GROUP or hidden % KERNEL_GROUP:
        return (
            f"d_model {d_model} and expert hidden {hidden} must be multiples of "
            f"{KERNEL_GROUP} (the MoE kernel's INT4 group)"
        )
    return None


class QuantizedExperts(nn.Module):
    """The routed experts as the kernel's packed INT4 buffers (``mobilemoe_kernels.pack``).

    ``forward(x_TD, routing)`` = ``torch.ops.mmoe.moe_ffn_8da4w``: the converted eager
    model and the exported program run the same operator on the same buffers.
    """

    BUFFERS = ("w13_packed", "w13_scales", "w13_corr", "w2_packed", "w2_scales", "w2_corr")

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor):
        super().__init__()
        import mobilemoe_kernels.ops  # noqa: F401  (registers the torch ops)
        from mobilemoe_kernels.pack import pack_experts, quantize_int4_g32

        E, H2, D = w13.shape
        self.n_experts, self.hidden, self.d_model = E, H2 // 2, D
        q13, s13 = quantize_int4_g32(w13.detach().float().cpu())
        q2, s2 = quantize_int4_g32(w2.detach().float().cpu())
        for name, t in pack_experts(q13, s13, q2, s2).items():
            self.register_buffer(name, t.to(w13.device))

    def packed(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, n) for n in self.BUFFERS)

    def forward(self, x_TD: torch.Tensor, routing) -> torch.Tensor:
        y = torch.ops.mmoe.moe_ffn_8da4w(
            x_TD.float(), routing.topk_idx_TK, routing.topk_weight_TK.float(), *self.packed()
        )
        return y.to(x_TD.dtype)

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.packed())

    def extra_repr(self) -> str:
        return f"experts={self.n_experts}, d_model={self.d_model}, hidden={self.hidden}, int4 g32"
