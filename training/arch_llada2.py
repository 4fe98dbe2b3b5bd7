"""`--arch llada2` for train_tiny.py: a tiny Mixture-of-Experts block-diffusion model in
inclusionAI's LLaDA2 format (`LLaDA2MoeModelLM`: config keys and parameter names as published),
served by dserve-llada2.

Tokenizer: the byte-level one of llada-tiny-instruct with LLaDA2's (Ling) chat tokens, ids 256..:
<|startoftext|>, <|endoftext|> (EOS, pad), <role>, </role>, <|role_end|> (end of turn), <|mask|>.
Template as the published benchmarks write it: `<role>HUMAN</role>{user}<|role_end|><role>ASSISTANT</role>`;
an answer ends with <|role_end|>, then <|endoftext|> padding (the published loop stops on EOS only).

Model: hidden d_model, n_layers (the first dense, `first_k_dense_replace` 1, MLP mlp_hidden), then
MoE layers of 8 experts (moe_intermediate_size mlp_hidden / 2, top-2 in 4 groups of which 2 are
kept, sigmoid router with `expert_bias`, routed_scaling_factor 2.5, one shared expert), GQA with
half as many KV heads, q/k RMSNorm, RoPE on half of each head (partial_rotary_factor 0.5): the
switches of LLaDA2.0-mini's config with tiny sizes.

Objective, mirroring the published decoding (absolute blocks of BLOCK_SIZE; a block is denoised
attending bidirectionally to itself and to every earlier block, whose K/V are those of the final
tokens), in one forward over two copies of each example:
- clean stream: the example under the block-causal mask (the K/V a decoding cache holds);
- noisy stream: the response tokens masked with a t ~ U(eps, 1] drawn per block; a noisy block
  attends to itself and to the clean stream's earlier blocks. The prompt's tail inside the first
  response block stays clean, as at decoding.
Loss: CE of the masked tokens weighted 1/t, summed, divided by the response length (LLaDA's SFT
form), averaged over the batch. The router's expert_bias stays zero (no load balancing).

Evaluation: dserve-llada2's runner with the published rule, block 32, threshold 1.0 (the fixed
schedule) and 32 steps per block (one token per step), temperature 0.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

_PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "llada2"
if str(_PLUGIN) not in sys.path:
    sys.path.insert(0, str(_PLUGIN))

BOS, EOS, ROLE, END_ROLE, ROLE_END, MASK = "<|startoftext|>", "<|endoftext|>", "<role>", "</role>", "<|role_end|>", "<|mask|>"
SPECIAL_TOKENS = (BOS, EOS, ROLE, END_ROLE, ROLE_END, MASK)  # ids 256..261
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set role = {'system': 'SYSTEM', 'user': 'HUMAN', 'assistant': 'ASSISTANT'}[message['role']] %}"
    "{{ '<role>' + role + '</role>' + message['content'] | trim + '<|role_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}"
)
BLOCK_SIZE = 32


def chat_format(ChatFormat):
    """The ChatFormat train_tiny.py uses for tokenizer, template and fast prompt encoding."""
    return ChatFormat(
        special_tokens=SPECIAL_TOKENS,
        bos=BOS,
        eos=EOS,
        eot=ROLE_END,
        mask=MASK,
        template=CHAT_TEMPLATE,
        prefix=lambda ids: [ids[ROLE], *b"HUMAN", ids[END_ROLE]],
        suffix=lambda ids: [ids[ROLE_END], ids[ROLE], *b"ASSISTANT", ids[END_ROLE]],
    )


def config(args: argparse.Namespace, tok) -> dict:
    vocab = -(-len(tok) // 8) * 8
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # The key set of inclusionAI/LLaDA2.0-mini's config.json, tiny values (mask_token_id is
    # extra: the published generate takes the mask id as an argument)
    return {
        "architectures": ["LLaDA2MoeModelLM"],
        "model_type": "llada2_moe",
        "vocab_size": vocab,
        "hidden_size": args.d_model,
        "intermediate_size": args.mlp_hidden,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": max(1, args.n_heads // 2),
        "head_dim": args.d_model // args.n_heads,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_qk_norm": True,
        "use_bias": False,
        "rms_norm_eps": 1e-6,
        "norm_head": False,
        "tie_word_embeddings": False,
        "max_position_embeddings": 512,
        "rope_theta": 600000.0,
        "rope_scaling": None,
        "partial_rotary_factor": 0.5,
        "num_experts": 8,
        "num_shared_experts": 1,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "routed_scaling_factor": 2.5,
        "moe_intermediate_size": args.mlp_hidden // 2,
        "first_k_dense_replace": 1,
        "score_function": "sigmoid",
        "moe_router_enable_expert_bias": True,
        "router_dtype": "fp32",
        "pad_token_id": ids[EOS],
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "mask_token_id": ids[MASK],
        "torch_dtype": "float32",
        "use_cache": False,
    }


def build(cfg: dict) -> torch.nn.Module:
    from dserve_llada2.config import LLaDA2Config
    from dserve_llada2.model import LLaDA2DiffusionModel

    model = LLaDA2DiffusionModel(LLaDA2Config.from_dict(cfg))
    std, n_layers = 0.02, cfg["num_hidden_layers"]
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            torch.nn.init.ones_(p)
        elif name.endswith("dense.weight") or name.endswith("down_proj.weight"):
            torch.nn.init.normal_(p, std=std / math.sqrt(2 * n_layers))
        elif name.endswith(".bias"):
            torch.nn.init.zeros_(p)
        else:
            torch.nn.init.normal_(p, std=std)
    return model


def runner(model, batch_size: int):
    from dserve_llada2.block_diffusion import LLaDA2BlockDiffusionRunner

    return LLaDA2BlockDiffusionRunner(model, max_batch_size=batch_size)


def eval_params(gen_length: int):
    from dserve_llada2.params import LLaDA2Params

    return LLaDA2Params(temperature=0.0, steps=BLOCK_SIZE, block_length=BLOCK_SIZE, threshold=1.0)


def load(path, *, dtype, device):
    from dserve_llada2.model import load_llada2

    return load_llada2(path, dtype=dtype, device=device)


def dual_stream_mask(prompt_len: torch.Tensor, valid_len: torch.Tensor, T: int, block: int) -> torch.Tensor:
    """[B, 2T, 2T] boolean (True = attend). Blocks are absolute ([j*block, (j+1)*block)).
    Clean stream: block-causal over valid keys. Noisy stream: a query in block j sees the clean
    stream's blocks < j and the noisy block j (itself included, so pad rows stay finite)."""
    device = prompt_len.device
    i = torch.arange(T, device=device)
    blk = i // block
    key_ok = i[None, :] < valid_len[:, None]  # [B, T]
    earlier_or_same = blk[None, :] <= blk[:, None]  # [T(q), T(k)]
    clean_clean = earlier_or_same[None] & key_ok[:, None, :]
    noisy_clean = (blk[None, :] < blk[:, None])[None] & key_ok[:, None, :]
    noisy_noisy = (blk[None, :] == blk[:, None])[None] & (key_ok[:, None, :] | (i[None, :] == i[:, None])[None])
    top = torch.cat([clean_clean, torch.zeros_like(clean_clean)], dim=2)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=2)
    return torch.cat([top, bottom], dim=1)


