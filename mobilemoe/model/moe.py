"""Mixture-of-Experts feed-forward: routers, routed experts, shared experts.

Two routers (``model.moe.router``):

* ``sigmoid`` (MobileMoE, after DeepSeek-V3): s = sigmoid(x W_r^T); the top-k is picked
  on s + b where b is a per-expert ``expert_bias`` buffer that only affects *which*
  experts are picked; the weights are the picked s, renormalised and scaled by
  ``route_scale``. After each optimizer step b_e += u * sign(mean_load - load_e)
  (auxiliary-loss-free balancing; docs/paper.md#routing). Computed in fp32.
* ``softmax`` (OLMoE): p = softmax(x W_r^T); top-k on p; load-balancing loss
  E * sum_e f_e P_e and router z-loss mean(logsumexp(logits)^2) with their weights.

One routing function, :func:`route`, computes the choice and the gates from the router
logits; ``Router`` (training and evaluation) and the exported program
(``mobilemoe.export.modules.ExportMoE``, which calls ``Router`` itself) both use it.

The routed experts (``RoutedExperts.w13 [E, 2H, D]``, ``w2 [E, D, H]``) compute, per token
t and chosen expert k: h = silu(x W_g^T) * (x W_u^T), y_k = h W_2^T, out = sum_k g_k y_k
(the gate multiplies the expert's *output*, as the deployed kernel ``mmoe::moe_ffn_*``
does, so that quantization-aware training sees the activations the kernel quantizes).
Training path (``RoutedExperts.forward``): tokens sorted by expert, one ``unbind`` of the
stacked weights, one matmul pair per expert on just its tokens. Indexing the stacked
parameter per expert makes autograd build a full (E, ...) gradient per expert;
``unbind`` once avoids it.

Shape suffixes follow torchtitan: T tokens, D model dim, E experts, K top-k, H hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config.model import MoEConfig


@dataclass
class Routing:
    topk_idx_TK: torch.Tensor  # int64 expert ids
    topk_weight_TK: torch.Tensor  # fp32 combine weights (after renormalise and scale)
    logits_TE: torch.Tensor  # fp32 router logits


def route(
    logits_TE: torch.Tensor, expert_bias: Optional[torch.Tensor], cfg: MoEConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(topk_idx_TK, topk_weight_TK, scores_TE)`` from fp32 router logits.

    sigmoid: scores = sigmoid(logits), chosen by top-k of scores + ``expert_bias`` (the bias
    only picks); softmax: scores = softmax(logits), chosen by top-k of scores. The gates
    are the chosen scores, renormalised to sum 1 if ``cfg.renormalize``, times
    ``cfg.route_scale``. Only operators ExecuTorch runs (topk, gather, sum, div).
    """
    if cfg.router == "sigmoid":
        scores_TE = torch.sigmoid(logits_TE)
        pick_TE = scores_TE if expert_bias is None else scores_TE + expert_bias
    else:
        scores_TE = torch.softmax(logits_TE, dim=-1)
        pick_TE = scores_TE
    _, topk_idx_TK = torch.topk(pick_TE, cfg.top_k, dim=-1)
    topk_weight_TK = scores_TE.gather(-1, topk_idx_TK)
    if cfg.renormalize:
        topk_weight_TK = topk_weight_TK / (topk_weight_TK.sum(-1, keepdim=True) + 1e-20)
    return topk_idx_TK, topk_weight_TK * cfg.route_scale, scores_TE


