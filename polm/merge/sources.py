"""Lazy tensor sources for merging: safetensors checkpoints, and PEFT LoRA/DoRA adapters folded in per tensor.

Nothing is loaded up front except file headers (names, shapes, dtypes). `read(name)` opens the file,
copies out one tensor and closes it again, so the mapped pages of the file do not stay resident and
peak memory follows the tensor being merged, not the model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from polm.errors import PolmError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class TensorSource(Protocol):
    label: str
    meta: dict[str, TensorMeta]

    def read(self, name: str) -> torch.Tensor: ...


def read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PolmError(f"'{path}' is not valid JSON ({err})", where=label,
                        fix="Restore the file from the original model.") from None
    if not isinstance(data, dict):
        raise PolmError(f"'{path}' must hold a JSON object", where=label)
    return data


def open_safetensors(file: Path, label: str):
    """`safe_open(file)` (a context manager), or a PolmError naming the file that does not parse."""
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt")
    except Exception as err:  # safetensors raises its own error type for every kind of bad header
        raise PolmError(f"weights file '{file}' does not parse as safetensors ({err})", where=label,
                        fix="The file is truncated or not safetensors: re-save or re-copy the model.") from None


def _safetensors_header(file: Path) -> tuple[dict[str, Any], int]:
    """The safetensors header of `file` (tensor name -> dtype, shape, data_offsets) and where its data
    begins: an 8-byte little-endian header length, then the JSON header, then the tensor bytes."""
    with open(file, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def weight_files(path: Path, label: str) -> list[Path]:
    """The safetensors files of a model directory (sharded via its index, or all *.safetensors)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, label).get("weight_map", {})
        files = sorted({path / f for f in weight_map.values()})
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise PolmError(f"shard '{missing[0].name}' named in {index.name} is missing", where=label)
        return files
    files = sorted(p for p in path.glob("*.safetensors") if p.name != "adapter_model.safetensors")
    if files:
        return files
    if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
        raise PolmError(f"'{path}' holds only pickle weights (.bin/.pt); polm merges safetensors only", where=label,
                        fix="Re-save it with model.save_pretrained(dir) (safetensors is the default).")
    raise PolmError(f"'{path}' holds no safetensors weights", where=label,
                    fix="Point to a Hugging Face model directory with model.safetensors.")


class Checkpoint:
    """The safetensors weights of a model directory, read one tensor at a time."""

    def __init__(self, path: Path, label: str):
        self.path, self.label = path, label
        self.files = weight_files(path, label)
        self.config = read_json(path / "config.json", label) if (path / "config.json").is_file() else None
        self.meta: dict[str, TensorMeta] = {}
        self._where: dict[str, tuple[Path, int, int]] = {}      # name -> (file, byte offset, byte length)
        for file in self.files:
            with open_safetensors(file, label) as handle:       # validates the file as safetensors
                names = list(handle.keys())
            header, data_start = _safetensors_header(file)
            for name in names:
                entry = header[name]
                dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
                if dtype is None:
                    raise PolmError(f"tensor '{name}' in '{file}' has unsupported dtype {entry['dtype']}",
                                    where=label)
                self.meta[name] = TensorMeta(tuple(entry["shape"]), dtype)
                begin, end = entry["data_offsets"]
                self._where[name] = (file, data_start + begin, end - begin)

    def read(self, name: str) -> torch.Tensor:
        """One tensor, read with a plain positioned read into fresh memory: no header parse and no memory
        map per call, so nothing of the input stays resident once the merge drops the tensor."""
        file, offset, length = self._where[name]
        meta = self.meta[name]
        buffer = bytearray(length)
        with open(file, "rb") as f:
            f.seek(offset)
            if f.readinto(buffer) != length:
                raise PolmError(f"tensor '{name}' in '{file}' is cut short", where=self.label,
                                fix="The file is truncated: re-save or re-copy the model.")
        if length == 0:
            return torch.empty(meta.shape, dtype=meta.dtype)
        return torch.frombuffer(buffer, dtype=meta.dtype).reshape(meta.shape)


@dataclass(frozen=True)
class _Patch:
    """How an adapter changes one base tensor."""

    kind: str                  # "lora" | "embedding" | "replace"
    keys: dict[str, str]       # role (A, B, magnitude, weight) -> adapter tensor name
    scaling: float = 1.0
    fan_in_fan_out: bool = False


