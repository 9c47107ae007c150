"""The `polm merge` config: method, base, ingredients with their parameters, output.

    method: ties
    base: smollm2-135m-instruct
    models:
      - model: runs/sft-arith/final            # full model directory or PEFT adapter directory
        parameters: {weight: 1.0, density: 0.5}
      - model: runs/sft-wiki/final
        parameters: {weight: 1.0, density: [{filter: mlp, value: 0.7}, {value: 0.5}]}
    parameters: {normalize: true}             # shared parameters, and defaults for per-model ones
    output: runs/merge/ties

Every parameter value may be a scalar, a layer gradient or name-filtered (see polm.merge.params).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from polm.config import load_config
from polm.errors import PolmError, did_you_mean
from polm.merge.methods import MERGE_METHODS, MethodSpec, method_spec
from polm.merge.params import check_setting
from polm.registry import check_options

ADAPTER_METHODS = ("linear", "task_arithmetic")   # merges with an exact low-rank form (polm.merge.adapters)
ALIASES = {"lambda": "scale"}   # mergekit's name for the task-vector scale
CHOICES = {"rescale": ("inverse", "l1", "none"), "consensus": ("sum", "count")}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@dataclass
class Ingredient:
    ref: str                        # as written: local directory, embedded name or hub id
    parameters: dict[str, Any]      # per-input settings (canonical names)
    key: str                        # where in the config, e.g. "models[1]"


@dataclass
class MergeConfig:
    method: str = "linear"          # linear | task_arithmetic | ties | dare_linear | dare_ties | slerp | pkg.mod:fn
    base: str | None = None         # base model (needed by every method but linear); adapters are applied to it
    models: list[Any] = field(default_factory=list)        # each a reference or {model, parameters}
    parameters: dict[str, Any] = field(default_factory=dict)
    output: str = "runs/merge"      # a Hugging Face model directory, written atomically
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: the base's (else first model's) dtype
    tokenizer: str | None = None    # model whose tokenizer is copied (default: base, else first model)
    seed: int = 0                   # DARE masks: each tensor's generator is seeded from (seed, tensor name)
    max_shard_size: str = "5GB"
    output_format: Literal["model", "adapter"] = "model"   # adapter: one LoRA adapter (linear/task_arithmetic)
    overwrite: bool = False

    def validate(self) -> None:
        spec = self.spec()
        ingredients = self.ingredients()
        _check_inputs(self, spec, ingredients)
        _check_parameters(canonical(self.parameters, "parameters"), spec, "parameters", shared_allowed=True)
        for ing in ingredients:
            _check_parameters(ing.parameters, spec, f"{ing.key}.parameters", shared_allowed=False)
        self.shard_bytes()
        if self.output_format == "adapter" and spec.name not in ADAPTER_METHODS:
            raise PolmError(f"method '{spec.name}' has no low-rank form, so it cannot write an adapter",
                            where="output_format", fix=f"Use output_format: model, or {' or '.join(ADAPTER_METHODS)}.")

    def spec(self) -> MethodSpec:
        try:
            return method_spec(self.method)
        except PolmError as err:
            raise PolmError(err.what, where=err.where or "method", fix=err.fix) from None

    def ingredients(self) -> list[Ingredient]:
        return [_parse_ingredient(item, f"models[{i}]") for i, item in enumerate(self.models)]

    def shared_settings(self) -> dict[str, Any]:
        return canonical(self.parameters, "parameters")

    def shard_bytes(self) -> int:
        match = _SIZE.match(str(self.max_shard_size))
        if not match or float(match.group(1)) <= 0:
            raise PolmError(f"max_shard_size must be a positive size such as 2GB or 500MB, got {self.max_shard_size!r}",
                            where="max_shard_size")
        unit = match.group(2).upper() if match.group(2) else None
        return int(float(match.group(1)) * _UNITS[unit])


def canonical(settings: Any, where: str) -> dict[str, Any]:
    """Settings with mergekit aliases renamed (`lambda` -> `scale`)."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise PolmError(f"parameters must be a mapping of name to value, got {settings!r}", where=where)
    return {ALIASES.get(k, k): v for k, v in settings.items()}


