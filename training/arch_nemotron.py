"""`--arch nemotron` for train_tiny.py: a tiny block-causal model in the Nemotron-Labs-Diffusion
format (config keys, parameter names: shared/specs/models.md 3.2-3.3), served by dserve-nemotron.

Tokenizer: the byte-level one of llada-tiny-instruct with Mistral-style special tokens, since
Nemotron-Labs-Diffusion derives from Ministral 3 (its exact tokens and template are not public,
models.md 3.6): ids 256.. = <s>, </s>, [INST], [/INST], [SYSTEM_PROMPT], [/SYSTEM_PROMPT], <mask>.
Template: `<s>[INST]{user}[/INST]{assistant}</s>...`; an answer ends with </s> (end of turn and
EOS are one token, as in Mistral's format), and the canvas after it is </s> padding.

Objective, mirroring how the model is decoded (block diffusion over a causal KV cache, AR and
self-speculation with the same weights), in one forward over two copies of each example:
- clean stream: the example, causal attention; its logits at i predict token i+1. The AR loss is
  the mean CE of every response token (the first one predicted from the prompt's end, which is
  the seed of block 0 at decoding time).
- noisy stream: the response cut into blocks of `block_size` counted from the prompt end; in each
  block slot 0 stays clean (decoding seeds it with the AR prediction) and every other token is
  masked with the block's own t ~ U(eps, 1]. A noisy block attends bidirectionally to itself and
  to the clean stream before the block (the causal K/V the decoder's cache holds). Loss: CE of
  the masked tokens weighted 1/t, summed and divided by the response length (LLaDA's SFT form).
Loss = diffusion + AR, averaged over the batch.

Evaluation: dserve-nemotron's block_diffusion runner, block 32, one token per step (threshold
null, steps = generation length), temperature 0.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

_PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "nemotron"
if str(_PLUGIN) not in sys.path:
    sys.path.insert(0, str(_PLUGIN))

BOS, EOS, INST, END_INST, SYS, END_SYS, MASK = (
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "<mask>",
)
SPECIAL_TOKENS = (BOS, EOS, INST, END_INST, SYS, END_SYS, MASK)  # ids 256..262
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' + message['content'] | trim + '[/SYSTEM_PROMPT]' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST]' + message['content'] | trim + '[/INST]' }}"
    "{% else %}{{ message['content'] | trim + eos_token }}{% endif %}{% endfor %}"
)
BLOCK_SIZE = 32


def chat_format(ChatFormat):
    """The ChatFormat train_tiny.py uses for tokenizer, template and fast prompt encoding."""
    return ChatFormat(
        special_tokens=SPECIAL_TOKENS,
        bos=BOS,
        eos=EOS,
        eot=EOS,
        mask=MASK,
        template=CHAT_TEMPLATE,
        prefix=lambda ids: [ids[BOS], ids[INST]],
        suffix=lambda ids: [ids[END_INST]],
    )


def config(args: argparse.Namespace, tok) -> dict:
    vocab = -(-len(tok) // 8) * 8
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    n_kv = max(1, args.n_heads // 2)
    # The key set of nvidia/Nemotron-Labs-Diffusion-8B's config.json (models.md 3.2), tiny values.
    return {
        "architectures": ["NemotronLabsDiffusionModel"],
        "model_type": "nemotron_labs_diffusion",
        "hidden_size": args.d_model,
        "num_hidden_layers": args.n_layers,
        "intermediate_size": args.mlp_hidden,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": args.d_model // args.n_heads,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 128,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "llama_4_scaling_beta": 0.1,
        },
        "max_position_embeddings": 512,
        "block_size": BLOCK_SIZE,
        "mask_token_id": ids[MASK],
        "dlm_paradigm": "bidirectional",
        "dlm_type": "llada",
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[EOS],
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
        "use_cache": False,
    }


def build(cfg: dict) -> torch.nn.Module:
    from dserve_nemotron.config import NemotronConfig
    from dserve_nemotron.model import NemotronDiffusionModel

    model = NemotronDiffusionModel(NemotronConfig.from_dict(cfg))
    std, n_layers = 0.02, cfg["num_hidden_layers"]
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(p)
        elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            torch.nn.init.normal_(p, std=std / math.sqrt(2 * n_layers))
        else:
            torch.nn.init.normal_(p, std=std)
    return model


def runner(model, batch_size: int):
    from dserve_nemotron.block_diffusion import BlockDiffusionRunner

    return BlockDiffusionRunner(model, max_batch_size=batch_size)


def eval_params(gen_length: int):
    from dserve_nemotron.params import BlockDiffusionParams

    return BlockDiffusionParams(temperature=0.0, steps=gen_length, block_length=BLOCK_SIZE, threshold=None)


def load(path, *, dtype, device):
    from dserve_nemotron.model import load_nemotron

    return load_nemotron(path, dtype=dtype, device=device)


def dual_stream_mask(prompt_len: torch.Tensor, valid_len: torch.Tensor, T: int, block: int) -> torch.Tensor:
    """[B, 2T, 2T] boolean (True = attend): clean stream causal; a noisy block sees the clean
    stream before the block and itself (bidirectionally); prompt and pad rows of the noisy
    stream see clean position 0 only (no loss there; keeps every row finite)."""
    device = prompt_len.device
    i = torch.arange(T, device=device)
    P, n = prompt_len[:, None], valid_len[:, None]
    key_ok = i[None, :] < n  # [B, T]
    blk = torch.where((i[None, :] >= P) & key_ok, (i[None, :] - P) // block, -1)  # [B, T]
    start = P + blk.clamp(min=0) * block  # block start per query position
    clean_clean = (i[None, None, :] <= i[None, :, None]) & key_ok[:, None, :]
    noisy_clean = (i[None, None, :] < start[:, :, None]) & key_ok[:, None, :] & (blk[:, :, None] >= 0)
    noisy_noisy = (blk[:, :, None] == blk[:, None, :]) & (blk[:, :, None] >= 0)
    noisy_clean |= (blk[:, :, None] < 0) & (i[None, None, :] == 0)
    top = torch.cat([clean_clean, torch.zeros_like(clean_clean)], dim=2)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=2)
    return torch.cat([top, bottom], dim=1)


def loss(model, ids, resp, valid, lengths, mask_id: int, gen: torch.Generator, eps: float = 1e-3):
    """Block-diffusion loss (noisy stream) + next-token loss (clean stream); see the module doc."""
    B, T = ids.shape
    device = ids.device
    prompt_len = resp.to(torch.int8).argmax(1)
    valid_len = valid.sum(1) if valid is not None else torch.full((B,), T, device=device)
    i = torch.arange(T, device=device)
    offset = i[None, :] - prompt_len[:, None]  # position inside the response
    blk = torch.where(resp, offset // BLOCK_SIZE, 0)
    n_blocks = T // BLOCK_SIZE + 1
    t = eps + (1 - eps) * torch.rand((B, n_blocks), generator=gen, device=device)
    t_pos = t.gather(1, blk)
    masked = (torch.rand((B, T), generator=gen, device=device) < t_pos) & resp & (offset % BLOCK_SIZE != 0)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)

    inputs = torch.cat([ids, noisy], dim=1)
    positions = torch.cat([i, i])[None].expand(B, 2 * T)
    mask = dual_stream_mask(prompt_len, valid_len, T, BLOCK_SIZE)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(inputs, positions, attention_mask=mask)
    logits = logits.float()
    clean_logits, noisy_logits = logits[:, :T], logits[:, T:]

    ce = F.cross_entropy(noisy_logits.flatten(0, 1), ids.flatten(), reduction="none").view(B, T)
    weight = torch.where(masked, 1.0 / (t_pos * lengths[:, None]), 0.0)
    diffusion = torch.where(masked, ce * weight, 0.0).sum() / B

    # next-token: logits at i predict token i+1, for every response token
    target_ok = resp[:, 1:]
    ar_ce = F.cross_entropy(clean_logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(B, T - 1)
    ar = (torch.where(target_ok, ar_ce, 0.0).sum(1) / target_ok.sum(1).clamp(min=1)).mean()
    return diffusion + ar
