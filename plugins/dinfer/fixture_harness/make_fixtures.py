"""Build tests/fixtures/dinfer/expected.json from the published dInfer code (see pub.py, gen.py).

Usage: DINFER_SRC=/path/to/dInfer@fce4e32 python make_fixtures.py [out.json]   (CPU, ~1 minute)
"""
import datetime
import json
import os
import sys

import torch

import gen
import pub

PROMPTS = [(401, 9), (402, 13)]
THR = {"decoder": "threshold"}
V_SMALL = {"cache": "dual", "prefix_look": 4, "after_look": 8, "warmup_steps": 2}
V_DEFAULT = {"cache": "dual", "prefix_look": 16, "after_look": 16, "warmup_steps": 4}

CASES = {
    # algorithm dinfer_blockwise: ThresholdParallelDecoder
    "blockwise_none_b8": dict(THR, manager="blockwise", cache="none", threshold=0.9, gen_length=32, block_length=8),
    "blockwise_none_b16_t07": dict(THR, manager="blockwise", cache="none", threshold=0.7, gen_length=48, block_length=16),
    "blockwise_prefix_b8": dict(THR, manager="blockwise", cache="prefix", threshold=0.9, gen_length=32, block_length=8),
    "blockwise_dual_b16_t08": dict(THR, manager="blockwise", cache="dual", threshold=0.8, gen_length=48, block_length=16),
    "blockwise_dual_freq3": dict(THR, manager="blockwise", cache="dual", cache_update_freq=3, threshold=0.9, gen_length=32, block_length=16),
    "blockwise_prefix_unroll1": dict(THR, manager="blockwise", cache="prefix", maximum_unroll=1, threshold=0.8, gen_length=32, block_length=16),
    "blockwise_vicinity_small": dict(THR, manager="vicinity", **V_SMALL, threshold=0.9, gen_length=48, block_length=16),
    "blockwise_vicinity_default_b8": dict(THR, manager="vicinity", **V_DEFAULT, threshold=0.9, gen_length=48, block_length=8),
    "blockwise_vicinity_freq2": dict(THR, manager="vicinity", **V_SMALL, cache_update_freq=2, threshold=0.9, gen_length=32, block_length=8),
    "blockwise_align_none": dict(THR, manager="blockwise", cache="none", start_block_align=True, threshold=0.9, gen_length=32, block_length=8),
    "blockwise_align_dual": dict(THR, manager="blockwise", cache="dual", start_block_align=True, threshold=0.8, gen_length=40, block_length=16),
    "blockwise_eos226_dual": dict(THR, manager="blockwise", cache="dual", eos_id=226, threshold=0.9, gen_length=48, block_length=8),
    "blockwise_eos226_vicinity": dict(THR, manager="vicinity", **V_SMALL, eos_id=226, threshold=0.9, gen_length=48, block_length=8),
    # dinfer_hierarchy: HierarchyDecoder
    "hierarchy_none_b8": dict(decoder="hierarchy", manager="blockwise", cache="none", threshold=0.9, low_threshold=0.3, gen_length=32, block_length=8),
    "hierarchy_prefix_b16": dict(decoder="hierarchy", manager="blockwise", cache="prefix", threshold=0.8, low_threshold=0.4, gen_length=48, block_length=16),
    "hierarchy_vicinity_small": dict(decoder="hierarchy", manager="vicinity", **V_SMALL, threshold=0.9, low_threshold=0.6, gen_length=48, block_length=16),
    # dinfer_credit: CreditThresholdParallelDecoder
    "credit_none_b8": dict(decoder="credit", manager="blockwise", cache="none", threshold=0.9, gen_length=32, block_length=8),
    "credit_dual_b16_t08": dict(decoder="credit", manager="blockwise", cache="dual", threshold=0.8, gen_length=48, block_length=16),
    "credit_vicinity_default": dict(decoder="credit", manager="vicinity", **V_DEFAULT, threshold=0.9, gen_length=48, block_length=16),
    "credit_none_custom": dict(decoder="credit", manager="blockwise", cache="none", threshold=0.7, credit_alpha=1.5, boost_gamma=0.5, decay_beta=0.5, gen_length=32, block_length=16),
    # dinfer_soft: ThresholdParallelDecoder + IterSmooth (H2Embed on LLaDA's wte)
    "soft_none_b8": dict(THR, manager="soft", cache="none", threshold=0.9, gen_length=32, block_length=8),
    "soft_prefix_b16": dict(THR, manager="soft", cache="prefix", threshold=0.8, gen_length=48, block_length=16),
    "soft_dual_b8": dict(THR, manager="soft", cache="dual", threshold=0.9, gen_length=32, block_length=8),
    "soft_vicinity_small": dict(THR, manager="soft_vicinity", **V_SMALL, threshold=0.9, gen_length=48, block_length=16),
    "soft_vicinity_default_b8": dict(THR, manager="soft_vicinity", **V_DEFAULT, threshold=0.9, gen_length=48, block_length=8),
    "soft_none_custom": dict(THR, manager="soft", cache="none", threshold=0.7, cont_weight=0.5, cont_weight_init=0.3, cont_weight_growth=0.05, threshold_decay=0.05, gen_length=32, block_length=16),
}


