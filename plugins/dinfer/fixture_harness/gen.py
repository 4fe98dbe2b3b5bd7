"""Run the published dInfer decoders/managers on the tiny random LLaDA checkpoint (CPU)."""
import json
import os
import sys

import torch

import pub

CKPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests", "fixtures", "llada_tiny_random")
MASK, EOS = 255, 250


def prompt_for(seed, n):
    return torch.randint(0, 250, (1, n), generator=torch.Generator().manual_seed(seed))


class Recorder:
    def __init__(self, model):
        self.model = model
        self.calls = []
        self.orig = model.forward
        rec = self

        def counted(*args, **kw):
            ids = kw.get("input_ids", args[0] if args else None)
            emb = kw.get("inputs_embeds")
            T = (ids if ids is not None else emb).shape[1]
            rp = kw.get("replace_position")
            rec.calls.append({
                "len": int(T),
                "embeds": emb is not None,
                "cache": kw.get("past_key_values") is not None,
                "use_cache": bool(kw.get("use_cache", False)),
                "replace": None if rp is None else [int(rp[0]), int(rp[1])],
                "masks": int((_last_canvas["arr"].data == MASK).sum()),
            })
            return rec.orig(*args, **kw)

        model.forward = counted


_last_canvas = {}
_orig_init = pub.du.TokenArray.__init__


def _init(self, *a, **k):
    _orig_init(self, *a, **k)
    _last_canvas["arr"] = self


pub.du.TokenArray.__init__ = _init
_orig_ggt = pub.du.TokenArray.get_generated_tokens


def _ggt(self):
    _last_canvas["x"] = self.data.clone()
    return _orig_ggt(self)


pub.du.TokenArray.get_generated_tokens = _ggt


def make_decoder(c):
    kind = c["decoder"]
    T = c.get("temperature", 0.0)
    if kind == "threshold":
        return pub.ps.ThresholdParallelDecoder(temperature=T, threshold=c["threshold"], mask_id=MASK, eos_id=c.get("eos_id", EOS))
    if kind == "credit":
        return pub.ps.CreditThresholdParallelDecoder(
            temperature=T, threshold=c["threshold"], mask_id=MASK, eos_id=c.get("eos_id", EOS),
            credit_alpha=c.get("credit_alpha", 0.7), boost_gamma=c.get("boost_gamma", 0.2),
            decay_beta=c.get("decay_beta", 0.8))
    if kind == "hierarchy":
        return pub.ps.HierarchyDecoder(temperature=T, threshold=c["threshold"], low_threshold=c["low_threshold"],
                                       mask_id=MASK, eos_id=c.get("eos_id", EOS))
    raise ValueError(kind)


def make_dllm(model, c):
    dec = make_decoder(c)
    it = pub.du.BlockIteratorFactory(start_block_align=c.get("start_block_align", False))
    cache = c.get("cache", "none")
    cf = None if cache == "none" else pub.du.KVCacheFactory(cache, cache_update_freq=c.get("cache_update_freq"))
    mgr = c["manager"]
    unroll = dict(maximum_unroll=c.get("maximum_unroll", 4), expected_tpf=c.get("expected_tpf", 8))
    es = c.get("early_stop", True)
    if mgr == "blockwise":
        return pub.gu.BlockWiseDiffusionLLM(model, dec, it, early_stop=es, cache_factory=cf, **unroll)
    if mgr == "vicinity":
        return pub.gu.VicinityCacheDiffusionLLM(model, dec, it, cf, prefix_look=c["prefix_look"], after_look=c["after_look"],
                                                warmup_steps=c["warmup_steps"], early_stop=es, **unroll)
    soft = dict(cont_weight=c.get("cont_weight", 0.3), cont_weight_init=c.get("cont_weight_init", 0.15),
                cont_weight_growth=c.get("cont_weight_growth", 0.02), threshold_decay=c.get("threshold_decay", 0.02))
    if mgr == "soft":
        return pub.gu.IterSmoothDiffusionLLM(model, dec, it, early_stop=es, cache_factory=cf, **unroll, **soft)
    if mgr == "soft_vicinity":
        return pub.gu.IterSmoothWithVicinityCacheDiffusionLLM(
            model, dec, it, cf, prefix_look=c["prefix_look"], after_look=c["after_look"],
            warmup_steps=c["warmup_steps"], early_stop=es, **unroll, **soft)
    raise ValueError(mgr)


def run(model, c, prompt):
    if c["manager"].startswith("soft"):
        model.h2e = pub.H2Embed(model.model.transformer.wte, tau=1.0)
    rec = Recorder(model)
    dllm = make_dllm(model, c)
    try:
        with torch.no_grad():
            out = dllm.generate(prompt.clone(), gen_length=c["gen_length"], block_length=c["block_length"])
    finally:
        model.forward = rec.orig
    canvas = _last_canvas["x"]
    assert dllm.num_forwards == len(rec.calls), (dllm.num_forwards, len(rec.calls))
    return canvas[0].tolist(), out[0].tolist(), rec.calls


if __name__ == "__main__":
    model = pub.load_model(CKPT)
    c = json.loads(sys.argv[1])
    p = prompt_for(c.get("prompt_seed", 401), c.get("prompt_len", 9))
    canvas, out, calls = run(model, c, p)
    P = p.shape[1]
    print("prompt", p[0].tolist())
    print("gen", canvas[P:])
    print("nfe", len(calls))
    for k in calls:
        print(" ", k)
