"""Lazy sources: sharded checkpoints read tensor by tensor; adapters folded in exactly as PEFT merges them."""

from __future__ import annotations

import pytest
import torch
from merge_models import merged_with_peft, save_adapter, save_llama

from polm.errors import PolmError
from polm.merge.sources import AdapterApplied, Checkpoint


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_tokenizer):
    return save_llama(tmp_path_factory.mktemp("base"), tiny_tokenizer, seed=0)


def test_sharded_checkpoint_reads_every_tensor(tmp_path, tiny_tokenizer):
    from conftest import build_tiny_llama

    model = build_tiny_llama(len(tiny_tokenizer), seed=3)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ckpt = Checkpoint(tmp_path, "m")
    assert len(ckpt.files) > 1
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}   # tied to embeddings
    assert set(ckpt.meta) == set(state)
    for name, tensor in state.items():
        assert ckpt.meta[name].shape == tuple(tensor.shape) and ckpt.meta[name].dtype == tensor.dtype
        assert torch.equal(ckpt.read(name), tensor)


@pytest.mark.parametrize("lora", [
    {"use_rslora": True, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3.0}},
    {"target_modules": ["q_proj", "down_proj", "embed_tokens"]},
    {"target_modules": ["q_proj", "down_proj"], "use_dora": True},
], ids=["rslora-patterns", "embedding", "dora"])
def test_adapter_applied_equals_peft_merge_and_unload(tmp_path, base_dir, lora):
    adapter = save_adapter(tmp_path / "adapter", base_dir, seed=1, **lora)
    expected = merged_with_peft(base_dir, adapter)
    source = AdapterApplied(Checkpoint(base_dir, "base"), adapter, "adapter")
    base = Checkpoint(base_dir, "base")
    changed = 0
    for name in source.meta:
        got = source.read(name)
        torch.testing.assert_close(got, expected[name], rtol=1e-5, atol=1e-6)
        changed += not torch.equal(got, base.read(name))
    assert changed == len(source.patches) > 0       # every patched tensor moved, nothing else did


def test_modules_to_save_copies_replace_the_base_tensor(tmp_path, tiny_tokenizer):
    untied = save_llama(tmp_path / "untied", tiny_tokenizer, seed=0, tie_word_embeddings=False)
    adapter = save_adapter(tmp_path / "adapter", untied, seed=2, modules_to_save=["lm_head"])
    with torch.no_grad():     # make the saved copy differ from the base, as training would
        from safetensors.torch import load_file, save_file

        weights = load_file(adapter / "adapter_model.safetensors")
        weights["base_model.model.lm_head.weight"] += 1.0
        save_file(weights, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    source = AdapterApplied(Checkpoint(untied, "base"), adapter, "adapter")
    torch.testing.assert_close(source.read("lm_head.weight"), merged_with_peft(untied, adapter)["lm_head.weight"])


def test_adapter_on_a_tied_lm_head_is_refused(tmp_path, base_dir):
    adapter = save_adapter(tmp_path / "adapter", base_dir, modules_to_save=["lm_head"])
    with pytest.raises(PolmError, match="saves a trained copy of 'lm_head.weight', which the base model does not store"):
        AdapterApplied(Checkpoint(base_dir, "base"), adapter, "models[0]")


def test_adapter_from_another_base_names_the_tensor(tmp_path, base_dir, tiny_tokenizer):
    other = save_llama(tmp_path / "wide", tiny_tokenizer, intermediate_size=48)
    adapter = save_adapter(tmp_path / "adapter", other, target_modules=["down_proj"])
    with pytest.raises(PolmError, match=r"models\[0\]: the adapter's update for "
                                        r"'model.layers.0.mlp.down_proj.weight' has shape \[32, 48\] but the base"):
        AdapterApplied(Checkpoint(base_dir, "base"), adapter, "models[0]")


def test_unparsable_and_pickle_weights(tmp_path, base_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(base_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])           # truncated download
    with pytest.raises(PolmError, match="does not parse as safetensors"):
        Checkpoint(broken, "models[0]")
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(PolmError, match="does not parse as safetensors"):
        Checkpoint(broken, "models[0]")
    (broken / "model.safetensors").rename(broken / "pytorch_model.bin")
    with pytest.raises(PolmError, match="only pickle weights"):
        Checkpoint(broken, "models[0]")
