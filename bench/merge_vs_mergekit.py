"""polm merge vs mergekit: same inputs, same method and parameters; wall time and peak memory.

    python bench/merge_vs_mergekit.py --quick          # TIES only, one round (~1-2 minutes on 2 CPU cores)
    python bench/merge_vs_mergekit.py                  # five methods, three rounds (docs/performance.md)

Inputs: the embedded SmolLM2-135M-Instruct as the base and two "fine-tunes" made from it by adding
seeded Gaussian noise (1% of each tensor's std), all fp32 safetensors, written once to --inputs.
Each trial is a fresh process that imports its tool, then times only the merge call (imports are
reported apart); its peak RSS is that trial's memory, and the RSS just before the merge shows how
much the merge itself added. polm and mergekit alternate after a warm-up. Both outputs of the last
round are compared tensor by tensor: deterministic methods must agree to 1e-6 (DARE draws its masks
in a different order in each tool, so only its shapes and sparsity match). mergekit is imported
from --mergekit-path (default .cache/mergekit-site, a `pip install --target` of mergekit==0.1.5)
or from the environment. Writes bench/results/merge_vs_mergekit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import common

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
MODEL = "smollm2-135m-instruct"
# method -> (per-model parameters for model 1, for model 2 (None: one model), shared parameters)
METHODS = {
    "linear": ({"weight": 0.5}, {"weight": 0.5}, {}),
    "task_arithmetic": ({"weight": 0.6}, {"weight": 0.4}, {}),
    "ties": ({"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}, {}),
    "dare_ties": ({"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}, {}),
    "slerp": (None, None, {"t": 0.4}),
}


def _rss_mib() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


# --- inputs --------------------------------------------------------------------------------------

def prepare_inputs(root: Path) -> list[Path]:
    """Base + two seeded perturbations of it, each a full HF directory (reused when already there)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from polm.assets import resolve_model

    dirs = [root / "base", root / "ft1", root / "ft2"]
    if all((d / "done").is_file() for d in dirs):
        return dirs
    source = Path(resolve_model(MODEL))
    weights = {k: v.float().contiguous() for k, v in load_file(source / "model.safetensors").items()}
    for seed, out in enumerate(dirs):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.safetensors"))
        g = torch.Generator().manual_seed(seed)
        noisy = weights if seed == 0 else {
            k: v + 0.01 * v.std() * torch.randn(v.shape, generator=g) if v.numel() > 1 else v for k, v in weights.items()}
        save_file(noisy, out / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "dtype": "float32"}))
        (out / "done").write_text("ok")
    return dirs


def configs(method: str, dirs: list[Path], out: Path) -> tuple[dict, dict]:
    """The same merge as a polm config and as a mergekit config."""
    p1, p2, shared = METHODS[method]
    base, ft1, ft2 = (str(d) for d in dirs)
    if method == "slerp":
        models = [{"model": ft1}]
    else:
        models = [{"model": ft1, "parameters": p1}, {"model": ft2, "parameters": p2}]
    uses_base = method != "linear"
    polm = {"method": method, "base": base if uses_base else None, "models": models, "parameters": dict(shared),
            "output": str(out / "polm"), "overwrite": True}
    if method == "dare_ties":
        polm["parameters"]["rescale"] = "l1"      # mergekit's DARE rescale (polm's default is 1/density)
    mergekit = {"merge_method": method, "models": models, "parameters": shared, "dtype": "float32"}
    if uses_base:
        mergekit["base_model"] = base
    return polm, mergekit


# --- one trial (a fresh process) -----------------------------------------------------------------

def worker(spec: dict) -> dict:
    started = time.perf_counter()
    if spec["tool"] == "polm":
        from polm.merge.config import MergeConfig
        from polm.merge.runner import run_merge

        cfg = MergeConfig(**spec["config"])
        cfg.validate()
        merge = lambda: run_merge(cfg)  # noqa: E731
    else:
        import torch  # noqa: F401  (imported before the timer, as polm's is)
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge as mergekit_merge
        from mergekit.options import MergeOptions

        config = MergeConfiguration.model_validate(spec["config"])
        merge = lambda: mergekit_merge(config, spec["out"], options=MergeOptions(quiet=True))  # noqa: E731
    imported = time.perf_counter()
    rss_before = _rss_mib()
    merge()
    done = time.perf_counter()
    return {"seconds": done - imported, "import_seconds": imported - started, "rss_before_mib": round(rss_before, 1)}


