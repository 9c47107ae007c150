"""polm merge vs mergekit: same inputs, same method and parameters; wall time and peak memory.

    python bench/merge_vs_mergekit.py --quick          # TIES only, warm-up + one round (~3 minutes on 2 CPU cores)
    python bench/merge_vs_mergekit.py                  # five methods, warm-up + three rounds (docs/performance.md)
    python bench/merge_vs_mergekit.py --methods ties slerp --repeats 5

Inputs: the embedded SmolLM2-135M-Instruct as the base and two "fine-tunes" made from it by adding
seeded Gaussian noise (1% of each tensor's std), all fp32 safetensors, written once to --inputs.
Three sides, alternated after a warm-up, each trial a fresh process that imports its tool and then
times only the merge call (imports are reported apart):
  polm              `polm.merge.runner.run_merge`
  mergekit          `mergekit.merge.run_merge` with MergeOptions(quiet=True): its defaults
  mergekit-lowmem   the same with its documented low-memory options on (see MERGEKIT_LOWMEM: in 0.1.5 only
                    out_shard_size changes anything on CPU; the others are recorded with why)
Memory, per trial: the whole process's peak RSS (imports included), the merge call's OWN peak (VmHWM
reset through /proc/self/clear_refs when the call starts: `common.PeakRss`) and what it added over the
RSS it started from, and the same for each phase of the call (polm: plan, merge = merge + write the
weights, model files, lineage; mergekit: plan, merge = its executor, which also writes, tokenizer), with
how the sampled peak splits into anonymous memory and mapped-file pages. Outputs of the last round are
compared tensor by tensor with polm's: deterministic methods must agree to 1e-6 (DARE draws its masks in
a different order in each tool, so only its shapes and sparsity match). mergekit is imported from
--mergekit-path (default .cache/mergekit-site, a `pip install --target` of mergekit==0.1.5) or from the
environment. Writes bench/results/merge_vs_mergekit.json (_quick.json with --quick) with the command,
machine, load average at start and end, and every round's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import common

from polm.io import atomic_write_json

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
TOOLS = ("polm", "mergekit", "mergekit-lowmem")
# mergekit 0.1.5's low-memory options (mergekit/options.py MergeOptions): value and what it does here
MERGEKIT_LOWMEM = {
    "out_shard_size": ("100M", "its TensorWriter keeps the current shard in memory until the shard is full "
                               "(io/tensor_writer.py save_tensor); default 5B holds the whole 0.5 GB model"),
    "lazy_unpickle": (True, "'lower memory usage' for pickled .bin inputs only (io/loader.py: safetensors "
                            "inputs always go through safe_open), so no effect on these inputs"),
    "low_cpu_memory": (True, "keeps results on the math device (merge.py Executor storage_device); on CPU "
                             "that is the CPU already, so no effect here"),
}


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

def mergekit_options(tool: str) -> dict:
    """MergeOptions for a mergekit side (parse_kmb turns "100M" into 100_000_000)."""
    lowmem = {k: v for k, (v, _) in MERGEKIT_LOWMEM.items()} if tool == "mergekit-lowmem" else {}
    return {"quiet": True, **lowmem}


def worker(spec: dict) -> dict:
    started = time.perf_counter()
    mem = common.PeakRss()
    if spec["tool"] == "polm":
        from polm.merge import runner
        from polm.merge.config import MergeConfig

        cfg = MergeConfig(**spec["config"])
        cfg.validate()
        runner.build_plan = mem.wrap("plan", runner.build_plan)
        runner.write_weights = mem.wrap("merge", runner.write_weights)
        runner.write_model_files = mem.wrap("model files", runner.write_model_files)
        runner.write_lineage = mem.wrap("lineage", runner.write_lineage)   # runner holds its own reference
        merge = lambda: runner.run_merge(cfg)  # noqa: E731
    else:
        import torch  # noqa: F401  (imported before the timer, as polm's is)
        from mergekit import merge as mk
        from mergekit.common import parse_kmb
        from mergekit.config import MergeConfiguration
        from mergekit.options import MergeOptions

        config = MergeConfiguration.model_validate(spec["config"])
        options = spec["options"]
        if "out_shard_size" in options:
            options = {**options, "out_shard_size": parse_kmb(options["out_shard_size"])}
        mk.MergePlanner.plan_to_disk = mem.wrap("plan", mk.MergePlanner.plan_to_disk)
        mk.Executor.run = mem.wrap_iter("merge", mk.Executor.run)
        mk._copy_tokenizer = mem.wrap("tokenizer", mk._copy_tokenizer)
        merge = lambda: mk.run_merge(config, spec["out"], options=MergeOptions(**options))  # noqa: E731
    imported = time.perf_counter()
    with mem:
        merge()
    done = time.perf_counter()
    call = mem.as_dict()
    return {"seconds": done - imported, "import_seconds": imported - started, "rss_before_mib": call["rss_before_mib"],
            "merge_call": call}


def tensor_files(model_dir: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it, over every shard of a model directory."""
    from safetensors import safe_open

    found = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            found.update({name: file for name in f.keys()})
    return found