def _parse_ingredient(item: Any, key: str) -> Ingredient:
    if isinstance(item, str):
        return Ingredient(item, {}, key)
    if not isinstance(item, dict):
        raise PolmError(f"a model entry must be a path/name or {{model, parameters}}, got {item!r}", where=key)
    unknown = [k for k in item if k not in ("model", "parameters")]
    if unknown:
        raise PolmError(f"unknown key '{unknown[0]}' in a model entry", where=key,
                        fix=did_you_mean(str(unknown[0]), ["model", "parameters"]))
    if not isinstance(item.get("model"), str) or not item["model"]:
        raise PolmError("a model entry needs 'model: <directory, embedded name or hub id>'", where=key)
    return Ingredient(item["model"], canonical(item.get("parameters"), f"{key}.parameters"), key)


def _check_inputs(cfg: MergeConfig, spec: MethodSpec, ingredients: list[Ingredient]) -> None:
    if not ingredients:
        raise PolmError("no models to merge", where="models", fix="List at least one model under 'models:'.")
    if spec.uses_base and not cfg.base:
        raise PolmError(f"method '{spec.name}' needs a base model", where="base",
                        fix="Set base: to the model the fine-tunes started from.")
    if spec.max_inputs is not None and len(ingredients) != spec.max_inputs:
        raise PolmError(f"method '{spec.name}' merges the base with exactly {spec.max_inputs} model(s), "
                        f"got {len(ingredients)}", where="models")
    for ing in ingredients:
        if spec.uses_base and ing.ref == cfg.base:
            raise PolmError(f"the base '{cfg.base}' is also listed as a model", where=ing.key,
                            fix="Remove it from models: the base is always an input of this method.")


def _check_parameters(settings: dict[str, Any], spec: MethodSpec, where: str, *, shared_allowed: bool) -> None:
    check_options(MERGE_METHODS.get(spec.name), settings, where=where, skip=2, exclude=("generator",),
                  owner=f"method '{spec.name}'")
    allowed = dict(spec.per_input)
    if shared_allowed:
        allowed.update(spec.shared)
    for name, setting in settings.items():
        key = f"{where}.{name}"
        if name in spec.shared and not shared_allowed:
            raise PolmError(f"'{name}' is shared by all models of method '{spec.name}'", where=key,
                            fix="Set it under the top-level parameters: instead.")
        for value, leaf in check_setting(setting, key):
            _check_value(name, value, allowed[name], leaf)


def _check_value(name: str, value: Any, default: Any, key: str) -> None:
    if isinstance(default, bool) and not isinstance(value, bool):
        raise PolmError(f"{name} must be true or false, got {value!r}", where=key)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and (
            isinstance(value, bool) or not isinstance(value, (int, float))):
        raise PolmError(f"{name} must be a number, got {value!r}", where=key)
    if name == "density" and not 0 < value <= 1:
        raise PolmError(f"density must be in (0, 1], got {value}", where=key,
                        fix="density is the fraction of each task vector kept, e.g. 0.5.")
    if name == "t" and not 0 <= value <= 1:
        raise PolmError(f"t must be in [0, 1], got {value}", where=key, fix="t=0 is the base, t=1 the other model.")
    if name in CHOICES and value not in CHOICES[name]:
        raise PolmError(f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r}", where=key)


def load_merge_config(path: str | Path | None, overrides: list[str] | None = None) -> MergeConfig:
    """`load_config(MergeConfig, ...)`, with errors inside models/parameters pointed at their YAML line."""
    try:
        return load_config(MergeConfig, path, overrides)
    except PolmError as err:
        line = _yaml_line(Path(path), err.where) if path and err.where and ":" not in err.where else None
        if line is not None:
            err.where = f"{path}:{line} ({err.where})"
            err.args = (err.message,)
        raise


def _yaml_line(path: Path, key: str) -> int | None:
    """1-based line of a key path such as `models[1].parameters.density[0].value` in a YAML file."""
    try:
        node = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        if part.startswith("[") and isinstance(node, yaml.SequenceNode):
            index = int(part[1:-1])
            if index >= len(node.value):
                return line
            node = node.value[index]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part or ALIASES.get(k.value) == part]
            if not match:
                return line
            line, node = match[0][0].start_mark.line + 1, match[0][1]
        else:
            return line
    return line