def loss(model, ids, resp, valid, lengths, mask_id: int, gen: torch.Generator, eps: float = 1e-3):
    """Block-diffusion loss of the noisy stream over the clean block-causal stream (module doc)."""
    B, T = ids.shape
    device = ids.device
    prompt_len = resp.to(torch.int8).argmax(1)
    valid_len = valid.sum(1) if valid is not None else torch.full((B,), T, device=device)
    i = torch.arange(T, device=device)
    n_blocks = -(-T // BLOCK_SIZE)
    t = eps + (1 - eps) * torch.rand((B, n_blocks), generator=gen, device=device)
    t_pos = t[:, i // BLOCK_SIZE]
    masked = (torch.rand((B, T), generator=gen, device=device) < t_pos) & resp
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)

    inputs = torch.cat([ids, noisy], dim=1)
    positions = torch.cat([i, i])[None].expand(B, 2 * T)
    mask = dual_stream_mask(prompt_len, valid_len, T, BLOCK_SIZE)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(inputs, positions, attention_mask=mask)
    noisy_logits = logits[:, T:].float()
    ce = F.cross_entropy(noisy_logits.flatten(0, 1), ids.flatten(), reduction="none").view(B, T)
    weight = torch.where(masked, 1.0 / (t_pos * lengths[:, None]), 0.0)
    return torch.where(masked, ce * weight, 0.0).sum() / B
