"""The measured compression table of docs/compress.md, on the embedded SmolLM2-135M-Instruct.

    python bench/compress_smollm2.py                     # every row -> bench/results/compress_smollm2.json
    python bench/compress_smollm2.py --rows dense,int8   # a subset (the JSON then holds those rows only)
    python bench/compress_smollm2.py --quick             # 20 documents / 20 items per task, one speed round

Each row is built with polm's own commands (`quantize_to_dir`, `prune`, `export_gguf`: what
`polm quantize`, `polm prune` and `polm export --format gguf` run), into runs/compress-table/<row>, then
measured in fresh processes:
- quality (one process per row): held-out Wikipedia perplexity (the `perplexity` task, the first
  `--ppl-docs` documents of the seed-1234 permutation, BOS-conditioned), the mean per-token
  KL(dense || row) of the next-token distributions on the same documents and how often both argmaxes
  agree, and greedy accuracy on two reasoning-gym arithmetic tasks (`arith:` tasks, test seed 1234,
  bootstrap 95% CIs);
- speed (one process per row and round, rows alternating order between rounds): greedy decoding of
  8 prompts x `--new-tokens` tokens through polm's generator (every completion forced to full length),
  tokens/s, and the process's peak RSS (load + generate). int8 / int4 rows are also timed as torchao
  quantized models (`torchao_quantize`: the weights held as int codes in memory); other rows run as the
  dense fp32 model transformers loads from the row's directory.

Calibration (GPTQ, Wanda, SparseGPT, depth and width pruning) uses Wikipedia summaries disjoint from the
perplexity documents: `builtin:wiki-summaries?seed=1234&offset=200&n=400`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
CALIBRATION = {"data": "builtin:wiki-summaries?seed=1234&offset=200&n=400", "n_samples": 32, "seq_len": 256,
               "batch_size": 8}
TASKS = ["arith:basic_arithmetic?min_terms=2&max_terms=2&max_digits=2",
         "arith:chain_sum?min_terms=2&max_terms=3&max_digits=2"]
PROMPTS = ["Write a short paragraph about the history of the bicycle.", "What is 17 + 25?",
           "Explain why the sky is blue.", "List three uses of copper.", "Who wrote Hamlet?",
           "Describe a cat in two sentences.", "What is the capital of Japan?", "Give me a tip for learning Python."]

# row -> how it is built. kind: dense | quantize (QuantizeConfig keys) | gguf (quant) | prune (PruneConfig keys)
ROWS: dict[str, dict] = {
    "dense": {"kind": "dense"},
    "int8": {"kind": "quantize", "method": "rtn", "bits": 8, "group_size": -1, "symmetric": True},
    "int4-g32": {"kind": "quantize", "method": "rtn", "bits": 4, "group_size": 32, "symmetric": True},
    "gptq-int4-g32": {"kind": "quantize", "method": "gptq", "bits": 4, "group_size": 32, "symmetric": True},
    "gguf-q8_0": {"kind": "gguf", "quant": "q8_0"},
    "gguf-q4_0": {"kind": "gguf", "quant": "q4_0"},
    "gguf-q4_1": {"kind": "gguf", "quant": "q4_1"},
    "magnitude-50": {"kind": "prune", "method": "magnitude", "sparsity": 0.5},
    "wanda-50": {"kind": "prune", "method": "wanda", "sparsity": 0.5},
    "sparsegpt-50": {"kind": "prune", "method": "sparsegpt", "sparsity": 0.5},
    "wanda-2:4": {"kind": "prune", "method": "wanda", "pattern": "2:4"},
    "sparsegpt-2:4": {"kind": "prune", "method": "sparsegpt", "pattern": "2:4"},
    "depth-25": {"kind": "prune", "method": "depth", "depth": {"fraction": 0.25}},
    "width-mlp25-heads33": {"kind": "prune", "method": "width", "width": {"mlp_fraction": 0.25,
                                                                          "head_fraction": 1 / 3}},
}
TORCHAO_FORMS = {"int8": (8, None), "int4-g32": (4, 32)}


def row_dir(out_root: Path, row: str) -> Path:
    return out_root / row.replace(":", "x")


def build(row: str, out_root: Path) -> dict:
    """Build one row's artifact (cached: a directory with a matching build.json is reused)."""
    spec, out = ROWS[row], row_dir(out_root, row)
    if spec["kind"] == "dense":
        return {"path": _dense_path(), "build_s": 0.0}
    stamp = out / "build.json" if spec["kind"] != "gguf" else out.with_suffix(".build.json")
    if stamp.is_file() and json.loads(stamp.read_text()).get("spec") == spec \
            and json.loads(stamp.read_text()).get("calibration") == CALIBRATION:
        return json.loads(stamp.read_text())
    result = common.run_worker(Path(__file__), {"name": f"build-{row}", "job": "build", "row": row,
                                                "out": str(out)}, timeout_s=3600)
    from polm.io import atomic_write_json
    atomic_write_json(stamp, {**result, "spec": spec, "calibration": CALIBRATION})
    return {**result, "spec": spec}


