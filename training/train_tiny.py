#!/usr/bin/env python3
"""Train dserve's embedded default model, ``llada-tiny-instruct``.

A few-million-parameter model with LLaDA's architecture, parameter names, special tokens and
chat template, trained with LLaDA's masked-diffusion SFT objective on the synthetic task family
of ``dserve_ops.evaluation.tasks``, then evaluated on the held-out split with dserve's reference
LLaDA loop (one token per step, temperature 0).

    python training/train_tiny.py --device cuda --out /tmp/llada-tiny-instruct

Objective (LLaDA SFT): per example t ~ U(eps, 1]; every response token (answer, <|eot_id|>,
<|endoftext|> padding) is masked with probability t, the prompt never; loss = sum over masked
positions of CE / t, divided by the response length, averaged over the batch. The response is
padded with EOS to a length drawn per example (up to --max-response), so the model learns to
fill unused canvas with EOS after end-of-turn and any canvas length works.

Architectures: ``--arch llada`` (bidirectional LLaDA). The ``ARCHS`` table is where later
variants (Dream's shifted logits, block-causal attention) plug in: an entry builds the
config.json, the model and the evaluation runner.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "core", REPO / "plugins" / "llada", REPO / "plugins" / "dream", REPO / "training"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# must be set before CUDA initialises for deterministic cuBLAS
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dserve_ops.evaluation.tasks import (  # noqa: E402
    EVAL_GEN_LENGTH,
    KINDS,
    MAX_ANSWER_CHARS,
    Example,
    generate_examples,
    is_correct,
    iter_examples,
)

# ---------------------------------------------------------------------------------------------
# Tokenizer: byte-level (every byte one token; printable ASCII is one character = one token),
# plus LLaDA's special tokens. Built with `tokenizers`; loadable by AutoTokenizer, no remote code.
# ---------------------------------------------------------------------------------------------

BOS, EOS, SOH, EOH, EOT, MASK = (
    "<|startoftext|>",
    "<|endoftext|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|mdm_mask|>",
)
SPECIAL_TOKENS = (BOS, EOS, SOH, EOH, EOT, MASK)  # ids 256..261

# LLaDA-8B-Instruct's template shape (Llama-3): BOS once; per message header, trimmed content,
# <|eot_id|>; generation prompt = the assistant header.
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatFormat:
    """A family's special tokens (ids 256.. in order), chat template and the fixed token runs
    around a one-turn user prompt (for the Jinja-free fast path)."""

    special_tokens: tuple[str, ...]
    bos: str
    eos: str  # also pad; fills the canvas after the answer
    eot: str  # end of turn, right after the answer
    mask: str
    template: str
    prefix: Callable[[dict[str, int]], list[int]]  # special-token ids -> ids before the prompt text
    suffix: Callable[[dict[str, int]], list[int]]
    tokenizer_config: dict = field(default_factory=dict)  # extra tokenizer_config.json entries


LLADA_CHAT = ChatFormat(
    special_tokens=SPECIAL_TOKENS,
    bos=BOS,
    eos=EOS,
    eot=EOT,
    mask=MASK,
    template=CHAT_TEMPLATE,
    prefix=lambda ids: [ids[BOS], ids[SOH], *b"user", ids[EOH], *b"\n\n"],
    suffix=lambda ids: [ids[EOT], ids[SOH], *b"assistant", ids[EOH], *b"\n\n"],
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode map (what tokenizers' ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(out: Path, chat: ChatFormat = LLADA_CHAT) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}  # token id = byte value
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(chat.special_tokens))
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(256 + i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(chat.special_tokens)
    }
    extra = [t for t in chat.special_tokens if t not in (chat.bos, chat.eos)]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": chat.bos,
        "eos_token": chat.eos,
        "pad_token": chat.eos,
        "additional_special_tokens": extra,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 512,
        "padding_side": "left",
        "chat_template": chat.template,
        **chat.tokenizer_config,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {"bos_token": chat.bos, "eos_token": chat.eos, "pad_token": chat.eos, "additional_special_tokens": extra}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def prompt_ids(tok, prompts: list[str]) -> list[list[int]]:
    """Exactly how the server tokenizes a chat request (dserve.modeling.tokenizer.chat_prompt_ids)."""
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    return tok(texts, add_special_tokens=False)["input_ids"]


class FastPrompts:
    """The same ids as `prompt_ids` without Jinja (byte-level: a prompt's ids are its UTF-8 bytes
    between a fixed prefix and suffix); checked against the tokenizer on construction."""

    def __init__(self, tok, check: list[str], chat: ChatFormat = LLADA_CHAT):
        ids = {t: tok.convert_tokens_to_ids(t) for t in chat.special_tokens}
        self.prefix, self.suffix = chat.prefix(ids), chat.suffix(ids)
        if self(check) != prompt_ids(tok, check):
            raise AssertionError("fast prompt encoding disagrees with the chat template + tokenizer")

    def __call__(self, prompts: list[str]) -> list[list[int]]:
        return [self.prefix + list(p.strip().encode()) + self.suffix for p in prompts]


# ---------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------


@dataclass
class Arch:
    """What an architecture variant provides to the trainer."""

    config: Callable[[argparse.Namespace, Any], dict]  # config.json contents
    build: Callable[[dict], torch.nn.Module]  # a freshly initialised model from config.json
    runner: Callable[[torch.nn.Module, int], Any]  # an AlgorithmRunner for evaluation
    eval_params: Callable[[int], Any]  # decoding params: one token per step, temperature 0
    chat: ChatFormat = LLADA_CHAT
    load: Callable[..., Any] | None = None  # (path, dtype=, device=) -> model, for --eval-only (None: LLaDA's)
    loss: Callable[..., Any] | None = None  # training objective, diffusion_loss's signature (None: diffusion_loss)


def _llada_config(args: argparse.Namespace, tok) -> dict:
    vocab = len(tok)
    padded = -(-vocab // 8) * 8
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # The key set of GSAI-ML/LLaDA-8B-Instruct's config.json (docs: shared/specs/models.md 1.1)
    # with tiny values; `eot_token_id` and `torch_dtype` are extra (dserve reads both).
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_heads,
        "mlp_hidden_size": args.mlp_hidden,
        "mlp_ratio": 4,
        "activation_type": "silu",
        "block_type": "llama",
        "layer_norm_type": "rms",
        "rms_norm_eps": 1e-5,
        "layer_norm_with_affine": True,
        "rope": True,
        "rope_theta": 500000.0,
        "rope_full_precision": True,
        "max_sequence_length": 512,
        "vocab_size": padded,
        "embedding_size": padded,
        "weight_tying": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "bias_for_layer_norm": False,
        "attention_layer_norm": False,
        "scale_logits": False,
        "input_emb_norm": False,
        "alibi": False,
        "flash_attention": False,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[EOS],
        "mask_token_id": ids[MASK],
        "eot_token_id": ids[EOT],
        "use_cache": False,
        "torch_dtype": "float32",
    }


def _llada_build(config: dict) -> torch.nn.Module:
    from dserve_llada.config import LLaDAConfig
    from dserve_llada.model import LLaDAModel

    model = LLaDAModel(LLaDAConfig.from_dict(config))
    std, n_layers = 0.02, config["n_layers"]
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
            torch.nn.init.ones_(p)
        elif name.endswith("attn_out.weight") or (".blocks." in name and name.endswith("ff_out.weight")):
            torch.nn.init.normal_(p, std=std / math.sqrt(2 * n_layers))
        else:
            torch.nn.init.normal_(p, std=std)
    return model


def _llada_runner(model, batch_size: int):
    from dserve_llada.reference import ReferenceRunner

    return ReferenceRunner(model, max_batch_size=batch_size)


def _llada_eval_params(gen_length: int):
    from dserve_llada.params import ReferenceParams

    return ReferenceParams(temperature=0.0, steps=gen_length, block_length=32, remasking="low_confidence")


ARCHS: dict[str, Arch] = {
    "llada": Arch(_llada_config, _llada_build, _llada_runner, _llada_eval_params),
    # later: "block_causal" (Nemotron / Fast-dLLM v2 style masks)
}

import arch_dream  # noqa: E402  (Dream: shifted logits, ChatML; training/arch_dream.py)

ARCHS["dream"] = Arch(
    arch_dream.config,
    arch_dream.build,
    arch_dream.runner,
    arch_dream.eval_params,
    chat=ChatFormat(**arch_dream.CHAT),
    load=arch_dream.load,
)

import arch_nemotron  # noqa: E402  (block-causal Nemotron-Labs format; training/arch_nemotron.py)

ARCHS["nemotron"] = Arch(
    arch_nemotron.config,
    arch_nemotron.build,
    arch_nemotron.runner,
    arch_nemotron.eval_params,
    chat=arch_nemotron.chat_format(ChatFormat),
    load=arch_nemotron.load,
    loss=arch_nemotron.loss,
)

import arch_llada2  # noqa: E402  (LLaDA2 MoE, absolute block diffusion; training/arch_llada2.py)

ARCHS["llada2"] = Arch(
    arch_llada2.config,
    arch_llada2.build,
    arch_llada2.runner,
    arch_llada2.eval_params,
    chat=arch_llada2.chat_format(ChatFormat),
    load=arch_llada2.load,
    loss=arch_llada2.loss,
)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class Batcher:
    """Training batches: prompt (never masked) + response = answer, <|eot_id|>, EOS padding.

    Each example's response length is drawn at random (skewed towards short, up to
    `max_response`); a pool of `pool` batches is sorted by total length and cut into batches,
    so right padding (hidden from attention, no loss) wastes little compute.
    """

    def __init__(
        self,
        tok,
        seed: int,
        batch_size: int,
        max_response: int,
        pool: int = 8,
        chat: ChatFormat = LLADA_CHAT,
        kinds: list[str] | None = None,
    ):
        self.tok, self.batch_size, self.max_response, self.pool = tok, batch_size, max_response, pool
        self.examples = iter_examples(seed, "train", kinds)  # a kind listed twice is drawn twice as often
        self.rng = random.Random(f"batcher:{seed}")
        self.eos, self.eot = tok.convert_tokens_to_ids(chat.eos), tok.convert_tokens_to_ids(chat.eot)
        self.queue: list[list[tuple[list[int], list[int]]]] = []
        self.tokens = 0  # non-pad tokens served so far
        self.encode = FastPrompts(tok, [e.prompt for e in generate_examples(500, seed=seed + 99)], chat)

    def _refill(self) -> None:
        exs = [next(self.examples) for _ in range(self.batch_size * self.pool)]
        prompts = self.encode([e.prompt for e in exs])
        answers = [list(e.answer.encode()) for e in exs]
        rows = []
        for p, a in zip(prompts, answers):
            need = len(a) + 1
            span = max(0, self.max_response - need)
            length = need + int(span * self.rng.random() ** 2 + 0.5)
            rows.append((p, a + [self.eot] + [self.eos] * (length - need)))
        rows.sort(key=lambda r: len(r[0]) + len(r[1]))
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        self.rng.shuffle(batches)
        self.queue.extend(batches)

    def next(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """ids [B,T], response mask [B,T], valid (non-pad) mask [B,T] or None, response lengths [B]."""
        if not self.queue:
            self._refill()
        rows = self.queue.pop()
        T = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), T), self.eos, dtype=torch.long)
        resp = torch.zeros((len(rows), T), dtype=torch.bool)
        valid = torch.zeros((len(rows), T), dtype=torch.bool)
        lengths = torch.zeros(len(rows))
        for i, (p, r) in enumerate(rows):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            resp[i, len(p) : len(p) + len(r)] = True
            valid[i, : len(p) + len(r)] = True
            lengths[i] = len(r)
        self.tokens += int(valid.sum())
        nb = device.type == "cuda"
        v = None if bool(valid.all()) else valid.to(device, non_blocking=nb)
        return ids.to(device, non_blocking=nb), resp.to(device, non_blocking=nb), v, lengths.to(device, non_blocking=nb)


def diffusion_loss(model, ids, resp, valid, lengths, mask_id: int, gen: torch.Generator, eps: float = 1e-3):
    """LLaDA's SFT loss: CE on masked response tokens, weighted 1/t, normalised by response length."""
    B, T = ids.shape
    # stratified t over the batch (lower variance than i.i.d. uniform; each t is still U(eps, 1])
    u = (torch.rand((), generator=gen, device=ids.device) + torch.arange(B, device=ids.device) / B) % 1.0
    t = eps + (1 - eps) * (1 - u)  # in (eps, 1]
    masked = (torch.rand((B, T), generator=gen, device=ids.device) < t[:, None]) & resp
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ids.device.type == "cuda"):
        logits = model(noisy, attention_mask=valid)
    # every position's CE, weighted 1/(t * response length) where masked, 0 elsewhere
    # (no boolean indexing: no host sync)
    ce = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), reduction="none").view(B, T)
    # where(), not a product: a non-finite CE at an unmasked (pad) position must not leak in
    weight = torch.where(masked, 1.0 / (t * lengths)[:, None], 0.0)
    return torch.where(masked, ce * weight, 0.0).sum() / B


