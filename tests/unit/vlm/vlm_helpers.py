"""Tiny VLM test helpers: the shared tiny Llama (32-d, wide init so answers depend on the image) with the
tiny conv tower (16x16 images -> 16 tokens of 24-d), synthetic images, and a tiny LLaVA checkpoint."""

from __future__ import annotations

import numpy as np
from conftest import build_tiny_llama


def tiny_vlm(tokenizer, projector: str = "mlp2x_gelu", seed: int = 0, **options):
    from polm.vlm.model import compose

    lm = build_tiny_llama(len(tokenizer), seed, initializer_range=0.5)
    return compose(lm, tower="tiny-conv", tower_options={"image_size": 16, "patch": 4, "out_dim": 24},
                   projector=projector, projector_options=options)


def synthetic_images(n: int, seed: int = 0, size: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size), dtype=np.uint8) for _ in range(n)]


def two_class_image(kind: int, seed: int) -> list:
    """16x16 grey levels as nested lists (a JSONL `image`): class 0 bright on top, class 1 bright at the
    bottom, plus noise."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(16, 16))
    img[:8] += 190 if kind == 0 else 0
    img[8:] += 190 if kind == 1 else 0
    return img.tolist()


LLAVA_CHAT = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "{{ '<image>' }}{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_llava(path, seed: int = 0):
    """A random-init LLaVA (CLIP vision 16x16 / patch 4 -> 16 image tokens, tiny Llama text) + its processor,
    saved to `path` as any transformers VLM checkpoint."""
    import torch
    from conftest import build_tiny_tokenizer
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=4, projection_dim=16)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                       initializer_range=0.5)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    images = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=4,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT,
                               num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
