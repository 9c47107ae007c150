"""Registries: lookup, duplicates, did-you-mean, and user plug-ins by module path."""

import pytest

from polm.errors import PolmError
from polm.registry import Registry


def test_register_get_and_suggest():
    reg = Registry("loss")

    @reg.register("dpo_sigmoid")
    def dpo(x):
        return 2 * x

    assert reg.get("dpo_sigmoid")(3) == 6 and reg.names() == ["dpo_sigmoid"] and "dpo_sigmoid" in reg
    with pytest.raises(PolmError, match="unknown loss 'dpo_sigmoidd'. Did you mean 'dpo_sigmoid'"):
        reg.get("dpo_sigmoidd")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("dpo_sigmoid")(dpo)


def test_plugin_by_module_path():
    reg = Registry("reward")
    assert reg.get("math:sqrt")(9.0) == 3.0
    with pytest.raises(PolmError, match="cannot import reward plug-in module 'no_such_mod'"):
        reg.get("no_such_mod:f")
    with pytest.raises(PolmError, match="module 'math' has no reward 'sqrtt'. Did you mean 'sqrt'"):
        reg.get("math:sqrtt")
