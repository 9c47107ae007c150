"""The composed VLM: vision tower -> projector -> image tokens spliced into any polm causal LM.

Text positions hold token ids; each image occupies `tokens_per_image` positions whose input id is
IMAGE_TOKEN_ID (-200, LLaVA's IMAGE_TOKEN_INDEX: no vocabulary entry, so any LM works unchanged).
`embed` looks the text ids up in the LM's embedding table and writes the projected image tokens
over the image positions, in order (row-major over batch and position), giving `inputs_embeds`.

Saved layout (`save_vlm`, read back by `load_vlm`; safetensors only):
    polm_vlm.json          format, tower {name, options}, projector {name, options, in_dim, out_dim},
                           tokens_per_image, image_token_id
    tower.safetensors      the tower's weights        projector.safetensors   the projector's weights
    lm/                    the LM (Hugging Face model, or a PEFT adapter over its base) + tokenizer;
                           with `lm_name` set (a frozen, unchanged LM), only the tokenizer
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polm.errors import PolmError
from polm.io import atomic_dir
from polm.vlm.projectors import build_projector
from polm.vlm.towers import VisionTower, build_tower, set_trainable

IMAGE_TOKEN_ID = -200
VLM_CONFIG_FILE = "polm_vlm.json"
FORMAT = "polm-vlm/1"


@dataclass
class VLMSpec:
    """What rebuilds a composed VLM's vision side (saved as polm_vlm.json)."""

    tower: str
    tower_options: dict[str, Any] = field(default_factory=dict)
    projector: str = "mlp2x_gelu"
    projector_options: dict[str, Any] = field(default_factory=dict)
    in_dim: int = 0
    out_dim: int = 0
    tokens_per_image: int = 0
    image_token_id: int = IMAGE_TOKEN_ID
    lm_name: str | None = None    # the LM by reference (embedded name, directory, hub id) when saved without weights


def lm_width(lm: nn.Module) -> int:
    """The LM's embedding width (hidden size)."""
    return int(lm.get_input_embeddings().weight.shape[1])


class ComposedVLM(nn.Module):
    def __init__(self, tower: VisionTower, projector: nn.Module, lm: nn.Module, spec: VLMSpec):
        super().__init__()
        self.tower, self.projector, self.lm, self.spec = tower, projector, lm, spec
        width = lm_width(lm)
        if spec.out_dim != width:
            raise PolmError(f"the projector writes {spec.out_dim}-d image tokens but the LM's embeddings are "
                            f"{width}-d", where="model.projector",
                            fix=f"Build the projector for this LM (leave model.projector.out_dim unset, or set it "
                                f"to {width}), or load the LM the projector was trained with.")

    def train(self, mode: bool = True) -> ComposedVLM:
        super().train(mode)
        if getattr(self.tower, "frozen", False):
            self.tower.eval()   # a frozen tower's batch norm keeps its ImageNet statistics
        return self

    def image_tokens(self, pixel_values: torch.Tensor | None = None,
                     image_features: torch.Tensor | None = None) -> torch.Tensor:
        """[n_images, M, H] projected image tokens from pixels [n,3,S,S] or tower features [n,N,D]."""
        if image_features is None:
            if pixel_values is None:
                raise ValueError("image_tokens needs pixel_values or image_features")
            image_features = self.tower(pixel_values)
        return self.projector(image_features.to(next(self.projector.parameters()).dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_features: torch.Tensor | None = None) -> torch.Tensor:
        """inputs_embeds [B,T,H]: text embeddings with the image tokens written over IMAGE_TOKEN_ID positions."""
        is_image = input_ids == self.spec.image_token_id
        text = self.lm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        n_positions = int(is_image.sum())
        has_images = pixel_values is not None or image_features is not None
        if not has_images:
            if n_positions:
                raise PolmError(f"the batch has {n_positions} image-token positions but no images")
            return text
        tokens = self.image_tokens(pixel_values, image_features)
        if tokens.shape[0] * tokens.shape[1] != n_positions:
            raise PolmError(f"image features and image tokens do not match: the text has {n_positions} image "
                            f"positions, the {tokens.shape[0]} images give {tokens.shape[0]} x {tokens.shape[1]} "
                            "tokens", fix="Build batches with polm.vlm.collate (one <image> part per image).")
        return text.masked_scatter(is_image.unsqueeze(-1), tokens.to(text.dtype))

    def lm_inputs(self, batch: dict) -> dict:
        """The LM's keyword inputs for a collated batch: inputs_embeds + attention_mask / position_ids."""
        inputs = {"inputs_embeds": self.embed(batch["input_ids"], batch.get("pixel_values"),
                                              batch.get("image_features"))}
        for key in ("attention_mask", "position_ids"):
            if key in batch:
                inputs[key] = batch[key]
        return inputs

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None, **kwargs):
        inputs = self.lm_inputs({"input_ids": input_ids, "pixel_values": pixel_values,
                                 "image_features": image_features, **kwargs})
        extra = {k: v for k, v in kwargs.items() if k not in ("attention_mask", "position_ids")}
        return self.lm(**inputs, **extra)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None,
                 max_new_tokens: int = 16, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None) -> torch.Tensor:
        """Greedy continuation of LEFT-padded prompts: new token ids [B, ≤max_new_tokens]."""
        embeds = self.embed(input_ids, pixel_values, image_features)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def compose(lm: nn.Module, *, tower: str, tower_options: dict | None = None, tower_trainable: bool = False,
            projector: str = "mlp2x_gelu", projector_options: dict | None = None,
            projector_out_dim: int | None = None) -> ComposedVLM:
    """A VLM from a loaded LM and registry names; the projector maps the tower's width to the LM's
    (or to `projector_out_dim`, which must then equal the LM's width)."""
    vision = build_tower(tower, tower_options, trainable=tower_trainable)
    out_dim = projector_out_dim or lm_width(lm)
    proj = build_projector(projector, vision.out_dim, out_dim, projector_options)
    proj.to(next(lm.parameters()).device)
    vision.to(next(lm.parameters()).device)
    spec = VLMSpec(tower=tower, tower_options=vision.options(), projector=projector,
                   projector_options=dict(projector_options or {}), in_dim=vision.out_dim, out_dim=out_dim,
                   tokens_per_image=proj.num_tokens(vision.num_tokens))
    return ComposedVLM(vision, proj, lm, spec)