def compare_outputs(a: Path, b: Path) -> dict:
    """max |a − b| and how many entries differ by more than 1e-6, over every tensor, one at a time."""
    from safetensors import safe_open

    worst, differing, total = 0.0, 0, 0
    with safe_open(str(a / "model.safetensors"), "pt") as fa, safe_open(str(b / "model.safetensors"), "pt") as fb:
        if set(fa.keys()) != set(fb.keys()):
            return {"max_abs_difference": float("inf"), "entries_differing": None, "entries": None}
        for name in fa.keys():
            diff = (fa.get_tensor(name).double() - fb.get_tensor(name).double()).abs()
            worst = max(worst, diff.max().item())
            differing += int((diff > 1e-6).sum())
            total += diff.numel()
    return {"max_abs_difference": worst, "entries_differing": differing, "entries": total}


# --- the comparison ------------------------------------------------------------------------------

def run_method(method: str, dirs: list[Path], out: Path, repeats: int, env: dict[str, str]) -> dict:
    polm_cfg, mk_cfg = configs(method, dirs, out)
    specs = {"polm": {"tool": "polm", "config": polm_cfg, "name": f"polm {method}"},
             "mergekit": {"tool": "mergekit", "config": mk_cfg, "out": str(out / "mergekit"),
                          "name": f"mergekit {method}"}}
    trials = {name: (lambda s=spec: common.run_worker(SCRIPT, s, env=env)) for name, spec in specs.items()}
    results, _ = common.alternate(trials, repeats, warmups=trials, log=lambda m: print(f"  {method}: {m}"))
    row = {"method": method, "polm_config": polm_cfg, "mergekit_config": mk_cfg,
           **compare_outputs(out / "polm", out / "mergekit")}
    for tool, runs in results.items():
        row[tool] = {"seconds": common.median([r["seconds"] for r in runs]),
                     "peak_rss_mib": common.median([r["peak_rss_mib"] for r in runs]),
                     "merge_rss_growth_mib": common.median([r["peak_rss_mib"] - r["rss_before_mib"] for r in runs]),
                     "import_seconds": common.median([r["import_seconds"] for r in runs]), "runs": runs}
    row["speed_ratio"] = row["mergekit"]["seconds"] / row["polm"]["seconds"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="TIES only, one round after the warm-up")
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), help="default: all (quick: ties)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per method (default 3, quick 1)")
    parser.add_argument("--inputs", default="/tmp/polm-bench-merge", help="where the three input models live")
    parser.add_argument("--mergekit-path", default=str(ROOT / ".cache" / "mergekit-site"))
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "merge_vs_mergekit.json"))
    parser.add_argument("--worker")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.worker:
        common.write_worker_result(args.result, worker(json.loads(Path(args.worker).read_text())))
        return 0
    methods = args.methods or (["ties"] if args.quick else list(METHODS))
    repeats = args.repeats or (1 if args.quick else 3)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if Path(args.mergekit_path).is_dir():
        env["PYTHONPATH"] = os.pathsep.join([args.mergekit_path, os.environ.get("PYTHONPATH", "")])
    inputs = Path(args.inputs)
    print(f"inputs: {MODEL} + two perturbed copies in {inputs}")
    dirs = prepare_inputs(inputs)
    rows = [run_method(m, dirs, inputs / "out", repeats, env) for m in methods]
    table = common.format_table(
        ["method", "polm s", "mergekit s", "speed (mk/polm)", "polm peak MiB", "mergekit peak MiB",
         "polm merge +MiB", "mergekit merge +MiB", "max |Δ|", "entries |Δ|>1e-6"],
        [[r["method"], r["polm"]["seconds"], r["mergekit"]["seconds"], r["speed_ratio"], r["polm"]["peak_rss_mib"],
          r["mergekit"]["peak_rss_mib"], r["polm"]["merge_rss_growth_mib"], r["mergekit"]["merge_rss_growth_mib"],
          f"{r['max_abs_difference']:.1e}", f"{r['entries_differing']} of {r['entries']:,}"] for r in rows])
    print(table)
    settings = {"model": MODEL, "inputs": "base + 2 × (base + 0.01·std·N(0,1)), fp32 safetensors",
                "repeats": repeats, "warmup": 1, "dtype": "float32", "shard_size": "5GB (both defaults)",
                "mergekit_options": "MergeOptions(quiet=True): defaults, CPU", "timed": "the merge call only"}
    machine = common.machine_description(packages=("torch", "transformers", "safetensors"))
    machine["versions"]["mergekit"] = _mergekit_version(args.mergekit_path)
    path = common.write_json_atomic(Path(args.out), {"settings": settings, "machine": machine, "results": rows,
                                                     "table": table})
    print(f"wrote {path}")
    return 0


def _mergekit_version(path: str) -> str | None:
    found = sorted(Path(path).glob("mergekit-*.dist-info"))
    return found[0].name.removeprefix("mergekit-").removesuffix(".dist-info") if found else \
        common.package_versions(["mergekit"])["mergekit"]


if __name__ == "__main__":
    sys.exit(main())