# ---------------------------------------------------------------------------------------------
# Evaluation with the reference loop
# ---------------------------------------------------------------------------------------------


def generate(arch: Arch, model, tok, prompts: list[str], gen_length: int, batch_size: int) -> tuple[list[list[int]], int]:
    """Run the reference loop (one token per step, T=0) for every prompt; canvases after the prompt."""
    from dserve.sequence import Sequence

    params = arch.eval_params(gen_length)
    runner = arch.runner(model, batch_size)
    pending = list(enumerate(prompt_ids(tok, prompts)))[::-1]
    where: dict[int, int] = {}
    outputs: list[list[int]] = [[] for _ in prompts]
    nfe = 0
    while pending or runner.sequences:
        while pending and runner.has_capacity():
            i, ids = pending.pop()
            seq = Sequence(ids, gen_length, params=params, seed=0)
            runner.admit(seq)
            where[seq.seq_id] = i
        for r in runner.step():
            nfe += r.nfe
            if r.finished:
                outputs[where.pop(r.seq.seq_id)] = r.seq.engine_state.canvas[r.seq.prompt_len :].tolist()
                runner.release(r.seq)
    return outputs, nfe


def cut_answer(tok, canvas: list[int], chat: ChatFormat = LLADA_CHAT) -> tuple[str, bool]:
    """Text before the first end-of-turn/EOS; clean = a stop exists and only EOS follows it."""
    eot, eos = tok.convert_tokens_to_ids(chat.eot), tok.convert_tokens_to_ids(chat.eos)
    stop = next((i for i, x in enumerate(canvas) if x in (eot, eos)), None)
    if stop is None:
        return tok.decode(canvas, skip_special_tokens=True), False
    clean = all(x == eos for x in canvas[stop + 1 :])
    return tok.decode(canvas[:stop], skip_special_tokens=False), clean


