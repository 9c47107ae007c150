"""The merge config: every user mistake is one PolmError naming the YAML line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polm.errors import PolmError
from polm.merge.config import MergeConfig, load_merge_config


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cfg(**kw) -> dict:
    return {"method": "ties", "base": "b", "models": [{"model": "m1", "parameters": {"density": 0.5}}, "m2"], **kw}


def test_valid_config_parses_ingredients_and_aliases(tmp_path):
    cfg = load_merge_config(_write(tmp_path, _cfg(parameters={"lambda": 0.7, "density": 0.9})))
    ings = cfg.ingredients()
    assert [(i.ref, i.parameters, i.key) for i in ings] == [("m1", {"density": 0.5}, "models[0]"), ("m2", {}, "models[1]")]
    assert cfg.shared_settings() == {"scale": 0.7, "density": 0.9}      # mergekit's `lambda` is polm's `scale`
    assert MergeConfig(max_shard_size="1.5GB").shard_bytes() == 1_500_000_000
    assert MergeConfig(max_shard_size="64MiB").shard_bytes() == 64 * 2 ** 20


@pytest.mark.parametrize("density", [0, 1.5, -0.1])
def test_density_outside_zero_one_names_the_line(tmp_path, density):
    path = _write(tmp_path, _cfg(models=[{"model": "m1", "parameters": {"weight": 1, "density": density}}]))
    with pytest.raises(PolmError) as err:
        load_merge_config(path)
    assert f"{path}:7 (models[0].parameters.density)" in err.value.message
    assert "density must be in (0, 1]" in err.value.message


def test_density_inside_a_filter_and_from_an_override(tmp_path):
    path = _write(tmp_path, _cfg(parameters={"density": [{"filter": "mlp", "value": [0.5, 2.0]}]}))
    with pytest.raises(PolmError, match=r":13 \(parameters\.density\[0\]\.value\[1\]\).*got 2\.0"):
        load_merge_config(path)
    with pytest.raises(PolmError, match="density must be in"):
        load_merge_config(_write(tmp_path, _cfg()), ["parameters.density=0"])


def test_unknown_parameter_suggests_the_closest(tmp_path):
    with pytest.raises(PolmError, match="no parameter 'densty'.*Did you mean 'density'"):
        load_merge_config(_write(tmp_path, _cfg(parameters={"densty": 0.5})))
    with pytest.raises(PolmError, match="'normalize' is shared.*top-level parameters"):
        load_merge_config(_write(tmp_path, _cfg(models=[{"model": "m", "parameters": {"normalize": True}}])))
    with pytest.raises(PolmError, match="unknown key 'parameter' in a model entry.*'parameters'"):
        load_merge_config(_write(tmp_path, _cfg(models=[{"model": "m", "parameter": {}}])))


def test_method_contracts(tmp_path):
    with pytest.raises(PolmError, match="unknown merge method 'slurp'.*Did you mean 'slerp'"):
        load_merge_config(_write(tmp_path, _cfg(method="slurp")))
    with pytest.raises(PolmError, match="'ties' needs a base model"):
        load_merge_config(_write(tmp_path, {"method": "ties", "models": ["a", "b"]}))
    with pytest.raises(PolmError, match="exactly 1 model"):
        load_merge_config(_write(tmp_path, {"method": "slerp", "base": "b", "models": ["a", "c"]}))
    with pytest.raises(PolmError, match="the base 'b' is also listed"):
        load_merge_config(_write(tmp_path, {"method": "task_arithmetic", "base": "b", "models": ["a", "b"]}))
    with pytest.raises(PolmError, match="t must be in"):
        load_merge_config(_write(tmp_path, {"method": "slerp", "base": "b", "models": ["a"],
                                            "parameters": {"t": [0, 1.2]}}))
    with pytest.raises(PolmError, match="rescale must be one of inverse, l1, none"):
        load_merge_config(_write(tmp_path, _cfg(method="dare_ties", parameters={"rescale": "l2"})))
    with pytest.raises(PolmError, match="normalize must be true or false"):
        load_merge_config(_write(tmp_path, _cfg(parameters={"normalize": "yes"})))
    with pytest.raises(PolmError, match="no models to merge"):
        load_merge_config(_write(tmp_path, {"method": "linear"}))
    with pytest.raises(PolmError, match="max_shard_size"):
        load_merge_config(_write(tmp_path, _cfg(max_shard_size="lots")))


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[3].glob("configs/merge_*.yaml")),
                         ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = load_merge_config(path)
    assert path.stem == f"merge_{cfg.method}" and cfg.ingredients()
    assert path.read_text().splitlines()[0].startswith("#") and f"polm merge {path.parent.name}/{path.name}" in \
        path.read_text()