def _dense_path() -> str:
    from polm.assets import resolve_model
    return resolve_model(MODEL)


def worker(spec: dict) -> dict:
    """One job in a fresh process: build a row, measure its quality, or time its speed in one form."""
    if spec["job"] == "build":
        return build_worker(spec["row"], Path(spec["out"]))
    if spec["job"] == "quality":
        return quality_worker(spec["path"], spec["ppl_docs"], spec["limit"], spec["max_new_tokens"])
    return speed_worker(spec["path"], spec["form"], spec["new_tokens"], spec["threads"])


def build_worker(row: str, out: Path) -> dict:
    spec = {k: v for k, v in ROWS[row].items() if k != "kind"}
    kind = ROWS[row]["kind"]
    t0 = time.perf_counter()
    if kind == "quantize":
        from polm.compress.calibration import CalibrationConfig
        from polm.compress.cli import QuantizeConfig, quantize_to_dir
        cfg = QuantizeConfig(model=MODEL, output=str(out), overwrite=True, calibration=CalibrationConfig(**CALIBRATION),
                             **spec)
        quantize_to_dir(cfg)
        path = str(out)
    elif kind == "gguf":
        from polm.compress.gguf import export_gguf
        path = str(export_gguf(MODEL, out.with_suffix(".gguf"), spec["quant"], overwrite=True))
    else:
        from polm.compress.calibration import CalibrationConfig
        from polm.compress.prune_cli import DepthConfig, PruneConfig, WidthConfig, prune
        from polm.models import ModelConfig
        cfg = PruneConfig(model=ModelConfig(name=MODEL, dtype="fp32"), output=str(out), overwrite=True,
                          calibration=CalibrationConfig(**CALIBRATION),
                          depth=DepthConfig(**spec.pop("depth", {})), width=WidthConfig(**spec.pop("width", {})),
                          **spec)
        path = str(prune(cfg))
    return {"path": path, "build_s": round(time.perf_counter() - t0, 2)}