def evaluate(arch: Arch, model, tok, examples: list[Example], gen_length: int, batch_size: int, show: int = 0) -> dict:
    t0 = time.time()
    canvases, nfe = generate(arch, model, tok, [e.prompt for e in examples], gen_length, batch_size)
    per_kind: dict[str, list[int]] = {k: [0, 0] for k in KINDS}
    correct = clean = 0
    for e, c in zip(examples, canvases):
        text, ok_end = cut_answer(tok, c, arch.chat)
        ok = is_correct(e, text)
        correct += ok
        clean += ok_end
        per_kind[e.kind][0] += ok
        per_kind[e.kind][1] += 1
    for e, c in list(zip(examples, canvases))[:show]:
        text, ok_end = cut_answer(tok, c, arch.chat)
        print(f"  [{e.kind}] {e.prompt!r} -> {text!r} (want {e.answer!r}){'' if ok_end else ' UNCLEAN'}")
    return {
        "n": len(examples),
        "accuracy": correct / len(examples),
        "clean_end": clean / len(examples),
        "per_kind": {k: v[0] / v[1] for k, v in per_kind.items() if v[1]},
        "nfe_per_sequence": nfe / len(examples),
        "seconds": time.time() - t0,
        "canvases": canvases,
    }


def _fmt(res: dict) -> str:
    kinds = " ".join(f"{k}={v:.3f}" for k, v in res["per_kind"].items())
    return f"acc={res['accuracy']:.4f} clean={res['clean_end']:.4f} ({res['n']} ex, {res['seconds']:.1f}s) | {kinds}"


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(model, config: dict, tok_dir: Path, out: Path, report: dict | None) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tok_dir != out:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (out / name).write_bytes((tok_dir / name).read_bytes())
    if report is not None:
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")


