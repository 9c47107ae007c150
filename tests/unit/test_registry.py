"""Registries: lookup, duplicates, did-you-mean, and user plug-ins by module path."""

import pytest

from polm.errors import PolmError
from polm.registry import Registry, check_options, option_names


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


def test_metadata_lives_with_the_entry_and_defaults_fill_it():
    reg = Registry("loss", {"needs_reference": True, "unpaired": False})

    @reg.register("kto", unpaired=True)
    def kto(x):
        return x

    entry = reg.entry("kto")
    assert entry.obj is kto and entry.name == "kto" and reg.get("kto") is kto
    assert reg.meta("kto") == {"needs_reference": True, "unpaired": True}
    reg.meta("kto")["unpaired"] = False                      # a copy: the entry is not changed
    assert reg.meta("kto")["unpaired"] is True
    with pytest.raises(ValueError, match="unknown metadata 'unpairde'"):
        reg.register("typo", unpairde=True)


def test_plugins_get_default_metadata_or_keep_what_their_decorator_declared(tmp_path, monkeypatch):
    from polm.rewards import REWARDS, RewardSet

    monkeypatch.setattr(REWARDS, "_entries", dict(REWARDS._entries))    # forget the plug-in afterwards
    (tmp_path / "polm_test_plugin_rewards.py").write_text(
        "from polm.rewards import reward\n"
        "@reward('plugin_exact', requires=('answer',))\n"
        "def exact(completions, records):\n    return [1.0] * len(completions)\n"
        "def plain(completions, records):\n    return [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert REWARDS.meta("polm_test_plugin_rewards:plain") == {"requires": ()}
    declared = REWARDS.entry("polm_test_plugin_rewards:exact")
    assert declared.name == "plugin_exact" and declared.meta == {"requires": ("answer",)}
    rewards = RewardSet({"polm_test_plugin_rewards:exact": 1.0, "polm_test_plugin_rewards:plain": 1.0})
    rewards.check_records([{"answer": "3"}], "data.jsonl")
    with pytest.raises(PolmError, match="record 1 has no 'answer' field, which reward 'polm_test_plugin_rewards:exact'"):
        rewards.check_records([{"prompt": "x"}], "data.jsonl")


def test_a_registry_can_require_plugins_to_declare_themselves():
    reg = Registry("merge method", declare_with="my.decorator")
    with pytest.raises(PolmError, match="'math:sqrt' is not a registered merge method. Decorate it with my.decorator"):
        reg.entry("math:sqrt")


def _loss(logps, *, beta=0.1, gamma=1.0, label_smoothing=0.0, generator=None):
    return logps


def test_check_options_names_the_key_where_and_the_closest_parameter():
    assert check_options(_loss, {"gamma": 2.0}, where="loss_options", skip=1) == {"gamma": 2.0}
    with pytest.raises(PolmError) as err:
        check_options(_loss, {"gama": 2.0}, where="loss_options", skip=1, owner="loss 'simpo'")
    assert err.value.message == ("loss_options.gama: loss 'simpo' has no parameter 'gama'. Did you mean 'gamma'? "
                                 "Its parameters: beta, gamma, generator, label_smoothing.")
    with pytest.raises(PolmError, match=r"^x.generator: '_loss' has no parameter 'generator'. Its parameters: beta, "):
        check_options(_loss, {"generator": 1}, where="x", skip=1, exclude=("generator",))
    with pytest.raises(PolmError, match=r"^logps: .*no parameter 'logps'"):        # skipped: the caller passes it
        check_options(_loss, {"logps": 1}, where="", skip=1)
    with pytest.raises(PolmError, match="'f' has no parameter 'a'. It takes no parameters; remove 'a'"):
        check_options(lambda x: x, {"a": 1}, where="w", skip=1, owner="'f'")
    assert check_options(lambda x, **kw: x, {"anything": 1}, where="w", skip=1) == {"anything": 1}
    assert option_names(_loss, skip=1, exclude=("generator",)) == ["beta", "gamma", "label_smoothing"]