def save_vlm(model: ComposedVLM, tokenizer, out: str | Path, *, card: str | None = None,
             overwrite: bool = True, lm_name: str | None = None) -> Path:
    """Write the layout in the module docstring to `out`, all or nothing. `lm_name`: record the (frozen,
    unchanged) LM by this reference instead of writing its weights."""
    from safetensors.torch import save_file

    model.spec.lm_name = lm_name
    spec = {"format": FORMAT, **asdict(model.spec)}
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        (tmp / VLM_CONFIG_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        for name, module in (("tower", model.tower), ("projector", model.projector)):
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                      str(tmp / f"{name}.safetensors"))
        if lm_name is None:
            model.lm.save_pretrained(tmp / "lm", safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "lm")
        if card:
            (tmp / "README.md").write_text(card)
    return Path(out)


def is_vlm_dir(path: str | Path) -> bool:
    return (Path(path) / VLM_CONFIG_FILE).is_file()


def read_spec(path: str | Path) -> VLMSpec:
    cfg_path = Path(path) / VLM_CONFIG_FILE
    if not cfg_path.is_file():
        raise PolmError(f"'{path}' is not a polm VLM directory (no {VLM_CONFIG_FILE})",
                        fix="Point to the final/ directory a `polm vlm` run wrote.")
    data = json.loads(cfg_path.read_text())
    if data.pop("format", None) != FORMAT:
        raise PolmError(f"'{cfg_path}' is not in the {FORMAT} format", where=str(cfg_path))
    return VLMSpec(**data)


def load_vlm(path: str | Path, *, lm_config=None, trainable: bool = False,
             lm: nn.Module | None = None) -> tuple[ComposedVLM, Any]:
    """(ComposedVLM, tokenizer) from a `save_vlm` directory. `lm_config` (a polm ModelConfig) sets
    dtype/device for the LM; `lm` replaces the saved LM (it must have the saved width)."""
    from safetensors.torch import load_file

    from polm.models import ModelConfig, load_model, load_tokenizer

    path = Path(path)
    spec = read_spec(path)
    tokenizer = load_tokenizer(str(path / "lm"))
    if lm is None:
        base = lm_config or ModelConfig()
        lm = load_model(ModelConfig(**{**asdict(base), "name": spec.lm_name or str(path / "lm")}), trainable=trainable)
    tower = build_tower(spec.tower, spec.tower_options)
    tower.load_state_dict(load_file(str(path / "tower.safetensors")))
    set_trainable(tower, False)
    projector = build_projector(spec.projector, spec.in_dim, spec.out_dim, spec.projector_options)
    projector.load_state_dict(load_file(str(path / "projector.safetensors")))
    device = next(lm.parameters()).device
    model = ComposedVLM(tower.to(device), projector.to(device), lm, spec)
    return model, tokenizer