def compare_outputs(a: Path, b: Path) -> dict:
    """max |a − b| and how many entries differ by more than 1e-6, over every tensor, one at a time."""
    from safetensors import safe_open

    files_a, files_b = tensor_files(a), tensor_files(b)
    if set(files_a) != set(files_b):
        return {"max_abs_difference": float("inf"), "entries_differing": None, "entries": None}
    worst, differing, total = 0.0, 0, 0
    for name in files_a:
        with safe_open(str(files_a[name]), "pt") as fa, safe_open(str(files_b[name]), "pt") as fb:
            diff = (fa.get_tensor(name).double() - fb.get_tensor(name).double()).abs()
        worst = max(worst, diff.max().item())
        differing += int((diff > 1e-6).sum())
        total += diff.numel()
    return {"max_abs_difference": worst, "entries_differing": differing, "entries": total,
            "shards": len(set(files_b.values()))}


# --- the comparison ------------------------------------------------------------------------------

def phase_figures(runs: list[dict]) -> dict:
    """Per phase (by name): median seconds, peak and the peak's growth over the phase's starting RSS."""
    names = list(dict.fromkeys(p["name"] for r in runs for p in r["merge_call"]["phases"]))
    out = {}
    for name in names:
        phases = [p for r in runs for p in r["merge_call"]["phases"] if p["name"] == name]
        out[name] = {key: common.median([p[key] for p in phases])
                     for key in ("seconds", "peak_mib", "peak_delta_mib", "anon_at_sampled_peak_mib",
                                 "file_at_sampled_peak_mib")}
    return out


def tool_figures(runs: list[dict]) -> dict:
    """Medians over rounds, min-max in `spread`, every round in `runs`."""
    figures = {
        "seconds": [r["seconds"] for r in runs], "import_seconds": [r["import_seconds"] for r in runs],
        "peak_rss_mib": [r["peak_rss_mib"] for r in runs],                   # the whole process, imports included
        "merge_peak_mib": [r["merge_call"]["peak_mib"] for r in runs],        # the merge call alone
        "merge_peak_delta_mib": [r["merge_call"]["peak_delta_mib"] for r in runs],
        "merge_rss_growth_mib": [r["peak_rss_mib"] - r["rss_before_mib"] for r in runs]}
    return ({key: common.median(v) for key, v in figures.items()}
            | {"spread": {key: common.spread(v) for key, v in figures.items()}, "phases": phase_figures(runs),
               "method": runs[0]["merge_call"]["method"], "runs": runs})


def merge_phase_delta(row: dict, tool: str) -> float:
    return row[tool]["phases"].get("merge", {}).get("peak_delta_mib", float("nan"))


def run_method(method: str, dirs: list[Path], out: Path, repeats: int, env: dict[str, str]) -> dict:
    polm_cfg, mk_cfg = configs(method, dirs, out)
    specs = {"polm": {"tool": "polm", "config": polm_cfg, "name": f"polm {method}"}}
    for tool in TOOLS[1:]:
        specs[tool] = {"tool": tool, "config": mk_cfg, "out": str(out / tool), "options": mergekit_options(tool),
                       "name": f"{tool} {method}"}
    results, _ = common.alternate_workers(SCRIPT, specs, repeats, warmups=specs, env=env,
                                          log=lambda m: print(f"  {method}: {m}", flush=True))
    row = {"method": method, "polm_config": polm_cfg, "mergekit_config": mk_cfg,
           **compare_outputs(out / "polm", out / "mergekit"),
           "lowmem_vs_polm": compare_outputs(out / "polm", out / "mergekit-lowmem")}
    row |= {tool: tool_figures(runs) for tool, runs in results.items()}
    row["speed_ratio"] = row["mergekit"]["seconds"] / row["polm"]["seconds"]
    row["speed_ratio_lowmem"] = row["mergekit-lowmem"]["seconds"] / row["polm"]["seconds"]
    return row


