"""SamplingConfig, the one settings type of every generation backend: what it accepts and how it refuses."""

import pytest

from polm.errors import PolmError
from polm.rollout import SamplingConfig


def test_defaults_and_edges_are_valid():
    SamplingConfig().validate()
    SamplingConfig(n=1, max_new_tokens=1, temperature=0.0, top_p=1.0, top_k=0).validate()
    SamplingConfig(temperature=2.0, top_p=1e-6, top_k=1, stop=["\n"]).validate()
    assert (SamplingConfig().n, SamplingConfig().temperature, SamplingConfig().stop) == (8, 1.0, [])


@pytest.mark.parametrize(("field", "value", "named"), [
    ("n", 0, "n=0"), ("max_new_tokens", 0, "max_new_tokens=0"), ("temperature", -0.1, "temperature=-0.1"),
    ("top_p", 0.0, "top_p=0.0"), ("top_p", 1.5, "top_p=1.5"), ("top_k", -1, "top_k=-1"),
])
def test_each_bad_setting_is_named_with_a_fix(field, value, named):
    with pytest.raises(PolmError, match=named) as err:
        SamplingConfig(**{field: value}).validate()
    assert err.value.fix