class AdapterApplied:
    """A base source with a PEFT LoRA adapter folded in, tensor by tensor, as `merge_and_unload` would.

    LoRA: W' = W + s·(B·A), s = α/r (α/√r with rsLoRA); embeddings: W' = W + s·(B·A)ᵀ;
    DoRA: W' = m / ‖W + s·B·A‖_row ⊙ (W + s·B·A); `modules_to_save` copies replace the tensor.
    Computed in float32 and cast back to the base tensor's dtype.
    """

    def __init__(self, base: TensorSource, adapter_dir: Path, label: str):
        self.base, self.label, self.path = base, label, adapter_dir
        self.meta = base.meta
        self.config = getattr(base, "config", None)
        self.adapter_config = read_json(adapter_dir / "adapter_config.json", label)
        if self.adapter_config.get("peft_type", "LORA") != "LORA":
            raise PolmError(f"adapter type {self.adapter_config.get('peft_type')} cannot be merged", where=label,
                            fix="polm merges LoRA and DoRA adapters; export others with peft first.")
        self.file = adapter_dir / "adapter_model.safetensors"
        if not self.file.is_file():
            raise PolmError(f"adapter '{adapter_dir}' has no adapter_model.safetensors", where=label,
                            fix="Save the adapter with save_pretrained (safetensors is the default).")
        with open_safetensors(self.file, label) as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        self.patches = _plan_patches(shapes, self.adapter_config, base.meta, label)

    def read(self, name: str) -> torch.Tensor:
        weight = self.base.read(name)
        patch = self.patches.get(name)
        if patch is None:
            return weight
        with open_safetensors(self.file, self.label) as handle:
            parts = {role: handle.get_tensor(key).float() for role, key in patch.keys.items()}
        return _apply_patch(weight, patch, parts)


def _apply_patch(weight: torch.Tensor, patch: _Patch, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    if patch.kind == "replace":
        return parts["weight"].to(weight.dtype)
    delta = parts["B"] @ parts["A"]                                   # [out, r] @ [r, in] -> [out, in]
    if patch.kind == "embedding" or patch.fan_in_fan_out:
        delta = delta.T
    merged = weight.float() + patch.scaling * delta
    if "magnitude" in parts:                                          # DoRA: rescale each output row
        merged = merged * (parts["magnitude"] / merged.norm(p=2, dim=1)).unsqueeze(1)
    return merged.to(weight.dtype)


_ROLES = {".lora_A.weight": ("lora", "A"), ".lora_B.weight": ("lora", "B"),
          ".lora_magnitude_vector": ("lora", "magnitude"), ".lora_magnitude_vector.weight": ("lora", "magnitude"),
          ".lora_embedding_A": ("embedding", "A"), ".lora_embedding_B": ("embedding", "B")}


def _plan_patches(shapes: dict[str, tuple[int, ...]], cfg: dict[str, Any], base: dict[str, TensorMeta],
                  label: str) -> dict[str, _Patch]:
    """Group adapter tensors by the base tensor they change, and check every shape against the base."""
    groups: dict[str, tuple[str, dict[str, str]]] = {}
    for key in shapes:
        name = key.removeprefix(_PEFT_PREFIX)
        if name.endswith(".base_layer.weight"):
            continue  # PEFT's saved copy of a targeted embedding: the merge base is what counts
        role = next(((suffix, r) for suffix, r in _ROLES.items() if name.endswith(suffix)), None)
        if role is None:
            if name in base:
                groups[name] = ("replace", {"weight": key})          # modules_to_save: a trained full copy
                continue
            if any(f".{m}." in f".{name}" for m in cfg.get("modules_to_save") or []):
                raise PolmError(f"the adapter saves a trained copy of '{name}', which the base model does not "
                                "store (its lm_head is tied to the embeddings)", where=label,
                                fix="Untie the embeddings of the base before training such an adapter.")
            raise PolmError(f"adapter tensor '{key}' is neither LoRA nor a copy of a base tensor", where=label,
                            fix="Only LoRA/DoRA adapters (optionally with modules_to_save) can be merged.")
        suffix, (kind, part) = role
        module = name[: -len(suffix)]
        groups.setdefault(module + ".weight", (kind, {}))[1][part] = key
    return {target: _make_patch(target, kind, keys, shapes, cfg, base, label)
            for target, (kind, keys) in groups.items()}


def _make_patch(target: str, kind: str, keys: dict[str, str], shapes: dict[str, tuple[int, ...]],
                cfg: dict[str, Any], base: dict[str, TensorMeta], label: str) -> _Patch:
    if target not in base:
        raise PolmError(f"the adapter changes '{target}', which the base model does not have", where=label,
                        fix="Merge adapters only onto the base they were trained on.")
    want = base[target].shape
    if kind == "replace":
        got = shapes[keys["weight"]]
        if got != want:
            raise _shape_error(target, got, want, label)
        return _Patch(kind, keys)
    if "A" not in keys or "B" not in keys:
        raise PolmError(f"the adapter has only half of the LoRA pair for '{target}'", where=label)
    (rank, fan_in), (fan_out, _) = shapes[keys["A"]], shapes[keys["B"]]
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out")) and kind == "lora"
    got = (fan_in, fan_out) if kind == "embedding" or fan_in_fan_out else (fan_out, fan_in)
    if got != want:
        raise _shape_error(target, got, want, label)
    if "magnitude" in keys and (kind != "lora" or fan_in_fan_out):
        raise PolmError(f"DoRA on '{target}' ({kind}, fan_in_fan_out={fan_in_fan_out}) cannot be merged", where=label)
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, target.removesuffix(".weight"), cfg.get("lora_alpha", 8))
    scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    return _Patch(kind, keys, float(scaling), fan_in_fan_out)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank/alpha pattern lookup: the first key matching the end of the module path."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _shape_error(target: str, got: tuple[int, ...], want: tuple[int, ...], label: str) -> PolmError:
    return PolmError(f"the adapter's update for '{target}' has shape {list(got)} but the base tensor has "
                     f"{list(want)}", where=label, fix="The adapter was trained on a different base model.")