def _tar(out: Path, tar: Path | None) -> None:
    if tar is not None:
        tmp = tar.with_name(tar.name + ".partial")
        with tarfile.open(tmp, "w:gz") as tf:
            tf.add(out, arcname=out.name)
        tmp.replace(tar)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="llada")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("llada-tiny-instruct"), help="checkpoint directory to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=6000, help="optimizer steps (sets the LR schedule)")
    ap.add_argument(
        "--stop-after", type=int, default=0, help="stop after this many steps without changing the schedule (0: --steps)"
    )
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=6)
    ap.add_argument("--n-heads", type=int, default=8)
    ap.add_argument("--mlp-hidden", type=int, default=384)
    ap.add_argument("--max-response", type=int, default=64, help="longest response canvas (answer+EOT+EOS pad)")
    ap.add_argument("--eval-samples", type=int, default=700, help="held-out examples for the final evaluation")
    ap.add_argument("--eval-every", type=int, default=0, help="quick held-out evaluation every N steps (0: off)")
    ap.add_argument("--quick-eval-samples", type=int, default=140)
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--eval-seed", type=int, default=1234)
    ap.add_argument("--max-minutes", type=float, default=0, help="stop training after this many minutes (0: no limit)")
    ap.add_argument("--tar", type=Path, default=None, help="also write the checkpoint as this .tar.gz (remote runs)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval-only", action="store_true", help="only evaluate the checkpoint in --out (no training)")
    ap.add_argument(
        "--kinds", default=None, help="comma-separated task kinds to train on; repeat a kind to weight it (default: all, uniform)"
    )
    ap.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's weights (same config)")
    return ap.parse_args(argv)