class Router(nn.Module):
    expert_bias: torch.Tensor  # buffers, typed for the checker (nn.Module.__getattr__ is not)
    load_accum: torch.Tensor

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.n_experts = cfg.n_routed_experts
        # Kept in fp32 whatever the model dtype (docs/paper.md#routing: router fp32).
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, d_model, dtype=torch.float32))
        # Only used to pick experts; updated outside autograd (see update_bias).
        self.register_buffer("expert_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))
        # Tokens routed to each expert since the last bias update (not saved).
        self.register_buffer(
            "load_accum", torch.zeros(cfg.n_routed_experts, dtype=torch.float32), persistent=False
        )
        self.aux_loss: Optional[torch.Tensor] = None
        self.last_load: Optional[torch.Tensor] = None

    def forward(self, x_TD: torch.Tensor) -> Routing:
        cfg = self.cfg
        # F.linear (not a matmul on a transposed view) so XNNPACK can take it when exported.
        # Routing decisions stay in fp32 under bf16 autocast (near-ties would flip in bf16).
        if torch.is_autocast_enabled(x_TD.device.type):
            with torch.autocast(x_TD.device.type, enabled=False):
                logits_TE = F.linear(x_TD.float(), self.weight.float())
        else:
            logits_TE = F.linear(x_TD.float(), self.weight.float())
        bias = self.expert_bias if cfg.router == "sigmoid" else None
        topk_idx_TK, topk_weight_TK, scores_TE = route(logits_TE, bias, cfg)

        if self.training and not torch.compiler.is_compiling():
            self._record_load(topk_idx_TK, logits_TE, scores_TE)
        return Routing(topk_idx_TK, topk_weight_TK, logits_TE)

    def _record_load(self, topk_idx_TK, logits_TE, scores_TE) -> None:
        with torch.no_grad():
            load_E = torch.bincount(topk_idx_TK.reshape(-1), minlength=self.n_experts).float()
            self.load_accum += load_E
            self.last_load = load_E
        cfg = self.cfg
        aux = None
        if cfg.aux_loss_weight > 0:
            # f_e: fraction of routed slots to e, global across data-parallel ranks.
            with torch.no_grad():
                global_load = load_E.clone()
                if dist.is_available() and dist.is_initialized():
                    dist.all_reduce(global_load)
                f_E = global_load / global_load.sum().clamp(min=1)
            p_E = scores_TE.mean(0)
            aux = cfg.aux_loss_weight * self.n_experts * (f_E * p_E).sum()
        if cfg.z_loss_weight > 0:
            z = cfg.z_loss_weight * torch.logsumexp(logits_TE, dim=-1).square().mean()
            aux = z if aux is None else aux + z
        self.aux_loss = aux

    @torch.no_grad()
    def update_bias(self) -> torch.Tensor:
        """One balancing step on the load seen since the last call; returns that load.

        The load is summed over data-parallel ranks first, so every rank applies the
        same update and the biases stay identical without being broadcast.
        """
        load_E = self.load_accum.clone()
        self.load_accum.zero_()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load_E)
        if self.cfg.router == "sigmoid" and self.cfg.bias_update_rate > 0 and load_E.sum() > 0:
            self.expert_bias += self.cfg.bias_update_rate * torch.sign(load_E.mean() - load_E)
        return load_E


class RoutedExperts(nn.Module):
    """Stacked SwiGLU experts; ``forward`` is the training path (routed tokens only)."""

    def __init__(self, d_model: int, n_experts: int, hidden: int):
        super().__init__()
        self.n_experts, self.hidden = n_experts, hidden
        self.w13 = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model))  # gate ; up
        self.w2 = nn.Parameter(torch.empty(n_experts, d_model, hidden))  # down
        # Optional fake quantization (QAT): ``.weight(w)`` on w13 / w2 and ``.act(x)`` on
        # each expert input row (mobilemoe.quant.experts.ExpertFakeQuant).
        self.fake_quant: Optional[Any] = None

    def forward(self, x_TD: torch.Tensor, routing: Routing) -> torch.Tensor:
        T, D = x_TD.shape
        idx_TK, w_TK = routing.topk_idx_TK, routing.topk_weight_TK
        K = idx_TK.shape[1]
        flat_S = idx_TK.reshape(-1)  # S = T*K routed slots
        order_S = torch.argsort(flat_S, stable=True)
        counts = torch.bincount(flat_S, minlength=self.n_experts).tolist()
        token_S = order_S // K
        x_SD = x_TD[token_S]
        gate_S1 = w_TK.reshape(-1)[order_S].unsqueeze(1)

        fq = self.fake_quant
        w13, w2 = (self.w13, self.w2) if fq is None else (fq.weight(self.w13), fq.weight(self.w2))
        if fq is not None:
            x_SD = fq.act(x_SD)  # per row: every routed copy of a token quantizes alike
        w13_e, w2_e = w13.unbind(0), w2.unbind(0)
        hidden = []
        for e, x_nD in enumerate(x_SD.split(counts)):
            if counts[e] == 0:
                continue
            g_nH, u_nH = F.linear(x_nD, w13_e[e]).chunk(2, dim=-1)
            hidden.append(F.silu(g_nH) * u_nH)
        h_SH = torch.cat(hidden)
        if fq is not None:
            h_SH = fq.act(h_SH)  # per (token, expert) row, before the gate (as the kernel)
        # split (one autograd node), never per-expert slicing: each slice's backward would
        # allocate a zero gradient of the whole (S, H) tensor.
        out = [F.linear(h_nH, w2_e[e]) for e, h_nH in enumerate(h_SH.split(counts)) if counts[e]]
        y_SD = torch.cat(out) * gate_S1.to(h_SH.dtype)
        # Under autocast the expert outputs are bf16 while the residual stream is fp32.
        return torch.zeros_like(x_TD).index_add_(0, token_S, y_SD.to(x_TD.dtype))


class SwiGLU(nn.Module):
    """Dense SwiGLU FFN (dense layers and the shared experts, concatenated)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


class MoEFeedForward(nn.Module):
    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.router = Router(d_model, cfg)
        self.experts: nn.Module = RoutedExperts(d_model, cfg.n_routed_experts, cfg.expert_hidden)
        n_shared = cfg.n_shared_experts * cfg.shared_hidden
        # n shared experts of width h are one SwiGLU of width n*h (same params, same math).
        self.shared = SwiGLU(d_model, n_shared) if n_shared else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x_TD = x.reshape(-1, shape[-1])
        routing = self.router(x_TD)
        y_TD = self.experts(x_TD, routing)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)
        return y_TD.view(shape)
