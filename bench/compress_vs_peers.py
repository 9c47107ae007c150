"""polm's compression vs its peers: GPTQ / Wanda / SparseGPT against llm-compressor, int8 and int4 RTN against
torchao, GGUF export against llama.cpp's converter; time, peak memory and held-out perplexity.

    python bench/compress_vs_peers.py --quick          # a tiny random Llama, 4 windows, one round (plumbing check)
    python bench/compress_vs_peers.py                  # SmolLM2-135M-Instruct, 32 × 256 tokens, warm-up + 3 rounds
    python bench/compress_vs_peers.py --pairs gptq wanda --repeats 5

Inputs: one fp32 model directory (the embedded SmolLM2-135M-Instruct, or with --quick a 2-layer random Llama
with its tokenizer) and one calibration set written once to --inputs: `n_samples` windows of `seq_len` tokens
cut by `polm.compress.calibration.calibration_batches` from Wikipedia summaries disjoint from the perplexity
set (`builtin:wiki-summaries?n=400&seed=1234&offset=200`; the perplexity task's held-out set is the first 200
of seed 1234). Both sides of a pair get the very same token windows in the same batches.

Pairs (settings in PAIRS; both sides exclude lm_head, which is tied to the embeddings):
  gptq       polm `gptq_model` vs llm-compressor `GPTQModifier`: int4 symmetric, group 64, block 128, damp 0.01,
             no act-order, sequential layer-by-layer calibration on both sides
  wanda      polm `prune_layerwise(method="wanda")` vs `WandaPruningModifier`: 50% unstructured, per row
  sparsegpt  polm `prune_layerwise(method="sparsegpt")` vs `SparseGPTModifier`: 50% unstructured, block 128, damp 0.01
  int8       polm `rtn_model` int8 per channel vs torchao `Int8WeightOnlyConfig` (quantize_ called directly)
  int4       polm `rtn_model` int4 symmetric group 64 vs torchao `IntxWeightOnlyConfig(int4, PerGroup(64))`
  gguf       polm `write_gguf` q8_0 vs llama.cpp's `convert_hf_to_gguf.py --outtype q8_0` where --convert-script
             points at one (whole process, load and write included, on both sides); otherwise polm alone
llm-compressor runs in its own virtual environment (--llmc-python, default /work/peers/llmc/bin/python: torch
2.13.0 CPU + llmcompressor==0.14.0.1, which brings transformers 5.17 and compressed-tensors 0.19), so it never
touches polm's. Where it is missing or fails, the result JSON says so (`peers_unavailable`) and the other pairs
still run. Every trial is a fresh process; sides alternate A B, B A after one warm-up of each (none with
--quick). Timed: the compression call alone (`seconds`; loading and saving apart in `load_seconds` /
`save_seconds`); memory: the whole process's peak RSS and the call's own peak over the RSS it started from
(`common.PeakRss`). After the last round each side's output directory is evaluated in a fresh polm process with
polm's `perplexity` task (`--ppl-docs` held-out summaries), and pruned outputs are compared mask by mask.
Both GPTQ sides save compressed-tensors `pack-quantized` checkpoints (polm through
`polm.compress.compressed_tensors_format`), so their sizes on disk compare too.
Writes bench/results/compress_vs_peers.json (_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import common

from polm.io import atomic_write_json

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
MODEL = "smollm2-135m-instruct"
CALIBRATION = "builtin:wiki-summaries?n=400&seed=1234&offset=200"   # disjoint from the perplexity set
GROUP = 64          # divides SmolLM2's 576 and 1536, and the quick model's 128 and 256
PAIRS = {
    "gptq": {"sides": ("polm", "llmcompressor"), "bits": 4, "group_size": GROUP, "block_size": 128, "damp": 0.01},
    "wanda": {"sides": ("polm", "llmcompressor"), "sparsity": 0.5},
    "sparsegpt": {"sides": ("polm", "llmcompressor"), "sparsity": 0.5, "block_size": 128, "damp": 0.01},
    "int8": {"sides": ("polm", "torchao"), "bits": 8, "group_size": -1},
    "int4": {"sides": ("polm", "torchao"), "bits": 4, "group_size": GROUP},
    "gguf": {"sides": ("polm", "llama.cpp"), "quant": "q8_0"},
}
LLMC_VERSION = "0.14.0.1"


# --- inputs --------------------------------------------------------------------------------------

def prepare_inputs(root: Path, quick: bool, n_samples: int, seq_len: int, batch_size: int) -> tuple[Path, Path]:
    """The model directory and calib.safetensors (`input_ids` [n_samples, seq_len]); reused when present."""
    import torch
    from safetensors.torch import save_file

    from polm.assets import resolve_model
    from polm.compress.calibration import calibration_batches
    from polm.models import load_tokenizer

    model_dir, calib = root / ("tiny" if quick else "model"), root / f"calib-{n_samples}x{seq_len}.safetensors"
    if not (model_dir / "done").is_file():
        shutil.rmtree(model_dir, ignore_errors=True)
        source = Path(resolve_model(MODEL))
        if quick:
            _tiny_model(source, model_dir)
        else:
            shutil.copytree(source, model_dir)
        (model_dir / "done").write_text("ok")
    if not calib.is_file():
        tokenizer = load_tokenizer(str(model_dir))
        batches = calibration_batches(CALIBRATION, tokenizer, n_samples=n_samples, seq_len=seq_len,
                                      batch_size=batch_size)
        save_file({"input_ids": torch.cat(batches).contiguous()}, calib)
    return model_dir, calib


def _tiny_model(source: Path, out: Path) -> None:
    """A seeded 2-layer Llama (hidden 128, MLP 256, 4 heads / 2 KV heads) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- one trial (a fresh process) -----------------------------------------------------------------

