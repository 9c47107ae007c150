"""Named registries for plug-in points (losses, advantages, rewards, merge methods, eval tasks).

`REG.get("name")` finds a registered object; `REG.get("my_pkg.module:func")` imports a user plug-in.
Unknown names fail with a did-you-mean hint.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from polm.errors import PolmError, did_you_mean


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return add

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> Any:
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return _import_plugin(self.kind, name)
        raise PolmError(
            f"unknown {self.kind} '{name}'",
            fix=did_you_mean(name, self._items) + " A plug-in can be given as 'package.module:function'.",
        )


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
