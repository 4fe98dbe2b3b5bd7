"""The Dream architecture for train_tiny.py (`--arch dream`).

Dream's parameter names and Qwen2.5 layout (GQA, q/k/v biases), its special tokens over the
same byte-level vocabulary (<|endoftext|> = EOS = pad, <|im_start|>, <|im_end|> = end of turn,
<|beginoftext|>, <|mask|>) and its ChatML template with Qwen2.5's default system message.

The objective is Dream's shifted one for free: dserve's DreamModel returns logits aligned to
positions (aligned[i] = raw output at i-1), so train_tiny's masked-diffusion loss, cross-entropy
of the aligned logit at each masked position against its token, trains the output at i-1 to
predict the token at i, exactly as Dream trains. Evaluation runs the `dream` engine (entropy,
one token per step, temperature 0).

Plain callables and data only: train_tiny.py wraps them in its Arch/ChatFormat (importing
train_tiny from here would import it twice when it runs as a script).
"""

from __future__ import annotations

import math

import torch

EOS, IM_START, IM_END, BOS, MASK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"
SPECIAL_TOKENS = (EOS, IM_START, IM_END, BOS, MASK)  # ids 256..260 (Dream-7B: 151643, 151644, 151645, 151665, 151666)
SYSTEM = "You are a helpful assistant."

# Qwen2.5's ChatML template (what Dream-v0-Instruct-7B ships, up to whitespace): a default system
# message when none is given; per message <|im_start|>{role}\n{content}<|im_end|>\n.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CHAT = dict(
    special_tokens=SPECIAL_TOKENS,
    bos=BOS,
    eos=EOS,
    eot=IM_END,
    mask=MASK,
    template=CHAT_TEMPLATE,
    prefix=lambda ids: [ids[IM_START], *b"system\n", *SYSTEM.encode(), ids[IM_END], *b"\n", ids[IM_START], *b"user\n"],
    suffix=lambda ids: [ids[IM_END], *b"\n", ids[IM_START], *b"assistant\n"],
    tokenizer_config={"mask_token": MASK},
)


def config(args, tok) -> dict:
    """config.json: Dream-v0-Instruct-7B's key set with tiny values."""
    vocab = -(-len(tok) // 8) * 8
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = args.n_heads
    return {
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "hidden_size": args.d_model,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 4),  # grouped-query attention, as Dream-7B (28:4)
        "intermediate_size": args.mlp_hidden,
        "hidden_act": "silu",
        "vocab_size": vocab,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-06,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": args.n_layers,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": ids[EOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[EOS],
        "mask_token_id": ids[MASK],
        "use_cache": False,
        "torch_dtype": "float32",
    }


def build(cfg: dict) -> torch.nn.Module:
    from dserve_dream.config import DreamConfig
    from dserve_dream.model import DreamModel

    model = DreamModel(DreamConfig.from_dict(cfg))
    std, n_layers = 0.02, cfg["num_hidden_layers"]
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(p)
        elif name.endswith(".bias"):
            torch.nn.init.zeros_(p)
        elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            torch.nn.init.normal_(p, std=std / math.sqrt(2 * n_layers))  # residual branches
        else:
            torch.nn.init.normal_(p, std=std)
    return model


def runner(model, batch_size: int):
    from dserve_dream.runner import EntropyRunner

    return EntropyRunner(model, max_batch_size=batch_size)


def eval_params(gen_length: int):
    from dserve_dream.params import DreamParams

    return DreamParams(temperature=0.0, steps=gen_length)


def load(path, *, dtype, device):
    from dserve_dream.model import load_dream

    return load_dream(path, dtype=dtype, device=device)
