"""The LLaDA model against the published modeling code (fixture logits, float32)."""

import pytest
import torch
from safetensors.torch import load_file

from dserve_llada.model import load_llada


@pytest.mark.parametrize("variant", ["single", "sharded"])
def test_logits_match_published_model(tiny_random_dir, published, variant):
    path = tiny_random_dir if variant == "single" else tiny_random_dir / "sharded"
    model = load_llada(path, dtype="float32", device="cpu")
    expected = load_file(str(tiny_random_dir / "expected_logits.safetensors"))
    for case in published["logits"]["cases"]:
        ids = torch.tensor(case["input_ids"]).reshape(1, -1)
        got = model(ids)[0]
        want = expected[case["name"]]
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_parameter_names_are_the_published_ones(tiny_random_dir, published):
    model = load_llada(tiny_random_dir, dtype="float32")
    assert set(model.state_dict()) == set(published["checkpoint"]["parameters"])


def test_right_padding_with_key_mask_is_exact(tiny_random_dir):
    model = load_llada(tiny_random_dir, dtype="float32")
    ids = torch.randint(0, 250, (1, 11), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([ids, torch.full((1, 5), 255)], dim=1)
    keys = torch.arange(16)[None] < 11
    torch.testing.assert_close(model(padded, attention_mask=keys)[:, :11], model(ids), atol=1e-5, rtol=1e-5)


def test_cache_forward_equals_full_forward(tiny_random_dir):
    """A block forwarded over a cache written by the full canvas equals the full forward."""
    model = load_llada(tiny_random_dir, dtype="float32")
    ids = torch.randint(0, 250, (2, 20), generator=torch.Generator().manual_seed(1))
    full = model(ids)
    cache = model.new_kv_cache(rows=2, capacity=20)
    model(ids, kv_cache=cache)
    block = model(ids[:, 8:12], torch.arange(8, 12).expand(2, 4), kv_cache=cache)
    torch.testing.assert_close(block, full[:, 8:12], atol=1e-5, rtol=1e-5)


def test_bfloat16_load_and_meta_free(tiny_random_dir):
    model = load_llada(tiny_random_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert not any(p.is_meta for p in model.parameters())
    assert model(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16


def test_mismatched_checkpoint_is_rejected(tmp_path, tiny_random_dir):
    import json
    import shutil

    shutil.copy(tiny_random_dir / "model.safetensors", tmp_path)
    cfg = json.loads((tiny_random_dir / "config.json").read_text())
    cfg["n_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing"):
        load_llada(tmp_path)


def test_dummy_load_format_builds_random_weights_from_the_config(tiny_random_dir):
    model = load_llada(tiny_random_dir, dtype="float32", load_format="dummy")
    real = load_llada(tiny_random_dir, dtype="float32")
    assert set(model.state_dict()) == set(real.state_dict())
    assert not torch.equal(model.model.transformer.wte.weight, real.model.transformer.wte.weight)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 256)


def test_fused_projections_share_memory_and_keep_the_logits(tiny_random_dir):
    """Loaders fuse q/k/v and gate/up (one GEMM each); the published parameters stay, as views
    of the fused weights, and the logits equal the unfused model's."""
    fused = load_llada(tiny_random_dir, dtype="float32")
    block = fused.model.transformer.blocks[0]
    assert block.qkv_weight is not None and block.gate_up_weight is not None
    assert block.q_proj.weight.data_ptr() == block.qkv_weight.data_ptr()
    assert block.up_proj.weight.data_ptr() == block.gate_up_weight[block.ff_proj.weight.shape[0] :].data_ptr()
    unfused = load_llada(tiny_random_dir, dtype="float32")
    for b in unfused.model.transformer.blocks:
        b.qkv_weight = b.gate_up_weight = None
    ids = torch.randint(0, 250, (2, 24), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fused(ids), unfused(ids), atol=1e-5, rtol=1e-5)
