"""LLaDA2's Mixture-of-Experts MLP: the published router and the experts as one grouped GEMM.

Router (`LLaDA2MoeGate` of the published modeling code), in float32 whatever the weights' dtype:
    logits = x W_gate^T;  s = sigmoid(logits)
    groups: the experts split into `n_group` equal groups; a group's score is the sum of its two
        best (s + expert_bias); the `topk_group` best groups stay, the others' experts are out
    chosen = top-`num_experts_per_tok` of (s + expert_bias) over the remaining experts
    weights = s[chosen] / (sum + 1e-20) when more than one expert is chosen, times
        `routed_scaling_factor` (the bias steers the choice, never the weights)
    y = sum_k weights_k * expert_k(x)  (+ shared_experts(x): one MLP of
        moe_intermediate_size * num_shared_experts)

Experts (`experts.{e}.{gate,up,down}_proj.weight` as published) are also held stacked,
[E, 2I, H] (gate and up) and [E, H, I] (down). A batch's (token, expert) pairs are sorted by
expert and each GEMM runs over all experts at once with `torch._grouped_mm` (per-expert offsets
into the sorted rows; CUTLASS grouped GEMM on Hopper, a reference kernel on the CPU), so the
work is three kernels and no host synchronisation, however the tokens spread. Where the device
lacks a grouped GEMM for the dtype, the same sorted rows run as one batched GEMM over experts
padded to the largest group (`padded_expert_mlp`).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from dserve_llada2.config import LLaDA2Config


class LLaDA2MLP(nn.Module):
    """A SwiGLU MLP with the published names (dense layers, each expert, the shared experts)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDA2Gate(nn.Module):
    """`mlp.gate`: the routing weight and the (persistent) `expert_bias` buffer."""

    expert_bias: torch.Tensor

    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        assert cfg.num_experts is not None
        self.top_k, self.n_group, self.topk_group = cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
        self.scaling = cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, H] -> (expert ids [N, k] long, weights [N, k] float32)."""
        logits = F.linear(x.float(), self.weight.float())
        scores = torch.sigmoid(logits)
        biased = scores + self.expert_bias.float()
        n = biased.shape[0]
        groups = biased.view(n, self.n_group, -1)
        group_scores = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(self.topk_group, dim=-1, sorted=False).indices, True)
        masked = biased.masked_fill(~keep[:, :, None].expand_as(groups).reshape(n, -1), float("-inf"))
        ids = masked.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return ids, weights * self.scaling


def sort_by_expert(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [N, k] -> (order [N*k]: the flat (token, slot) pairs sorted by expert, stable;
    offsets [E] int32: the end of each expert's rows in that order)."""
    flat = ids.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    # index_add, not bincount: bincount sizes its output from the data (a host sync, which
    # would also break CUDA-graph capture)
    counts = torch.zeros(num_experts, dtype=torch.long, device=ids.device).index_add_(0, flat, torch.ones_like(flat))
    return order, torch.cumsum(counts, 0).to(torch.int32)


def grouped_expert_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows x [M, H] sorted by expert, offsets [E] (ends): each row through its expert's SwiGLU.
    gate_up [E, 2I, H], down [E, H, I] (the nn.Linear layout, stacked)."""
    h = torch._grouped_mm(x, gate_up.transpose(1, 2), offs=offsets)
    g, u = h.chunk(2, dim=-1)
    return torch._grouped_mm((F.silu(g) * u).contiguous(), down.transpose(1, 2), offs=offsets)


def padded_expert_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`grouped_expert_mlp` as one batched GEMM per projection over experts padded to the
    largest group (one host synchronisation for that size): for dtypes or devices without a
    grouped GEMM kernel."""
    E = gate_up.shape[0]
    starts = torch.cat([offsets.new_zeros(1), offsets[:-1]]).long()
    counts = offsets.long() - starts
    cap = int(counts.max()) if x.shape[0] else 0
    expert = torch.repeat_interleave(torch.arange(E, device=x.device), counts, output_size=x.shape[0])
    slot = torch.arange(x.shape[0], device=x.device) - starts[expert]
    buf = x.new_zeros(E, max(cap, 1), x.shape[-1])
    buf[expert, slot] = x
    g, u = torch.bmm(buf, gate_up.transpose(1, 2)).chunk(2, dim=-1)
    out = torch.bmm(F.silu(g) * u, down.transpose(1, 2))
    return out[expert, slot]


