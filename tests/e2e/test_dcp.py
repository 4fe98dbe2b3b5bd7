"""NeMo-RL DCP checkpoints: a real torch.distributed.checkpoint written from the embedded
model's weights in NeMo-RL's layout, converted by `dserve convert`, loaded by name, and
served by `dserve serve --dcp-path --base-model`, converting once and reusing the cache."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import openai
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from dserve.modeling.loading import weight_files
from dserve_llada import EMBEDDED_MODEL_DIR
from dserve_llada.model import load_llada
from dserve_ops import dcp as dserve_dcp
from e2e.server import ServerProcess

BASE = Path(os.environ.get("DSERVE_TEST_MODEL") or EMBEDDED_MODEL_DIR)
PERTURBED = "model.transformer.blocks.0.q_proj.weight"


def _base_state() -> dict[str, torch.Tensor]:
    state = {}
    for f in weight_files(BASE):
        state.update(load_file(str(f)))
    return state


def _save_nemo_rl_checkpoint(step_dir: Path, state: dict[str, torch.Tensor]) -> None:
    """What NeMo-RL's save_checkpoint writes: dcp.save({"model": <model state dict>}) into
    <step>/policy/weights, the tokenizer next to it in <step>/policy/tokenizer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": state}, checkpoint_id=str(step_dir / "policy" / "weights"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A step directory whose weights differ from the base model's in one tensor."""
    state = _base_state()
    state[PERTURBED] = -state[PERTURBED]  # exact in every dtype
    step = tmp_path_factory.mktemp("nemo-rl") / "step_7"
    _save_nemo_rl_checkpoint(step, state)
    return step, state


def test_checkpoint_has_nemo_rl_key_prefix(trained):
    step, state = trained
    meta = dcp.FileSystemReader(str(step / "policy" / "weights")).read_metadata()
    assert set(meta.state_dict_metadata) == {"model." + k for k in state}


def test_dserve_convert_writes_a_loadable_hf_directory(trained, tmp_path):
    step, state = trained
    out = tmp_path / "hf"
    run = subprocess.run(
        [sys.executable, "-m", "dserve", "convert", "--dcp-path", str(step), "--base-model", str(BASE), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "config.json").read_text()) == json.loads((BASE / "config.json").read_text())
    for f in BASE.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    model = load_llada(out, dtype="float32")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor.float()), name
    base = load_llada(BASE, dtype="float32").state_dict()
    assert not torch.equal(loaded[PERTURBED], base[PERTURBED])
    assert model.tokenizer is not None


def test_sharded_output_and_wrapper_prefixes(tmp_path):
    state = _base_state()
    # torch.compile'd model under NeMo-RL: every FQN carries _orig_mod.
    wrapped = {k.replace("model.", "model._orig_mod.", 1): v for k, v in state.items()}
    _save_nemo_rl_checkpoint(tmp_path / "step_1", wrapped)
    out = dserve_dcp.convert(tmp_path / "step_1", BASE, tmp_path / "hf", max_shard_bytes=64 * 1024)
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    loaded = load_llada(out, dtype="float32").state_dict()
    assert all(torch.equal(loaded[k], v.float()) for k, v in state.items())


def test_a_checkpoint_that_does_not_match_fails_clearly(tmp_path):
    state = _base_state()
    missing = sorted(state)[0]
    del state[missing]
    state["model.transformer.extra_head.weight"] = torch.zeros(2, 2)
    _save_nemo_rl_checkpoint(tmp_path / "step_2", state)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dserve",
            "convert",
            "--dcp-path",
            str(tmp_path / "step_2"),
            "--base-model",
            str(BASE),
            "--output",
            str(tmp_path / "hf"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert missing in run.stderr and "model.model.transformer.extra_head.weight" in run.stderr
    assert not (tmp_path / "hf").exists()
    with pytest.raises(dserve_dcp.ConversionError, match="not a torch.distributed.checkpoint"):
        dserve_dcp.convert(tmp_path, BASE, tmp_path / "hf")


def test_serve_converts_once_then_reuses_the_cache(trained, tmp_path):
    step, _ = trained
    cache = tmp_path / "cache"
    args = ["--dcp-path", str(step), "--base-model", str(BASE), "--dcp-cache-dir", str(cache)]
    srv = ServerProcess(*args)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["step_7"]
        reply = client.chat.completions.create(
            model="step_7", messages=[{"role": "user", "content": "Reverse the word: dog"}], max_tokens=16, temperature=0
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        srv.stop()
    assert "converting dcp checkpoint" in srv.logs() and "dcp checkpoint converted" in srv.logs()
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert entry.name.startswith("step_7-")
    mtime = entry.stat().st_mtime_ns

    again = ServerProcess(*args)
    try:
        assert httpx.get(again.url + "/v1/models").json()["data"][0]["id"] == "step_7"
    finally:
        again.stop()
    assert "dcp conversion cached" in again.logs() and "converting dcp checkpoint" not in again.logs()
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == [entry] and entry.stat().st_mtime_ns == mtime
