"""The generation backend registry: hf by default, vllm lazily, plug-ins by path, did-you-mean for typos."""

import sys

import pytest

from polm.errors import PolmError
from polm.rollout import GENERATORS, HFGenerator, build_generator


def test_registered_backends():
    assert GENERATORS.names() == ["hf", "vllm"]


def test_hf_backend_is_the_model_itself_with_its_batch_size(tiny_llama, tiny_tokenizer):
    gen = build_generator("hf", tiny_llama, tiny_tokenizer, prompts_per_batch=3)
    assert isinstance(gen, HFGenerator) and gen.model is tiny_llama and gen.prompts_per_batch == 3
    assert build_generator("hf", tiny_llama, tiny_tokenizer).prompts_per_batch == 16


def test_unknown_backend_suggests_the_closest(tiny_llama, tiny_tokenizer):
    with pytest.raises(PolmError, match="unknown generation backend 'hff'.*Did you mean 'hf'"):
        build_generator("hff", tiny_llama, tiny_tokenizer)
    with pytest.raises(PolmError, match="Did you mean 'vllm'"):
        build_generator("vlm", tiny_llama, tiny_tokenizer)


def test_vllm_without_the_package_says_how_to_install(tiny_llama, tiny_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)     # as on a machine without vLLM
    with pytest.raises(PolmError, match="pip install"):
        build_generator("vllm", tiny_llama, tiny_tokenizer, model_path="x")


def plugin_factory(model, tokenizer, *, model_path=None, prompts_per_batch=16):
    return ("plugin", model_path, prompts_per_batch)


def test_a_plugin_factory_by_module_path(tiny_llama, tiny_tokenizer):
    got = build_generator(f"{__name__}:plugin_factory", tiny_llama, tiny_tokenizer, model_path="m", prompts_per_batch=2)
    assert got == ("plugin", "m", 2)
