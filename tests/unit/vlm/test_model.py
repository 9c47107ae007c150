"""The composed VLM: image tokens spliced where the placeholders are, width mismatch, save and reload."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_llama
from vlm_helpers import synthetic_images, tiny_vlm

from polm.errors import PolmError
from polm.vlm.model import IMAGE_TOKEN_ID, compose, load_vlm, save_vlm


def pixels(vlm, n, seed=0):
    return torch.stack([vlm.tower.preprocess(img) for img in synthetic_images(n, seed)])


def test_embed_writes_image_tokens_over_placeholders_only(vlm):
    m = vlm.spec.tokens_per_image
    assert m == 16
    ids = torch.tensor([[5, 6, *[IMAGE_TOKEN_ID] * m, 7], [*[IMAGE_TOKEN_ID] * m, 8, 9, 10]])
    px = pixels(vlm, 2)
    with torch.no_grad():
        embeds = vlm.embed(ids, pixel_values=px)
        image = vlm.image_tokens(px)
        table = vlm.lm.get_input_embeddings().weight
    assert embeds.shape == (2, m + 3, 32)
    torch.testing.assert_close(embeds[0, 2:2 + m], image[0])
    torch.testing.assert_close(embeds[1, :m], image[1])
    torch.testing.assert_close(embeds[0, [0, 1, m + 2]], table[[5, 6, 7]])
    torch.testing.assert_close(embeds[1, m:], table[[8, 9, 10]])


def test_cached_features_give_the_same_embeddings_as_pixels(vlm):
    ids = torch.tensor([[5, *[IMAGE_TOKEN_ID] * 16]])
    px = pixels(vlm, 1)
    with torch.no_grad():
        torch.testing.assert_close(vlm.embed(ids, pixel_values=px), vlm.embed(ids, image_features=vlm.tower(px)))


def test_image_token_count_mismatch_is_one_clear_error(vlm):
    ids = torch.tensor([[5, *[IMAGE_TOKEN_ID] * 15]])
    with pytest.raises(PolmError, match="image features and image tokens do not match: the text has 15"):
        vlm.embed(ids, pixel_values=pixels(vlm, 1))
    with pytest.raises(PolmError, match="15 image-token positions but no images"):
        vlm.embed(ids)


def test_projector_lm_width_mismatch_is_one_clear_error(tiny_tokenizer):
    lm = build_tiny_llama(len(tiny_tokenizer))
    with pytest.raises(PolmError, match="writes 48-d image tokens but the LM's embeddings are 32-d"):
        compose(lm, tower="tiny-conv", projector_out_dim=48)


def test_loading_a_projector_with_an_lm_of_another_width_is_refused(vlm, tiny_tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    save_vlm(vlm, tiny_tokenizer, tmp_path / "vlm")
    wide = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(PolmError, match="writes 32-d image tokens but the LM's embeddings are 64-d"):
        load_vlm(tmp_path / "vlm", lm=wide)


def greedy(vlm, n_images=2):
    ids = torch.tensor([[5, 6, *[IMAGE_TOKEN_ID] * vlm.spec.tokens_per_image, 7]] * n_images)
    return vlm.eval().generate(ids, pixel_values=pixels(vlm, n_images), max_new_tokens=6, pad_token_id=0).tolist()


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "pixel_shuffle", "resampler"])
def test_save_and_reload_gives_the_same_greedy_tokens(projector, tiny_tokenizer, tmp_path):
    vlm = tiny_vlm(tiny_tokenizer, projector)
    before = greedy(vlm)
    assert before[0] != before[1]   # the answer depends on the image
    out = save_vlm(vlm, tiny_tokenizer, tmp_path / "vlm")
    spec = json.loads((out / "polm_vlm.json").read_text())
    assert spec["format"] == "polm-vlm/1" and spec["projector"] == projector and spec["out_dim"] == 32
    assert not list(out.rglob("*.bin")) and (out / "lm" / "model.safetensors").is_file()
    reloaded, tok = load_vlm(out)
    assert greedy(reloaded) == before and len(tok) == len(tiny_tokenizer)


def test_lora_lm_saves_as_adapter_and_reloads_the_same(tiny_tokenizer, tmp_path):
    from polm.models import LoraConfig, attach_adapter

    base_dir = tmp_path / "base"
    build_tiny_llama(len(tiny_tokenizer), initializer_range=0.5).save_pretrained(base_dir)
    tiny_tokenizer.save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    lm = attach_adapter(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_()
    vlm = compose(lm, tower="tiny-conv", tower_options={"image_size": 16, "patch": 4})
    before = greedy(vlm)
    out = save_vlm(vlm, tiny_tokenizer, tmp_path / "vlm")
    assert (out / "lm" / "adapter_config.json").is_file()
    reloaded, _ = load_vlm(out)
    assert greedy(reloaded) == before