def load_row(path: str):
    """(model, tokenizer) of a row: an HF directory, or a .gguf file that transformers dequantizes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if p.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
        return model.eval(), tok
    return AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(p)


def disk_bytes(path: str) -> dict:
    """What the row stores: the deployable bytes (see `deployable`) and every file of its output."""
    p = Path(path)
    if p.suffix == ".gguf":
        return {"deployable": p.stat().st_size, "files": {p.name: p.stat().st_size}}
    files = {f.name: f.stat().st_size for f in sorted(p.iterdir()) if f.is_file()}
    if "quantized.safetensors" in files:
        # int codes + scales of the quantized Linears, plus the tensors kept in floating point (embeddings,
        # norms) at the precision model.safetensors holds them in
        from safetensors import safe_open
        quantized = set(json.loads((p / "quantization.json").read_text()).get("layers", {}))
        kept = 0
        with safe_open(p / "model.safetensors", "pt") as f:
            for key in f.keys():
                if key.removesuffix(".weight") not in quantized:
                    t = f.get_slice(key)
                    n = 1
                    for d in t.get_shape():
                        n *= d
                    kept += n * 4
        return {"deployable": files["quantized.safetensors"] + kept, "files": files}
    return {"deployable": sum(v for k, v in files.items() if k.endswith(".safetensors") and k != "masks.safetensors"),
            "files": files}


def kl_to_dense(model, dense, tokenizer, texts: list[str], max_len: int = 512) -> dict:
    """Mean over tokens of KL(p_dense || p_row) of the next-token distribution, and the top-1 agreement."""
    import torch

    total_kl, agree, tokens = 0.0, 0, 0
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor([[bos] + tokenizer(text, add_special_tokens=False)["input_ids"][:max_len - 1]])
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            lq = torch.log_softmax(dense(ids).logits[0, :-1].float(), -1)
            total_kl += float((lq.exp() * (lq - lp)).sum())
            agree += int((lp.argmax(-1) == lq.argmax(-1)).sum())
            tokens += lp.shape[0]
    return {"kl_mean": total_kl / tokens, "top1_agreement": agree / tokens, "tokens": tokens}


def quality_worker(path: str, ppl_docs: int, limit: int, max_new_tokens: int) -> dict:
    import torch

    from polm.eval.model import ModelAdapter
    from polm.eval.runner import evaluate, prepare
    from polm.eval.task import EvalSettings

    torch.manual_seed(0)
    model, tok = load_row(path)
    dense, _ = load_row(_dense_path())
    settings = EvalSettings(max_new_tokens=max_new_tokens)
    ppl_spec = f"perplexity?n={ppl_docs}"
    prepared = prepare([ppl_spec], settings, None) + prepare(TASKS, settings, limit)
    result = evaluate(ModelAdapter(model, tok, batch_size=16, name=Path(path).name), [ppl_spec] + TASKS,
                      settings=settings, prepared=prepared)
    texts = [item["text"] for item in prepared[0][1]]
    out = {"perplexity": result["tasks"][ppl_spec]["metrics"]["perplexity"], "kl": kl_to_dense(model, dense, tok, texts)}
    for spec in TASKS:
        entry = result["tasks"][spec]
        out[spec] = {"accuracy": entry["metrics"][entry["primary_metric"]], "seconds": entry.get("seconds")}
    return out


def speed_worker(path: str, form: str, new_tokens: int, threads: int | None) -> dict:
    import torch

    from polm.rollout.base import SamplingConfig
    from polm.rollout.hf import HFGenerator
    from polm.rollout.text import generate_text

    common.set_threads(threads)
    t0 = time.perf_counter()
    model, tok = load_row(path)
    if form == "torchao":
        from polm.compress.quantize import torchao_quantize
        bits, group = TORCHAO_FORMS[Path(path).name]
        torchao_quantize(model, bits, group, filter_fn=lambda m, name: isinstance(m, torch.nn.Linear)
                         and name != "lm_head")
    load_s = time.perf_counter() - t0
    gen = HFGenerator(model, tok, prompts_per_batch=len(PROMPTS))
    with torch.inference_mode():
        generate_text(gen, tok, PROMPTS, SamplingConfig(n=1, max_new_tokens=4, temperature=0.0), seed=0)  # warm-up
        t1 = time.perf_counter()
        texts = generate_text(gen, tok, PROMPTS, SamplingConfig(n=1, max_new_tokens=new_tokens, temperature=0.0,
                                                                 min_new_tokens=new_tokens), seed=0)
        gen_s = time.perf_counter() - t1
    return {"tokens_per_s": len(PROMPTS) * new_tokens / gen_s, "generate_s": gen_s, "load_s": load_s,
            "sample": texts[1][0][:80]}


def _ci(m: dict, digits: int = 2) -> str:
    return f"{m['value']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"


def markdown(result: dict) -> str:
    """The docs table of a result JSON: one row per compressed model."""
    head = ["row", "perplexity [95% CI]", "KL to dense (nats/token)", "top-1 = dense",
            *[f"{t.split('?')[0].split(':')[1]} acc [95% CI]" for t in result["tasks"]], "MiB on disk",
            "tok/s fp32", "tok/s torchao", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, entry in result["table"].items():
        q, speed = entry["quality"], entry.get("speed_median", {})
        fp32, ao = speed.get("dense-fp32", {}), speed.get("torchao", {})
        cells = [row, _ci(q["perplexity"]), f"{q['kl']['kl_mean']:.4f}", f"{q['kl']['top1_agreement']:.3f}",
                 *[_ci(q[t]["accuracy"]) for t in result["tasks"]], f"{entry['disk']['deployable'] / 2**20:.0f}",
                 f"{fp32['tokens_per_s']:.1f}" if fp32 else "", f"{ao['tokens_per_s']:.1f}" if ao else "",
                 f"{fp32['peak_rss_mib']:.0f}" + (f" / {ao['peak_rss_mib']:.0f}" if ao else "") if fp32 else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ppl-docs", type=int, default=100)
    parser.add_argument("--limit", type=int, default=100, help="items per arithmetic task")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="generation cap of the arithmetic tasks")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads of the speed workers")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true", help="reuse the quality of --merge-from")
    parser.add_argument("--merge-from", type=Path, action="append", default=[],
                        help="earlier result JSONs whose rows' quality is kept (repeatable)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--markdown", type=Path, help="print the docs table of a result JSON and exit")
    common.add_worker_args(parser)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    if common.serve_worker(args, worker):
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if args.quick:
        args.ppl_docs, args.limit, args.speed_rounds = 20, 20, 1
    out_root = ROOT / "runs" / "compress-table"
    started = time.time()
    machine = common.machine_description(packages=("torch", "transformers", "torchao", "gguf"))
    print(f"{machine['cpu']}, load {common.load_avg_1m():.2f}; rows: {', '.join(rows)}", flush=True)
    table: dict[str, dict] = {}
    for row in rows:
        built = build(row, out_root)
        table[row] = {"build": {k: v for k, v in built.items() if k != "spec"}, "disk": disk_bytes(built["path"])}
        print(f"[{row}] built in {built['build_s']} s -> {built['path']}", flush=True)
    earlier = {row: entry for f in args.merge_from for row, entry in json.loads(f.read_text())["table"].items()}
    for row in rows:
        if args.skip_quality:
            if "quality" not in earlier.get(row, {}):
                sys.exit(f"--skip-quality: no --merge-from file has the quality of row {row}")
            table[row]["quality"] = q = earlier[row]["quality"]
        else:
            q = common.run_worker(Path(__file__), {"name": f"quality-{row}", "job": "quality",
                                                   "path": table[row]["build"]["path"], "ppl_docs": args.ppl_docs,
                                                   "limit": args.limit, "max_new_tokens": args.max_new_tokens},
                                  timeout_s=3600)
            table[row]["quality"] = q
        accs = " ".join(f"{q[t]['accuracy']['value']:.2f}" for t in TASKS)
        print(f"[{row}] ppl {q['perplexity']['value']:.3f} KL {q['kl']['kl_mean']:.4f} acc {accs}", flush=True)
    if not args.skip_speed:
        forms = [(row, "dense-fp32") for row in rows] + [(row, "torchao") for row in rows if row in TORCHAO_FORMS]
        for _, (row, form) in common.alternation_order(forms, args.speed_rounds):
            s = common.run_worker(Path(__file__), {"name": f"speed-{row}", "job": "speed", "form": form,
                                                   "path": table[row]["build"]["path"], "threads": args.threads,
                                                   "new_tokens": args.new_tokens}, timeout_s=1800)
            table[row].setdefault("speed", {}).setdefault(form, []).append(s)
            print(f"[{row}/{form}] {s['tokens_per_s']:.1f} tok/s, peak {s['peak_rss_mib']:.0f} MiB", flush=True)
        for row in rows:
            for form, trials in table[row].get("speed", {}).items():
                table[row].setdefault("speed_median", {})[form] = {
                    "tokens_per_s": common.median([t["tokens_per_s"] for t in trials]),
                    "peak_rss_mib": common.median([t["peak_rss_mib"] for t in trials])}
    result = {"command": common.command_line(__file__, sys.argv[1:]), "machine": machine,
              "load_1m_end": common.load_avg_1m(), "calibration": CALIBRATION, "tasks": TASKS,
              "ppl_docs": args.ppl_docs, "limit": args.limit, "max_new_tokens": args.max_new_tokens, "new_tokens": args.new_tokens,
              "prompts": PROMPTS, "rows": {r: ROWS[r] for r in rows}, "table": table,
              "wall_s": round(time.time() - started, 1)}
    out = common.results_path("compress_smollm2", args.quick, args.out)
    from polm.io import atomic_write_json
    atomic_write_json(out, result)
    print(common.format_table(
        ["row", "ppl", "KL", "top1", *[t.split("?")[0] for t in TASKS], "MiB on disk", "tok/s", "peak MiB"],
        [[r, f"{table[r]['quality']['perplexity']['value']:.2f}", f"{table[r]['quality']['kl']['kl_mean']:.4f}",
          f"{table[r]['quality']['kl']['top1_agreement']:.3f}",
          *[f"{table[r]['quality'][t]['accuracy']['value']:.2f}" for t in TASKS],
          f"{table[r]['disk']['deployable'] / 2**20:.0f}",
          *([f"{table[r]['speed_median']['dense-fp32']['tokens_per_s']:.1f}",
             f"{table[r]['speed_median']['dense-fp32']['peak_rss_mib']:.0f}"] if "speed_median" in table[r] else ["", ""])]
         for r in rows]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