def grouped_mm_works(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether torch._grouped_mm runs for this dtype on this device (probed once per model)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a = torch.zeros(8, 16, dtype=dtype, device=device)
        w = torch.zeros(2, 16, 16, dtype=dtype, device=device)
        torch._grouped_mm(a, w, offs=torch.tensor([4, 8], dtype=torch.int32, device=device))
        return True
    except (RuntimeError, NotImplementedError):
        return False


class LLaDA2SparseMoE(nn.Module):
    """`mlp` of a MoE layer: `gate`, `experts.{e}`, optional `shared_experts`."""

    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        assert cfg.num_experts is not None
        self.num_experts = cfg.num_experts
        self.gate = LLaDA2Gate(cfg)
        self.experts = nn.ModuleList(LLaDA2MLP(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.num_experts))
        if cfg.num_shared_experts:
            self.shared_experts = LLaDA2MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.num_shared_experts)
        self.has_shared = bool(cfg.num_shared_experts)
        # stacked expert weights, set by stack_experts() (not in state_dict: the published
        # per-expert tensors stay the parameters)
        self.gate_up: torch.Tensor | None = None
        self.down: torch.Tensor | None = None
        self.grouped: bool | None = None  # torch._grouped_mm usable here (None: not probed yet)

    def stack_experts(self) -> None:
        """Stack the experts' weights for the grouped GEMMs (after the weights are on their
        device; the per-expert parameters are freed to views of the stack, so memory does not double)."""
        experts = self.expert_list()
        gate_up, down = self.stacked()
        inter = gate_up.shape[1] // 2
        with torch.no_grad():
            for i, e in enumerate(experts):
                e.gate_proj.weight = nn.Parameter(gate_up[i, :inter], requires_grad=False)
                e.up_proj.weight = nn.Parameter(gate_up[i, inter:], requires_grad=False)
                e.down_proj.weight = nn.Parameter(down[i], requires_grad=False)
        self.gate_up, self.down = gate_up, down
        self.grouped = grouped_mm_works(gate_up.dtype, gate_up.device)

    def expert_list(self) -> list[LLaDA2MLP]:
        return [cast(LLaDA2MLP, e) for e in self.experts]  # ModuleList yields nn.Module; all are LLaDA2MLPs

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The experts' weights stacked: gate and up [E, 2I, H], down [E, H, I]."""
        experts = self.expert_list()
        gate_up = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in experts])
        return gate_up, torch.stack([e.down_proj.weight for e in experts])

    def routed(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The routed experts' weighted sum for tokens x [N, H] (sort-by-expert, grouped GEMM)."""
        gate_up, down = self.gate_up, self.down
        if gate_up is None or down is None:  # training: stacked per call, so gradients reach the experts
            gate_up, down = self.stacked()
        k = ids.shape[1]
        order, offsets = sort_by_expert(ids, self.num_experts)
        rows = x[order // k]
        if self.grouped is None:
            self.grouped = grouped_mm_works(rows.dtype, rows.device)
        mlp = grouped_expert_mlp if self.grouped else padded_expert_mlp
        out_sorted = mlp(rows, gate_up, down, offsets)
        out = torch.empty_like(out_sorted)
        out[order] = out_sorted
        # published: the k outputs weighted in float32, summed, cast back
        return (out.view(-1, k, x.shape[-1]).float() * weights[..., None]).sum(1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        ids, weights = self.gate(flat)
        y = self.routed(flat, ids, weights)
        if self.has_shared:
            y = y + self.shared_experts(flat)
        return y.view(shape)


def per_token_reference(moe: LLaDA2SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """The MoE output computed one token and one chosen expert at a time with the per-expert
    modules (the test reference for the grouped path)."""
    flat = x.reshape(-1, x.shape[-1])
    ids, weights = moe.gate(flat)
    rows = []
    for t in range(flat.shape[0]):
        acc = torch.zeros(flat.shape[-1], dtype=torch.float32, device=x.device)
        for j in range(ids.shape[1]):
            acc += weights[t, j] * moe.experts[int(ids[t, j])](flat[t]).float()
        y = acc.to(x.dtype)
        if moe.has_shared:
            y = y + moe.shared_experts(flat[t])
        rows.append(y)
    return torch.stack(rows).view(x.shape)
