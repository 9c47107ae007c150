"""Peak memory of a streaming merge follows the largest tensor, not the model size.

Measured in a fresh process: after a warm-up merge (imports, allocator pools), the kernel's peak-RSS
counter is reset (/proc/self/clear_refs) and a TIES merge of three 30 MB models runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from merge_models import save_llama
from safetensors.torch import save_file

from polm.merge.sources import Checkpoint

SCRIPT = textwrap.dedent("""
    import json, re, sys
    from polm.merge.config import MergeConfig
    from polm.merge.runner import run_merge

    def status():
        return {k: int(v) * 1024 for k, v in re.findall(r"(Vm\\w+):\\s+(\\d+) kB", open("/proc/self/status").read())}

    for i, cfg in enumerate(json.loads(sys.argv[1])):
        if i == 1:  # the measured merge: forget the peak of imports and warm-up
            open("/proc/self/clear_refs", "w").write("5")
            before = status()["VmRSS"]
        cfg = MergeConfig(**cfg)
        cfg.validate()
        run_merge(cfg)
    print(json.dumps({"before": before, "peak": status()["VmHWM"]}))
""")


def _llama_weights(path: Path, like: Path, seed: int, layers: int = 32, hidden: int = 128, mlp: int = 512) -> Path:
    """A Llama checkpoint written straight from random tensors (much faster than building the model)."""
    shapes = {"model.embed_tokens.weight": (397, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in [
            ("self_attn.q_proj.weight", (hidden, hidden)), ("self_attn.k_proj.weight", (hidden // 2, hidden)),
            ("self_attn.v_proj.weight", (hidden // 2, hidden)), ("self_attn.o_proj.weight", (hidden, hidden)),
            ("mlp.gate_proj.weight", (mlp, hidden)), ("mlp.up_proj.weight", (mlp, hidden)),
            ("mlp.down_proj.weight", (hidden, mlp)), ("input_layernorm.weight", (hidden,)),
            ("post_attention_layernorm.weight", (hidden,))]})
    g = torch.Generator().manual_seed(seed)
    path.mkdir()
    save_file({k: torch.randn(shape, generator=g) for k, shape in shapes.items()}, path / "model.safetensors")
    config = json.loads((like / "config.json").read_text())
    config.update(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, head_dim=hidden // 4)
    (path / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(like / name, path / name)
    return path


def test_peak_memory_is_bounded_by_the_largest_tensor(tmp_path, tiny_tokenizer):
    small = [save_llama(tmp_path / f"small{s}", tiny_tokenizer, seed=s) for s in range(3)]
    big = [_llama_weights(tmp_path / f"big{s}", small[0], seed=s) for s in range(3)]
    meta = Checkpoint(big[0], "big").meta
    largest = max(m.nbytes for m in meta.values())                     # 512×128 fp32 = 256 KiB
    model_bytes = sum(m.nbytes for m in meta.values())                 # ≈ 30 MB per model
    merges = [{"method": "ties", "base": str(models[0]), "output": str(tmp_path / name),
               "models": [str(models[1]), str(models[2])], "parameters": {"density": 0.5}}
              for models, name in ((small, "warm"), (big, "merged"))]
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(merges)], capture_output=True, text=True,
                          check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    growth = measured["peak"] - measured["before"]
    # three inputs + float32 copies + stacked task vectors + masks + result ≈ 12 tensors; plus 4 MiB for
    # Python objects and file headers. The bound is far below one model, let alone the 90 MB of inputs.
    bound = 16 * largest + 4 * 2 ** 20
    assert bound < model_bytes / 3
    assert growth < bound, f"peak grew {growth / 2**20:.1f} MiB; bound {bound / 2**20:.1f} MiB"
    assert (tmp_path / "merged" / "model.safetensors").stat().st_size > model_bytes
