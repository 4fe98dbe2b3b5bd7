"""Harness: import the published dInfer modules (unmodified) on CPU without vLLM/GPU.

Only harness-level adjustments: a vllm shim (TP helpers, world size 1), package stubs so that
dinfer/__init__.py (which imports the vLLM/sglang serving stack) is not executed, the LLaDA model
constructed on CPU (LLaDAModelLM.__init__ hard-codes init_device='cuda'), torch.compile disabled
by TORCH_COMPILE_DISABLE=1, weights loaded with load_state_dict(strict=True).
"""
import ast
import json
import os
import sys
import types
from typing import Optional

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
# a checkout of inclusionAI/dInfer at fce4e32 (its code is read from there, never copied here)
SRC = os.path.join(os.environ.get("DINFER_SRC", os.path.join(HERE, "dInfer")), "python", "dinfer")
sys.path.insert(0, os.path.join(HERE, "shims"))

import torch
from torch import nn
from safetensors.torch import load_file

for name, sub in (("dinfer", ""), ("dinfer.decoding", "decoding"), ("dinfer.model", "model")):
    m = types.ModuleType(name)
    m.__path__ = [os.path.join(SRC, sub)]
    sys.modules[name] = m

from dinfer.decoding import parallel_strategy as ps  # noqa: E402
from dinfer.decoding import generate_uniform as gu  # noqa: E402
from dinfer.decoding import utils as du  # noqa: E402
from dinfer.model import configuration_llada as cl  # noqa: E402
from dinfer.model import modeling_llada as ml  # noqa: E402


def load_h2embed():
    """The published H2Embed class, taken verbatim from modeling_fused_olmoe.py (importing that
    module needs vLLM's fused MoE kernels)."""
    path = os.path.join(SRC, "model", "modeling_fused_olmoe.py")
    src = open(path).read()
    tree = ast.parse(src)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "H2Embed")
    code = ast.get_source_segment(src, node)
    ns = {"torch": torch, "nn": nn, "Optional": Optional,
          "get_tensor_model_parallel_rank": lambda: 0, "get_tensor_model_parallel_world_size": lambda: 1}
    exec(compile(code, path, "exec"), ns)
    return ns["H2Embed"]


H2Embed = load_h2embed()


def load_model(ckpt_dir, dtype=torch.float32):
    raw = json.load(open(os.path.join(ckpt_dir, "config.json")))
    config = cl.LLaDAConfig(**raw)
    config.use_cache = raw.get("use_cache", False)
    mc = ml.create_model_config_from_pretrained_config(config)
    mc.init_device = "cpu"
    mc.flash_attention = False
    inner = ml.LLaDAModel(mc, init_params=False)
    model = ml.LLaDAModelLM(config, model=inner)
    sd = load_file(os.path.join(ckpt_dir, "model.safetensors"))
    model.load_state_dict(sd, strict=True)
    model = model.to(dtype).eval()
    return model