def worker(spec: dict) -> dict:
    """Load, compress (timed, with its own peak memory), save; or evaluate perplexity (`spec["tool"] == "ppl"`)."""
    if spec["tool"] == "ppl":
        return perplexity(spec)
    if spec["pair"] == "gguf":
        return gguf_worker(spec)
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    compress, save = _prepare_side(spec)
    ids = load_file(spec["calib"])["input_ids"]
    batches = list(ids.split(spec["batch_size"]))
    imported = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    loaded = time.perf_counter()
    mem = common.PeakRss()
    with mem:
        compress(model, batches)
    done = time.perf_counter()
    shutil.rmtree(spec["out"], ignore_errors=True)
    save(model, tokenizer, spec["out"])
    call = mem.as_dict()
    return {"seconds": done - loaded, "import_seconds": imported - started, "load_seconds": loaded - imported,
            "save_seconds": time.perf_counter() - done, "rss_before_mib": call["rss_before_mib"],
            "call_peak_mib": call["peak_mib"], "call_peak_delta_mib": call["peak_delta_mib"],
            "memory_method": call["method"]}


def _prepare_side(spec: dict):
    """(compress(model, batches), save(model, tokenizer, out)) for one side, its imports done here (untimed)."""
    pair, tool, p = spec["pair"], spec["tool"], PAIRS[spec["pair"]]
    if tool == "llmcompressor":
        return _llmc_side(pair, p)
    if tool == "torchao":
        return _torchao_side(p)
    return _polm_side(pair, p)


def _plain_save(model, tokenizer, out: str) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _polm_side(pair: str, p: dict):
    from polm.compress.gptq import gptq_model
    from polm.compress.prune import Sparsity
    from polm.compress.prune_layers import prune_layerwise
    from polm.compress.quantize import rtn_model, select_linears

    group = None if p.get("group_size", -1) == -1 else p["group_size"]
    codes: dict = {}

    def compress(model, batches):
        if pair == "gptq":
            codes.update(gptq_model(model, batches, select_linears(model), bits=p["bits"], group_size=group,
                                    symmetric=True, block_size=p["block_size"], percdamp=p["damp"], act_order=False))
        elif pair in ("wanda", "sparsegpt"):
            options = {"block_size": p["block_size"], "damp": p["damp"]} if pair == "sparsegpt" else None
            prune_layerwise(model, batches, pair, Sparsity(fraction=p["sparsity"]), options)
        else:
            rtn_model(select_linears(model), p["bits"], group, symmetric=True)

    def save(model, tokenizer, out):   # GPTQ as compressed-tensors pack-quantized, as llm-compressor saves it
        _plain_save(model, tokenizer, out)
        if pair == "gptq":
            _save_compressed_tensors(model, codes, out, p)
    return compress, save