def main():
    model32 = pub.load_model(gen.CKPT, torch.float32)
    model64 = pub.load_model(gen.CKPT, torch.float64)
    out_cases = []
    for name, c in CASES.items():
        for seed, n in PROMPTS:
            prompt = gen.prompt_for(seed, n)
            canvas, output, calls = gen.run(model32, c, prompt)
            canvas64, _, calls64 = gen.run(model64, c, prompt)
            gen_part = canvas[n:]
            out_cases.append({
                "case": name,
                "config": c,
                "prompt_seed": seed,
                "prompt": prompt[0].tolist(),
                "canvas": canvas,
                "nfe": len(calls),
                "forwards": [[k["len"], k["replace"], k["use_cache"], k["embeds"], k["masks"]] for k in calls],
                "fp64_rerun_identical": canvas64 == canvas and len(calls64) == len(calls),
                "masks_left": gen_part.count(gen.MASK),
            })
            print(name, seed, len(calls), out_cases[-1]["fp64_rerun_identical"], "eos" if c.get("eos_id", 250) in gen_part else "")
    doc = {
        "provenance": {
            "repo": "inclusionAI/dInfer",
            "commit": "fce4e32804103baa5d55230dff0352da0cdd6ceb",
            "commit_date": "2025-11-15",
            "files": [
                "python/dinfer/decoding/parallel_strategy.py",
                "python/dinfer/decoding/generate_uniform.py",
                "python/dinfer/decoding/utils.py",
                "python/dinfer/model/modeling_llada.py",
                "python/dinfer/model/configuration_llada.py",
                "python/dinfer/model/modeling_fused_olmoe.py (class H2Embed only)",
            ],
            "date": datetime.date.today().isoformat(),
            "environment": f"CPU, float32, torch {torch.__version__}, transformers {__import__('transformers').__version__}",
            "how_made": (
                "The published dInfer decoders (ThresholdParallelDecoder, HierarchyDecoder, "
                "CreditThresholdParallelDecoder) and iteration managers (BlockWiseDiffusionLLM with cache "
                "none/prefix/dual, VicinityCacheDiffusionLLM, IterSmoothDiffusionLLM, "
                "IterSmoothWithVicinityCacheDiffusionLLM) were run unmodified from a scratch checkout, batch 1, "
                "on the tiny random LLaDA checkpoint in tests/fixtures/llada_tiny_random, with dInfer's own "
                "LLaDA model code (modeling_llada.py: its KV-cache / replace_position forward is what the managers "
                "call). Harness-only adjustments: a stub `vllm.distributed` module (tensor-parallel rank 0, world "
                "size 1); package stubs so dinfer/__init__.py (which imports the vLLM/sglang serving stack) is not "
                "executed; the model built on CPU (LLaDAModelLM.__init__ hard-codes init_device='cuda') and "
                "weights loaded with load_state_dict(strict=True); config.use_cache restored from config.json; "
                "torch.compile disabled (TORCH_COMPILE_DISABLE=1, so the compiled threshold rule and SDPA wrapper "
                "run eagerly). dInfer wires IterSmooth only for LLaDA-MoE/LLaDA2 (their model classes carry an "
                "`h2e` attribute); for dense LLaDA the harness attached the published H2Embed class (read verbatim "
                "from modeling_fused_olmoe.py) over LLaDA's input embedding `model.transformer.wte`, and dInfer's "
                "LLaDA forward accepts inputs_embeds. Forward calls were counted by wrapping model.forward and "
                "checked against the managers' own num_forwards. `canvas` is the full token array "
                "(prompt + gen_length) when generate returned, captured before get_generated_tokens strips EOS. "
                "Prompts: torch.randint(0, 250, (1, n), generator=torch.Generator().manual_seed(prompt_seed)). "
                "Cases named *_eos226_* pass eos_id=226 (a token this checkpoint often predicts; its real EOS 250 "
                "is almost never predicted) to exercise early stop. Every case was re-run with the model in "
                "float64; fp64_rerun_identical says whether canvas and NFE came out the same."
            ),
            "config_keys": (
                "decoder: threshold|hierarchy|credit; manager: blockwise (BlockWiseDiffusionLLM), vicinity "
                "(VicinityCacheDiffusionLLM), soft (IterSmoothDiffusionLLM), soft_vicinity "
                "(IterSmoothWithVicinityCacheDiffusionLLM); cache: none|prefix|dual (KVCacheFactory, "
                "cache_update_freq if given); other keys are the published constructor arguments (defaults "
                "where absent: maximum_unroll 4, expected_tpf 8, early_stop True, temperature 0, "
                "credit 0.7/0.2/0.8, soft 0.3/0.15/0.02/0.02, start_block_align False, eos_id 250)."
            ),
            "forwards": "per model call: [input length, replace_position or null, use_cache, inputs_embeds used, masks left in the canvas before the call]",
        },
        "checkpoint": "tests/fixtures/llada_tiny_random (mask id 255, eos 250)",
        "cases": out_cases,
    }
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(gen.CKPT), "..", "dinfer", "expected.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