def final_evaluation(arch: Arch, model, tok, args) -> dict:
    """Held-out accuracy with the reference loop, a determinism rerun and a train-split sample."""
    gen_length = EVAL_GEN_LENGTH
    held = generate_examples(args.eval_samples, seed=args.eval_seed, split="heldout")
    res = evaluate(arch, model, tok, held, gen_length, args.eval_batch_size, show=12)
    print(f"held-out (reference loop, 1 token/step, T=0, gen {gen_length}, block 32): {_fmt(res)}", flush=True)
    # determinism: the first 100 again, in a different batch size
    sub = held[:100]
    again = evaluate(arch, model, tok, sub, gen_length, 7)
    same = sum(a == b for a, b in zip(res["canvases"], again["canvases"]))
    print(f"determinism: {same}/{len(sub)} identical canvases on a rerun with batch size 7", flush=True)
    train_res = evaluate(
        arch, model, tok, generate_examples(140, seed=args.eval_seed, split="train"), gen_length, args.eval_batch_size
    )
    print(f"train split sample: {_fmt(train_res)}", flush=True)
    report = {"heldout": {k: v for k, v in res.items() if k != "canvases"}}
    report["heldout"]["eval_seed"] = args.eval_seed
    report["determinism_identical"] = f"{same}/{len(sub)}"
    report["train_sample_accuracy"] = train_res["accuracy"]
    return report