def _save_compressed_tensors(model, codes: dict, out: str, p: dict) -> None:
    from polm.compress.compressed_tensors_format import checkpoint_files

    for name, content in checkpoint_files(model, codes, p["bits"], p["group_size"], True).items():
        target = Path(out) / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)


def _torchao_side(p: dict):
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    config = Int8WeightOnlyConfig() if p["bits"] == 8 else IntxWeightOnlyConfig(
        weight_dtype=torch.int4, granularity=PerGroup(p["group_size"]))

    def compress(model, batches):
        quantize_(model, config, filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and name != "lm_head")

    def save(model, tokenizer, out):   # dequantized, so the perplexity process loads it as a plain model
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and hasattr(module.weight, "dequantize"):
                module.weight = torch.nn.Parameter(module.weight.dequantize().float(), requires_grad=False)
        _plain_save(model, tokenizer, out)
    return compress, save


def _llmc_side(pair: str, p: dict):
    """llm-compressor's `oneshot` on the same batches (a DataLoader of ready [B, L] batches, in order)."""
    import torch
    from llmcompressor import oneshot

    recipe = _llmc_recipe(pair, p)

    def compress(model, batches):
        loader = torch.utils.data.DataLoader(
            [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in batches], batch_size=None)
        oneshot(model=model, dataset=loader, recipe=recipe, num_calibration_samples=sum(len(b) for b in batches),
                max_seq_length=batches[0].shape[1], pipeline="sequential")

    def save(model, tokenizer, out):   # GPTQ as pack-quantized (polm's venv loads it), pruned weights dense
        model.save_pretrained(out, save_compressed=pair == "gptq")
        tokenizer.save_pretrained(out)
    return compress, save


def _llmc_recipe(pair: str, p: dict):
    if pair == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        weights = {"num_bits": p["bits"], "type": "int", "symmetric": True, "strategy": "group",
                   "group_size": p["group_size"]}
        return GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                            ignore=["lm_head"], block_size=p["block_size"], dampening_frac=p["damp"], actorder=None)
    if pair == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        return WandaPruningModifier(sparsity=p["sparsity"], mask_structure="0:0", targets=["Linear"],
                                    ignore=["lm_head"])
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    return SparseGPTModifier(sparsity=p["sparsity"], mask_structure="0:0", block_size=p["block_size"],
                             dampening_frac=p["damp"], targets=["Linear"], ignore=["lm_head"])


