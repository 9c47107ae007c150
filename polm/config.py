"""Typed configs: dataclasses loaded from YAML and overridden with dotted `key=value` arguments.

Every recipe declares its config as a dataclass (nested dataclasses for sections). `load_config`
checks every key and value against it: an unknown key names the closest valid one, a wrong type
names the expected type, and each message points at the YAML file and line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from polm.errors import PolmError, closest, did_you_mean
from polm.io import atomic_write_text

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from a YAML file (optional) plus dotted `key=value` overrides."""
    data: dict[str, Any] = {}
    lines: dict[str, str] = {}
    if path is not None:
        data, lines = _read_yaml(Path(path))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        lines[key] = f"command line '{item}'"
    return _build(cls, data, prefix="", lines=lines)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_names(cls: type) -> list[str]:
    """All dotted keys of a config class, for suggestions."""
    out = []
    for f in dataclasses.fields(cls):
        ftype = _resolved_hints(cls)[f.name]
        if dataclasses.is_dataclass(ftype):
            out += [f"{f.name}.{k}" for k in field_names(ftype)]
        else:
            out.append(f.name)
    return out


# --- reading -------------------------------------------------------------------------------------

def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    if not path.is_file():
        raise PolmError(f"config file '{path}' does not exist", fix="Check the path (example configs are in configs/).")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise PolmError(f"the config is not valid YAML ({problem})", where=where) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise PolmError("the config must be a mapping of keys to values", where=str(path))
    lines: dict[str, str] = {}
    _collect_lines(node, "", path, lines)
    return data, lines


def _collect_lines(node: Any, prefix: str, path: Path, out: dict[str, str]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = f"{path}:{key_node.start_mark.line + 1}"
            _collect_lines(value_node, key + ".", path, out)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise PolmError(f"override '{item}' is not of the form key=value", fix="Write e.g. lora.r=16.")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        text = raw.strip()
        # PyYAML rejects `[a:b?x=1, c]` (colons in flow lists); read it as a plain comma list.
        value = [v.strip() for v in text[1:-1].split(",") if v.strip()] if text[:1] + text[-1:] == "[]" else raw
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# --- building and type checking ------------------------------------------------------------------

def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type[T], data: Any, prefix: str, lines: dict[str, str], base: Any = None) -> T:
    """`cls` from a mapping; a key the mapping lacks keeps its value in `base` (the enclosing config's
    default for this section, e.g. a recipe's `TrainConfig(lr=5e-6)`), else the dataclass default."""
    where = lines.get(prefix.rstrip(".")) if prefix else None
    if not isinstance(data, dict):
        raise PolmError(f"key '{prefix.rstrip('.')}' must be a section (a mapping)", where=where)
    hints = _resolved_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            full = prefix + str(key)
            valid = [prefix + k for k in field_names(cls)]
            best = closest(full, valid) or closest(str(key), valid)
            fix = f"Did you mean '{best}'?" if best else "Valid keys: " + ", ".join(sorted(known)) + "."
            raise PolmError(f"unknown config key '{full}'", where=lines.get(full), fix=fix)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if base is not None:
                kwargs[f.name] = getattr(base, f.name)
            continue
        ftype, value, full = hints[f.name], data[f.name], prefix + f.name
        if dataclasses.is_dataclass(ftype):
            section = getattr(base, f.name) if base is not None else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            kwargs[f.name] = _build(ftype, value or {}, full + ".", lines, section)
        else:
            kwargs[f.name] = _check(value, ftype, full, lines.get(full))
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check(value: Any, tp: Any, key: str, where: str | None) -> Any:
    ok, converted = _coerce(value, tp)
    if not ok:
        choices = get_args(tp) if get_origin(tp) is Literal else ()
        fix = did_you_mean(value, choices) if isinstance(value, str) and choices else None
        raise PolmError(
            f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})",
            where=where, fix=fix,
        )
    return converted


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if tp is Any:
        return True, value
    if origin is Literal:
        return value in get_args(tp), value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            ok, conv = _coerce(value, arg)
            if ok:
                return True, conv
        return False, value
    if tp is type(None):
        return value is None, value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `key=x` on the command line means a one-element list
        if not isinstance(value, (list, tuple)):
            return False, value
        (arg,) = get_args(tp)[:1] or (Any,)
        items = [_coerce(v, arg) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str):
            try:
                return True, float(value)  # YAML reads 1e-4 as a string
            except ValueError:
                return False, value
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) if isinstance(value, (int, float)) else value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def add_config_arguments(parser, example: str) -> None:
    """`polm <command> [CONFIG.yaml] [key=value ...]`: the positional arguments every config-driven command takes."""
    parser.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                        help=f"a YAML config (e.g. {example}) followed by dotted overrides such as lora.r=16")


def config_from_args(cls: type[T], args, extra: list[str] | None = None) -> T:
    """First positional argument without '=' is the YAML file; the rest are overrides."""
    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    return load_config(cls, path, items + list(extra or []))