def eval_only(args) -> int:
    """Evaluate an existing checkpoint directory (--out) as the server loads it."""
    from dserve_llada.model import load_llada

    model = (ARCHS[args.arch].load or load_llada)(args.out, dtype=torch.float32, device=args.device)
    report = final_evaluation(ARCHS[args.arch], model, model.tokenizer, args)
    print(json.dumps(report, indent=2))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    arch = ARCHS[args.arch]
    if args.eval_only:
        return eval_only(args)

    out: Path = args.out
    write_tokenizer(out, arch.chat)
    tok = load_tokenizer(out)
    config = arch.config(args, tok)
    model = arch.build(config).to(device)
    if args.init_from is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(args.init_from / "model.safetensors")), strict=True)
        print(f"initialised from {args.init_from}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    mask_id = config["mask_token_id"]
    print(
        f"arch={args.arch} params={n_params:,} ({n_params * 4 / 1e6:.1f} MB fp32) device={device} "
        f"torch={torch.__version__} vocab={config['vocab_size']}",
        flush=True,
    )
    sizes = (
        "d_model",
        "n_layers",
        "n_heads",
        "mlp_hidden_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
    )
    print("config:", json.dumps({k: config[k] for k in sizes if k in config}), flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    batcher = Batcher(tok, args.seed, args.batch_size, args.max_response, chat=arch.chat, kinds=kinds)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    quick = generate_examples(args.quick_eval_samples, seed=args.eval_seed + 1, split="heldout")
    gen_length = EVAL_GEN_LENGTH
    assert MAX_ANSWER_CHARS + 1 <= gen_length

    t_start = time.time()
    running = None
    step = 0
    skipped = 0
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        ids, resp, valid, lengths = batcher.next(device)
        loss = (arch.loss or diffusion_loss)(model, ids, resp, valid, lengths, mask_id, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not torch.isfinite(norm):  # a non-finite step would poison the weights for good
            skipped += 1
            continue
        opt.step()
        if (step + 1) % args.log_every == 0 or step == 0:
            val = loss.item()
            running = val if running is None else 0.9 * running + 0.1 * val
            el = time.time() - t_start
            print(
                f"step {step + 1}/{args.steps} loss {val:.4f} (avg {running:.4f}) lr {lr_at(step, args):.2e} "
                f"{el:.0f}s {el / (step + 1) * 1000:.0f}ms/step {batcher.tokens / el:.0f} tok/s",
                flush=True,
            )
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            res = evaluate(arch, model, tok, quick, gen_length, args.eval_batch_size)
            model.train()
            print(f"  eval@{step + 1}: {_fmt(res)}", flush=True)
        if args.stop_after and step + 1 >= args.stop_after:
            print(f"stopping at step {step + 1}: --stop-after", flush=True)
            break
        if args.max_minutes and time.time() - t_start > args.max_minutes * 60:
            print(f"stopping at step {step + 1}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    train_seconds = time.time() - t_start
    steps_done = step + 1
    print(f"skipped {skipped} non-finite steps", flush=True)
    print(
        f"trained {steps_done} steps, {steps_done * args.batch_size:,} examples, {batcher.tokens:,} tokens "
        f"in {train_seconds:.0f}s",
        flush=True,
    )

    save_checkpoint(model, config, out, out, None)  # before the evaluation, in case it is cut short
    _tar(out, args.tar)

    # Final evaluation: float32 weights (as the server runs them on the CPU), reference loop,
    # one token per step, temperature 0.
    model.eval().float()
    report: dict[str, Any] = {
        "arch": args.arch,
        "params": n_params,
        "steps": steps_done,
        "batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 1),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    if args.eval_samples:
        report.update(final_evaluation(arch, model, tok, args))
    save_checkpoint(model, config, out, out, report)
    _tar(out, args.tar)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