def gguf_worker(spec: dict) -> dict:
    """The whole export, as a user runs it: polm's `export_gguf` in-process, or the converter script as a child
    process (its time and peak memory are then the child's, read from its rusage)."""
    import resource
    import subprocess

    out = Path(spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    if spec["tool"] == "polm":
        from polm.compress.gguf import export_gguf

        export_gguf(spec["model_dir"], out, PAIRS["gguf"]["quant"])
        peak = common.peak_rss_mib()
    else:
        subprocess.run([sys.executable, spec["convert_script"], spec["model_dir"], "--outfile", str(out),
                        "--outtype", PAIRS["gguf"]["quant"]], check=True, capture_output=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": time.perf_counter() - started, "call_peak_mib": round(peak, 1),
            "file_mib": round(out.stat().st_size / 2**20, 2)}


def perplexity(spec: dict) -> dict:
    """polm's `perplexity` task (held-out Wikipedia summaries) on one output directory."""
    from polm.eval.runner import evaluate

    result = evaluate(spec["out"], ["perplexity"], limit=spec["docs"], batch_size=4, device="cpu", dtype="fp32")
    metric = next(iter(result["tasks"].values()))["metrics"]["perplexity"]
    return {"perplexity": metric["value"], "ci": [metric["ci_low"], metric["ci_high"]], "docs": metric["n"]}


# --- the comparison ------------------------------------------------------------------------------

def mask_agreement(a: Path, b: Path) -> dict:
    """Over every decoder-layer Linear weight: the fraction of entries both outputs zero or both keep."""
    from safetensors import safe_open

    same = total = 0
    with safe_open(str(a / "model.safetensors"), "pt") as fa, safe_open(str(b / "model.safetensors"), "pt") as fb:
        for name in fa.keys():
            if ".layers." in name and name.endswith("proj.weight"):
                za, zb = fa.get_tensor(name) == 0, fb.get_tensor(name) == 0
                same += int((za == zb).sum())
                total += za.numel()
    return {"mask_agreement": same / max(total, 1), "weights_compared": total}


def side_figures(runs: list[dict]) -> dict:
    keys = [k for k in ("seconds", "load_seconds", "save_seconds", "peak_rss_mib", "call_peak_mib",
                        "call_peak_delta_mib", "file_mib") if k in runs[0]]
    return {k: common.median([r[k] for r in runs]) for k in keys} | {
        "spread": {k: common.spread([r[k] for r in runs]) for k in keys}, "runs": runs}


def run_pair(pair: str, args, model_dir: Path, calib: Path, env: dict, llmc: str | None) -> dict:
    out_root = Path(args.inputs) / "out" / pair
    specs = {}
    for tool in PAIRS[pair]["sides"]:
        name = f"{pair} {tool}"
        spec = {"pair": pair, "tool": tool, "name": name, "model_dir": str(model_dir), "calib": str(calib),
                "batch_size": args.batch_size, "out": str(out_root / tool.replace(".", "") /
                                                            ("model.gguf" if pair == "gguf" else ""))}
        if tool == "llmcompressor":
            if llmc is None:
                continue
            spec["python"] = llmc
        if tool == "llama.cpp":
            if not args.convert_script:
                continue
            spec["convert_script"] = args.convert_script
        specs[tool] = spec
    results, _ = common.alternate_workers(SCRIPT, specs, args.repeats, warmups=None if args.quick or args.no_warmup else specs,
                                          env=env, log=lambda m: print(f"  {pair}: {m}", flush=True))
    row = {"pair": pair, "settings": {k: v for k, v in PAIRS[pair].items() if k != "sides"},
           "sides": list(specs), **{tool: side_figures(runs) for tool, runs in results.items()}}
    if pair != "gguf":
        for tool, spec in specs.items():
            ppl = common.run_worker(SCRIPT, {"tool": "ppl", "name": f"{pair} {tool} ppl", "out": spec["out"],
                                             "docs": args.ppl_docs}, env=env)
            row[tool] |= {"perplexity": ppl["perplexity"], "perplexity_ci": ppl["ci"], "perplexity_docs": ppl["docs"]}
            row[tool]["disk_mib"] = round(sum(f.stat().st_size for f in Path(spec["out"]).rglob("*")) / 2**20, 2)
    peer = next((t for t in specs if t != "polm"), None)
    if peer is not None:
        row["time_ratio_peer_over_polm"] = row[peer]["seconds"] / row["polm"]["seconds"]
        if pair in ("wanda", "sparsegpt"):
            row["masks"] = mask_agreement(Path(specs["polm"]["out"]), Path(specs[peer]["out"]))
    return row


def print_table(rows: list[dict]) -> str:
    headers = ["pair", "side", "s (call)", "call +MiB", "process peak MiB", "perplexity", "disk MiB"]
    table = common.format_table(headers, [
        [r["pair"], tool, r[tool]["seconds"], r[tool].get("call_peak_delta_mib", r[tool].get("call_peak_mib")),
         r[tool]["peak_rss_mib"], r[tool].get("perplexity", "-"), r[tool].get("disk_mib", r[tool].get("file_mib"))]
        for r in rows for tool in r["sides"]])
    print(table)
    return table


def llmc_status(python: str) -> tuple[str | None, str]:
    """(the llm-compressor interpreter, its package versions) if llmcompressor imports there, else (None, why)."""
    import subprocess

    if not Path(python).is_file():
        return None, (f"no interpreter at {python}: create it with `python3 -m venv /work/peers/llmc`, then pip "
                      f"install torch==2.13.0 (CPU) and llmcompressor=={LLMC_VERSION}")
    code = ("import llmcompressor, torch, transformers, compressed_tensors as ct; print(f'llmcompressor "
            "{llmcompressor.__version__} torch {torch.__version__} transformers {transformers.__version__} "
            "compressed-tensors {ct.__version__}')")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, "does not import: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return python, proc.stdout.strip().splitlines()[-1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random Llama, 4 windows of 64 tokens, one round")
    parser.add_argument("--pairs", nargs="*", choices=list(PAIRS), help="default: all")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per pair (default 3, quick 1)")
    parser.add_argument("--n-samples", type=int, default=None, help="calibration windows (default 32, quick 4)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per window (default 256, quick 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-warmup", action="store_true", help="no warm-up trial per side (a shorter run)")
    parser.add_argument("--ppl-docs", type=int, default=None, help="held-out summaries (default 200, quick 8)")
    parser.add_argument("--inputs", default="/tmp/polm-bench-compress", help="model, calibration set and outputs")
    parser.add_argument("--llmc-python", default="/work/peers/llmc/bin/python")
    parser.add_argument("--convert-script", help="llama.cpp's convert_hf_to_gguf.py, if there is one")
    common.add_output_args(parser, "compress_vs_peers", threads_help=None)
    args = parser.parse_args(argv)
    for key, full, quick in (("repeats", 3, 1), ("n_samples", 32, 4), ("seq_len", 256, 64), ("ppl_docs", 200, 8)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if common.serve_worker(args, worker):
        return 0
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    llmc, llmc_note = llmc_status(args.llmc_python)
    unavailable = {} if llmc else {"llmcompressor": llmc_note}
    if not args.convert_script:
        unavailable["llama.cpp"] = ("llama.cpp's convert_hf_to_gguf.py is in neither the gguf package nor an "
                                    "installable wheel here; polm's GGUF export is reported alone")
    machine = common.machine_description(packages=("torch", "transformers", "torchao", "gguf", "compressed-tensors"))
    machine["llmcompressor_env"] = llmc_note if llmc else None
    inputs = Path(args.inputs)
    model_dir, calib = prepare_inputs(inputs, args.quick, args.n_samples, args.seq_len, args.batch_size)
    print(f"model {model_dir}, calibration {args.n_samples} × {args.seq_len} tokens; load "
          f"{machine['load_avg_1m_at_start']}; unavailable: {unavailable or 'none'}", flush=True)
    started = time.perf_counter()
    rows = [run_pair(pair, args, model_dir, calib, env, llmc) for pair in (args.pairs or list(PAIRS))]
    table = print_table(rows)
    settings = {"model": "tiny random Llama (2 layers, hidden 128)" if args.quick else MODEL,
                "calibration": {"data": CALIBRATION, "n_samples": args.n_samples, "seq_len": args.seq_len,
                                "batch_size": args.batch_size},
                "perplexity": {"task": "perplexity", "docs": args.ppl_docs}, "repeats": args.repeats,
                "warmup": 0 if args.quick or args.no_warmup else 1, "pairs": PAIRS, "dtype": "float32",
                "timed": "the compression call only (gguf: the whole export)",
                "memory": "peak_rss_mib: whole process; call_peak_mib / call_peak_delta_mib: the call alone"}
    out = common.results_path("compress_vs_peers", args.quick, args.out)
    path = atomic_write_json(out, {
        "benchmark": "compress_vs_peers", "command": common.command_line(SCRIPT), "quick": args.quick,
        "settings": settings, "machine": machine, "peers_unavailable": unavailable,
        "load_avg_1m_at_end": common.load_avg_1m(), "wall_s": round(time.perf_counter() - started, 1),
        "results": rows, "table": table})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