def print_table(rows: list[dict]) -> str:
    headers = ["method", *[f"{t} s" for t in TOOLS], "mk/polm", "mk-low/polm",
               *[f"{t} peak MiB" for t in TOOLS], *[f"{t} call +MiB" for t in TOOLS],
               *[f"{t} merge phase +MiB" for t in TOOLS], "max |Δ|", "entries |Δ|>1e-6"]
    table = common.format_table(headers, [
        [r["method"], *[r[t]["seconds"] for t in TOOLS], r["speed_ratio"], r["speed_ratio_lowmem"],
         *[r[t]["peak_rss_mib"] for t in TOOLS], *[r[t]["merge_peak_delta_mib"] for t in TOOLS],
         *[merge_phase_delta(r, t) for t in TOOLS], f"{r['max_abs_difference']:.1e}",
         f"{r['entries_differing']} of {r['entries']:,}"] for r in rows])
    print(table)
    for r in rows:
        for tool in TOOLS:
            phases = ", ".join(f"{name} +{p['peak_delta_mib']:.0f} MiB ({p['seconds']:.2f} s, file pages "
                               f"{p['file_at_sampled_peak_mib']:.0f})" for name, p in r[tool]["phases"].items())
            print(f"  {r['method']} {tool}: {phases}")
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="TIES only, one round after the warm-up")
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), help="default: all (quick: ties)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per method (default 3, quick 1)")
    parser.add_argument("--inputs", default="/tmp/polm-bench-merge", help="where the three input models live")
    parser.add_argument("--mergekit-path", default=str(ROOT / ".cache" / "mergekit-site"))
    common.add_output_args(parser, "merge_vs_mergekit", threads_help=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if common.serve_worker(args, worker):
        return 0
    methods = args.methods or (["ties"] if args.quick else list(METHODS))
    repeats = args.repeats or (1 if args.quick else 3)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if Path(args.mergekit_path).is_dir():
        env["PYTHONPATH"] = os.pathsep.join([args.mergekit_path, os.environ.get("PYTHONPATH", "")])
    machine = common.machine_description(packages=("torch", "transformers", "safetensors"))
    machine["versions"]["mergekit"] = _mergekit_version(args.mergekit_path)
    inputs = Path(args.inputs)
    print(f"inputs: {MODEL} + two perturbed copies in {inputs}; load {machine['load_avg_1m_at_start']}")
    dirs = prepare_inputs(inputs)
    started = time.perf_counter()
    rows = [run_method(m, dirs, inputs / "out", repeats, env) for m in methods]
    table = print_table(rows)
    settings = {"model": MODEL, "inputs": "base + 2 × (base + 0.01·std·N(0,1)), fp32 safetensors",
                "repeats": repeats, "warmup": 1, "dtype": "float32", "sides": list(TOOLS),
                "order": [f"{r + 1}:{tool}" for r, tool in common.alternation_order(TOOLS, repeats)],
                "shard_size": "5GB (both defaults); mergekit-lowmem: out_shard_size 100M",
                "mergekit_options": {tool: mergekit_options(tool) for tool in TOOLS[1:]},
                "mergekit_lowmem_notes": {k: why for k, (_, why) in MERGEKIT_LOWMEM.items()},
                "timed": "the merge call only",
                "memory": "peak_rss_mib: whole process (imports included); merge_peak_mib / merge_peak_delta_mib: "
                          "the merge call alone (VmHWM reset at its start) and its growth over the RSS it started "
                          "from; phases: the same per phase of the call"}
    out = common.results_path("merge_vs_mergekit", args.quick, args.out)
    path = atomic_write_json(out, {
        "benchmark": "merge_vs_mergekit", "command": common.command_line(SCRIPT), "quick": args.quick,
        "settings": settings, "machine": machine, "load_avg_1m_at_end": common.load_avg_1m(),
        "wall_s": round(time.perf_counter() - started, 1), "results": rows, "table": table})
    print(f"wrote {path}")
    return 0


def _mergekit_version(path: str) -> str | None:
    found = sorted(Path(path).glob("mergekit-*.dist-info"))
    return found[0].name.removeprefix("mergekit-").removesuffix(".dist-info") if found else \
        common.package_versions(["mergekit"])["mergekit"]


if __name__ == "__main__":
    sys.exit(main())
