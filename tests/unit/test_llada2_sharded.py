"""The LLaDA2 MoE layer sharded over two processes (gloo on the CPU: expert parallelism for the
routed experts, tensor parallelism for the shared one, one all-reduce) equals the one-process
layer (docs/scale-out.md, "Sharding LLaDA2.0-flash")."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

FIXTURE = Path(__file__).parent.parent / "fixtures" / "llada2"


def _inputs(hidden: int) -> torch.Tensor:
    return torch.randn(3, 17, hidden, generator=torch.Generator().manual_seed(11))


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from dserve_llada2.model import load_llada2
        from dserve_llada2.sharded import ExpertParallelMoE

        model = load_llada2(FIXTURE, dtype="float32")
        for i, moe in enumerate(model.moe_layers()):
            shard = ExpertParallelMoE(moe, rank, world)
            with torch.inference_mode():
                y = shard(_inputs(model.cfg.hidden_size))
            torch.save(y, Path(out_dir) / f"layer{i}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_expert_parallel_moe_equals_one_process(tmp_path):
    from dserve_llada2.model import load_llada2

    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    model = load_llada2(FIXTURE, dtype="float32")
    layers = model.moe_layers()
    assert len(layers) == 2 and layers[0].has_shared  # routed experts and a shared one, both split
    for i, moe in enumerate(layers):
        with torch.inference_mode():
            want = moe(_inputs(model.cfg.hidden_size))
        for rank in range(2):
            got = torch.load(tmp_path / f"layer{i}_rank{rank}.pt")
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
