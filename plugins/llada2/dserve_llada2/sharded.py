"""The LLaDA2 MoE layer sharded over a torch.distributed group: expert parallelism for the routed
experts, tensor parallelism for the shared expert, one all-reduce per layer (docs/scale-out.md,
"Sharding LLaDA2.0-flash").

Every rank holds the same tokens (the attention before it is tensor-parallel and ends in an
all-reduce, so its output is replicated) and the same router, so every rank computes the same
routing without communicating. Rank r owns the routed experts [r*E/W, (r+1)*E/W): it sorts the
(token, expert) pairs that fall on its experts by expert, runs them through one grouped GEMM per
projection, and weights them; pairs owned by other ranks contribute zero. The shared expert is
split along its intermediate dimension (gate/up by output rows, down by input columns), so each
rank's shared output is a partial sum. One all-reduce (sum) of [routed | shared] completes both.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dserve_llada2.moe import LLaDA2SparseMoE, grouped_expert_mlp, grouped_mm_works, padded_expert_mlp, sort_by_expert


class ExpertParallelMoE(nn.Module):
    """One rank's shard of a `LLaDA2SparseMoE` (built from the full layer, or from a checkpoint
    loader that reads only this rank's experts: the slicing is the same)."""

    def __init__(self, moe: LLaDA2SparseMoE, rank: int, world: int, group: dist.ProcessGroup | None = None):
        super().__init__()
        E = moe.num_experts
        if E % world:
            raise ValueError(f"{E} experts do not split over {world} ranks")
        self.rank, self.world, self.group = rank, world, group
        self.per_rank = E // world
        self.first = rank * self.per_rank
        self.gate = moe.gate  # replicated: every rank routes identically
        gate_up, down = moe.stacked()
        own = slice(self.first, self.first + self.per_rank)
        self.gate_up, self.down = gate_up[own].clone(), down[own].clone()
        self.has_shared = moe.has_shared
        if self.has_shared:
            shared = moe.shared_experts
            width = shared.gate_proj.weight.shape[0]
            if width % world:
                raise ValueError(f"shared expert width {width} does not split over {world} ranks")
            part = slice(rank * width // world, (rank + 1) * width // world)
            self.shared_gate = shared.gate_proj.weight[part].clone()
            self.shared_up = shared.up_proj.weight[part].clone()
            self.shared_down = shared.down_proj.weight[:, part].clone()
        self.grouped = grouped_mm_works(self.gate_up.dtype, self.gate_up.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        ids, weights = self.gate(flat)
        k = ids.shape[1]
        mine = (ids >= self.first) & (ids < self.first + self.per_rank)
        # other ranks' pairs go to a trailing group past this rank's experts, left uncomputed
        local = torch.where(mine, ids - self.first, self.per_rank)
        order, ends = sort_by_expert(local, self.per_rank + 1)
        n_mine = int(ends[self.per_rank - 1])  # one host sync per layer: how many rows to compute
        rows = flat[order[:n_mine] // k]
        mlp = grouped_expert_mlp if self.grouped else padded_expert_mlp
        out = torch.zeros(order.shape[0], shape[-1], dtype=flat.dtype, device=flat.device)
        out[order[:n_mine]] = mlp(rows, self.gate_up, self.down, ends[: self.per_rank])
        routed = (out.view(-1, k, shape[-1]).float() * (weights * mine)[..., None]).sum(1)
        parts = [routed]
        if self.has_shared:
            h = F.silu(flat @ self.shared_gate.T) * (flat @ self.shared_up.T)
            parts.append((h @ self.shared_down.T).float())
        both = torch.cat(parts, dim=-1)
        dist.all_reduce(both, group=self.group)
        y = both[:, : shape[-1]].to(x.dtype)
        if self.has_shared:
            y = y + both[:, shape[-1] :].to(x.dtype)
        return y.view(shape)
