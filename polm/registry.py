"""Named registries for plug-in points (losses, advantages, rewards, merge methods, eval tasks).

`REG.get("name")` finds a registered object; `REG.get("my_pkg.module:func")` imports a user plug-in.
An entry carries its metadata (`REG.register(name, **meta)`, `REG.meta(name)`); unknown names fail
with a did-you-mean hint, and `check_options` checks config options against a function's signature.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from polm.errors import PolmError, closest, did_you_mean


@dataclass(frozen=True)
class Entry:
    """A registered object and its metadata (read-only)."""

    name: str                     # the registered name (for an undeclared plug-in: its 'module:function')
    obj: Any
    meta: Mapping[str, Any]


class Registry:
    """Objects by name, each with metadata.

    `defaults` are the metadata keys of this kind with their values for an entry that does not set
    them, and for a 'package.module:function' plug-in that is not registered (one whose module
    registers it with the kind's decorator is found by identity and keeps its own metadata). A
    registry built with `declare_with` has no defaults: its plug-ins must use that decorator.
    """

    def __init__(self, kind: str, defaults: Mapping[str, Any] | None = None, *, declare_with: str | None = None):
        self.kind = kind
        self.defaults = MappingProxyType(dict(defaults or {}))
        self.declare_with = declare_with
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        unknown = sorted(set(meta) - set(self.defaults)) if self.declare_with is None else []
        if unknown:
            raise ValueError(f"{self.kind} '{name}': unknown metadata '{unknown[0]}' (known: "
                             f"{', '.join(self.defaults) or 'none'})")

        def add(obj: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, obj, MappingProxyType({**self.defaults, **meta}))
            return obj

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        """The object registered as `name`, or the plug-in 'package.module:function' names."""
        return self.entry(name).obj

    def meta(self, name: str) -> dict[str, Any]:
        """A copy of the metadata of `name` (the defaults for an undeclared plug-in)."""
        return dict(self.entry(name).meta)

    def entry(self, name: str) -> Entry:
        if name in self._entries:
            return self._entries[name]
        if ":" not in name:
            raise PolmError(
                f"unknown {self.kind} '{name}'",
                fix=did_you_mean(name, self._entries) + " A plug-in can be given as 'package.module:function'.",
            )
        obj = _import_plugin(self.kind, name)
        for entry in self._entries.values():   # its module registered it with the kind's decorator
            if entry.obj is obj:
                return entry
        if self.declare_with is not None:
            raise PolmError(f"'{name}' is not a registered {self.kind}",
                            fix=f"Decorate it with {self.declare_with}.")
        return Entry(name, obj, self.defaults)


def _import_plugin(kind: str, ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise PolmError(f"cannot import {kind} plug-in module '{module_name}' ({err})",
                        fix="Check the module path and that it is on PYTHONPATH.") from err
    if not hasattr(module, attr):
        raise PolmError(f"module '{module_name}' has no {kind} '{attr}'",
                        fix=did_you_mean(attr, [n for n in dir(module) if not n.startswith("_")]))
    return getattr(module, attr)


def option_names(fn: Callable[..., Any], *, skip: int = 0, exclude: Collection[str] = ()) -> list[str] | None:
    """The parameters of `fn` a config may set: those after the first `skip` (which the caller
    passes itself), minus `exclude`, that can be passed by keyword; None when `fn` takes **kwargs."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    settable = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params[skip:] if p.kind in settable and p.name not in exclude]


def check_options(fn: Callable[..., Any], options: Mapping[str, Any], *, where: str, skip: int = 0,
                  owner: str | None = None, exclude: Collection[str] = ()) -> dict[str, Any]:
    """`options` as a dict, after checking that `fn` takes each of them by keyword.

    `where` is the config key path of the options (the error points at `where.key`), `skip` the
    leading parameters the caller fills itself, `exclude` named ones it fills itself, `owner` how the
    message names `fn` (e.g. "loss 'ipo'"). An unknown key is a PolmError with a did-you-mean.
    """
    accepted = option_names(fn, skip=skip, exclude=exclude)
    if accepted is None:
        return dict(options)
    owner = owner or f"'{getattr(fn, '__name__', fn)}'"
    for key in options:
        if key in accepted:
            continue
        if not accepted:
            fix = f"It takes no parameters; remove '{key}'."
        else:
            listing = f"Its parameters: {', '.join(sorted(accepted))}."
            fix = f"{did_you_mean(key, accepted)} {listing}" if closest(key, accepted) else listing
        raise PolmError(f"{owner} has no parameter '{key}'", where=f"{where}.{key}" if where else key, fix=fix)
    return dict(options)
