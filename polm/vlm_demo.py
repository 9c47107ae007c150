"""The measured VLM demo: the seed tutorial's zero-shot -> few-shot -> fine-tuned table on Fashion-MNIST.

    polm vlm-demo configs/vlm_demo.yaml            # the measured run (sized for <= 30 min on 2 CPU cores)
    polm vlm-demo configs/vlm_demo.yaml --smoke    # every phase on a few images, a minute or two

Phases, each timed:
1. data: seeded, disjoint slices of the Fashion-MNIST train split (stage-2 classification, stage-2
   captioning, dev, few-shot exemplars) and of the test split (held out from everything), written as
   JSONL; reference captions derived from the pixels (`caption_of`);
2. mlp: a plain MLP on raw pixels (scikit-learn, seeded) on the same train / dev / test images;
3. features: every Fashion-MNIST image through the frozen tower once, into the on-disk feature cache
   that both stages and every evaluation read (polm.vlm.features);
4. stage 1: projector alignment (`polm vlm`) on a source that is neither these images nor this task
   (default: MNIST digit captions), then its zero-shot and k-shot rows (classification and captioning);
5. stage 2: LoRA instruction tuning from stage 1 on the classification and captioning records, then the
   fine-tuned rows, on the test set and the dev set.
The result file (`results_file`) holds the table with bootstrap CIs, the paired differences, what
stage 1 saw, sizes, seeds, wall time per phase and the machine; the loss curves and confusion matrices
are copied to `images_dir`. Both are written atomically, at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polm.config import add_config_arguments, config_from_args
from polm.errors import PolmError
from polm.eval.stats import paired_difference, summarize
from polm.io import atomic_file, atomic_write_json
from polm.recipes.vlm import VLMConfig, VLMEval, evaluate, run_vlm
from polm.rundir import check_output_dir
from polm.vlm.data import FASHION_MNIST_CLASSES, load_image_records, record_images

CLASSIFY_PROMPT = "What item of clothing is this?"
CAPTION_PROMPT = "Describe the image."
FOREGROUND = 30          # a pixel above this grey level belongs to the garment (the background is 0)
SMOKE = ["n_train=16", "n_caption_train=8", "n_dev=6", "n_exemplars=8", "n_test=8", "n_caption_test=6",
         "n_stage1=16", "stage1.train.max_steps=2", "stage2.train.max_steps=2", "stage1.train.warmup_steps=0",
         "stage2.train.warmup_steps=0", "max_new_tokens=4", "caption_max_new_tokens=6", "shots=1"]


@dataclass
class MLPReference:
    hidden: list[int] = field(default_factory=lambda: [256])
    max_iter: int = 100
    alpha: float = 1.0e-4


@dataclass
class VLMDemoConfig:
    output_dir: str = "runs/vlm-demo"
    results_file: str = "docs/results/vlm_fashion_mnist.json"
    images_dir: str = "docs/img"
    fashion_dir: str | None = None          # the Fashion-MNIST IDX folder (default: the Debian package's)
    stage1_source: str = "builtin:mnist?split=train&prompt=Describe the image.&answer=a handwritten digit {label}"
    n_stage1: int = 2000
    n_train: int = 2000                     # stage-2 classification records (Fashion-MNIST train split)
    n_caption_train: int = 400              # stage-2 captioning records (other train images)
    n_dev: int = 200                        # for any choice; the test split decides nothing
    n_exemplars: int = 200                  # the k-shot pool (other train images)
    n_test: int = 500                       # held-out test images (classification)
    n_caption_test: int = 200               # the first of them, with reference captions
    shots: int = 3
    seed: int = 0
    max_new_tokens: int = 8
    caption_max_new_tokens: int = 16
    eval_batch_size: int = 8
    eval_max_length: int = 256              # room for k-shot prompts: (k + 1) images x 16 tokens + text
    mlp: MLPReference = field(default_factory=MLPReference)
    stage1: VLMConfig = field(default_factory=VLMConfig)
    stage2: VLMConfig = field(default_factory=VLMConfig)
    overwrite: bool = False

    def validate(self) -> None:
        if self.n_caption_test > self.n_test:
            raise PolmError(f"n_caption_test={self.n_caption_test} exceeds n_test={self.n_test}",
                            fix="Caption test images are the first n_caption_test test images.")
        if self.shots < 1:
            raise PolmError(f"shots must be >= 1 (the few-shot row), got {self.shots}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/vlm_demo.yaml")
    parser.add_argument("--smoke", action="store_true",
                        help="every phase on a few images and 2 steps per stage; outputs under <output_dir>-smoke")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(VLMDemoConfig, args)
    if args.smoke:   # small sizes and, unless given, every output under <output_dir>-smoke
        given = {item.split("=", 1)[0] for item in args.items if "=" in item}
        out = cfg.output_dir if "output_dir" in given else f"{cfg.output_dir}-smoke"
        extra = [o for o in [*SMOKE, f"output_dir={out}", f"results_file={out}/vlm_fashion_mnist.json",
                             f"images_dir={out}/img"] if o.split("=", 1)[0] not in given]
        cfg = config_from_args(VLMDemoConfig, args, extra)
    run_demo(cfg, command=["polm", "vlm-demo", *args.items, *(["--smoke"] if args.smoke else [])])
    return 0


class Phases:
    """Wall time per phase, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *a, **kw):
        start = time.perf_counter()
        print(f"[vlm-demo] {name} ...", flush=True)
        out = fn(*a, **kw)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        print(f"[vlm-demo] {name}: {self.seconds[name]:.1f}s", flush=True)
        return out


def run_demo(cfg: VLMDemoConfig, command: list[str] | None = None) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir / "stage1", resume=False, overwrite=cfg.overwrite)
    load_start, wall_start, phases = os.getloadavg()[0], time.perf_counter(), Phases()
    splits = phases("data", write_splits, cfg, run_dir / "data")
    mlp = phases("mlp", mlp_reference, cfg, splits)
    features = str(run_dir / "features")
    s1 = stage_config(cfg.stage1, run_dir / "stage1", splits["stage1"], features, None, cfg.overwrite)
    s2 = stage_config(cfg.stage2, run_dir / "stage2", splits["stage2"], features, str(run_dir / "stage1" / "final"),
                      cfg.overwrite)
    encoded = phases("features", encode_images, s1, splits, features)

    stage1 = phases("stage1_train", run_vlm, s1)
    rows = phases("stage1_eval", evaluate_rows, cfg, stage1, splits, run_dir / "eval" / "stage1",
                  shots=[0, cfg.shots])
    del stage1   # free the stage-1 model before stage 2 loads its own
    stage2 = phases("stage2_train", run_vlm, s2)
    rows_ft = phases("stage2_eval", evaluate_rows, cfg, stage2, splits, run_dir / "eval" / "stage2", shots=[0],
                     dev=True)
    table = results_table(cfg, rows, rows_ft, mlp)
    result = {
        "command": " ".join(command or ["polm", "vlm-demo"]), "config": dataclasses.asdict(cfg),
        "sizes": splits["sizes"], "seeds": {"split": cfg.seed, "stage1": s1.train.seed, "stage2": s2.train.seed,
                                            "eval": cfg.seed, "mlp": cfg.seed},
        "stage1_saw": splits["stage1_saw"], "captions": splits["captions"], "features": encoded,
        "stage1": stage_summary(s1, run_dir / "stage1"), "stage2": stage_summary(s2, run_dir / "stage2"),
        **table, "wall_s": {**phases.seconds, "total": round(time.perf_counter() - wall_start, 2)},
        "machine": machine(load_start),
    }
    result["images"] = copy_images(cfg, run_dir)
    atomic_write_json(cfg.results_file, result)
    print_table(result)
    return result


# --- 1. data -----------------------------------------------------------------------------------------

def caption_of(image: np.ndarray, label: str, tone_cuts: tuple[float, float], size_cut: float) -> str:
    """'a <size> <tone> <item>': tone from the mean grey level of the garment's pixels (> FOREGROUND) cut at
    the train captions' terciles; size from the garment's share of the 28x28 frame cut at their median."""
    item = label.lower().replace("/", " or ")
    fg = image[image > FOREGROUND]
    tone_value = float(fg.mean()) if fg.size else 0.0
    tone = "dark" if tone_value < tone_cuts[0] else "grey" if tone_value < tone_cuts[1] else "light"
    size = "small" if fg.size / image.size < size_cut else "large"
    return f"a {size} {tone} {item}"


def caption_cuts(images: list[np.ndarray]) -> tuple[tuple[float, float], float]:
    tones = [float(im[im > FOREGROUND].mean()) if (im > FOREGROUND).any() else 0.0 for im in images]
    sizes = [float((im > FOREGROUND).mean()) for im in images]
    low, high = np.quantile(tones, [1 / 3, 2 / 3])
    return (float(low), float(high)), float(np.median(sizes))


def fashion_records(cfg: VLMDemoConfig, split: str) -> list[dict]:
    query = f"split={split}&seed={cfg.seed}" + (f"&dir={cfg.fashion_dir}" if cfg.fashion_dir else "")
    return load_image_records(f"builtin:fashion-mnist?{query}")


def write_splits(cfg: VLMDemoConfig, folder: Path) -> dict:
    """Disjoint seeded slices of the train split (stage-2 classification | captioning | dev | exemplars) and
    the first n_test images of the seeded test split, as JSONL of {"image": pixels, "prompt", "completion"}."""
    train, test = fashion_records(cfg, "train"), fashion_records(cfg, "test")
    sizes = [cfg.n_train, cfg.n_caption_train, cfg.n_dev, cfg.n_exemplars]
    if sum(sizes) > len(train) or cfg.n_test > len(test):
        raise PolmError(f"the splits need {sum(sizes)} train and {cfg.n_test} test images; Fashion-MNIST has "
                        f"{len(train)} and {len(test)}", fix="Lower n_train / n_caption_train / n_dev / n_exemplars.")
    bounds = np.cumsum([0, *sizes])
    cls, cap, dev, exm = (train[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
    test = test[:cfg.n_test]
    pixels = {id(r): record_images(r)[0] for r in [*cls, *cap, *dev, *exm, *test]}
    tone_cuts, size_cut = caption_cuts([pixels[id(r)] for r in cap])

    def rows(recs: list[dict], task: str) -> list[dict]:
        out = []
        for r in recs:
            img = pixels[id(r)]
            answer = r["label"] if task == "classify" else caption_of(img, r["label"], tone_cuts, size_cut)
            row = {"image": img.tolist(), "prompt": CLASSIFY_PROMPT if task == "classify" else CAPTION_PROMPT,
                   "completion": answer, "label": r["label"], "source": r["where"], "task": task}
            out.append(row if task == "classify" else {**row, "references": [answer]})   # CIDEr's references
        return out

    stage2 = rows(cls, "classify") + rows(cap, "caption")
    random.Random(cfg.seed).shuffle(stage2)
    stage1 = stage1_rows(cfg)
    files = {"stage1": stage1, "stage2": stage2, "dev": rows(dev, "classify"), "exemplars": rows(exm, "classify"),
             "caption_exemplars": rows(exm, "caption"), "test": rows(test, "classify"),
             "caption_test": rows(test[:cfg.n_caption_test], "caption")}
    out = {name: str(write_jsonl(folder / f"{name}.jsonl", recs)) for name, recs in files.items()}
    labels = sorted({str(r["label"]) for r in stage1 if r["label"] is not None})
    out["stage1_saw"] = {"source": cfg.stage1_source, "records": len(stage1), "prompt": stage1[0]["prompt"],
                         "answers": sorted({r["completion"] for r in stage1}), "labels": labels,
                         "fashion_mnist_images": 0, "note": "no Fashion-MNIST image and not the clothing question"}
    out["captions"] = {"template": "a <size> <tone> <item>", "item": "the class name, lower case, '/' -> ' or '",
                       "tone": f"mean grey level of pixels > {FOREGROUND}: dark < {tone_cuts[0]:.1f} <= grey < "
                               f"{tone_cuts[1]:.1f} <= light (terciles of the captioning train images)",
                       "size": f"share of pixels > {FOREGROUND}: small < {size_cut:.4f} <= large (their median)",
                       "prompt": CAPTION_PROMPT, "examples": [r["completion"] for r in files["caption_test"][:5]]}
    out["sizes"] = {name: len(recs) for name, recs in files.items()}
    return out


def stage1_rows(cfg: VLMDemoConfig) -> list[dict]:
    recs = load_image_records(cfg.stage1_source)[:cfg.n_stage1]
    if any(CLASSIFY_PROMPT in m["content"] for r in recs for m in r["messages"]):
        raise PolmError("stage 1's source asks the test question", where="stage1_source",
                        fix="Stage 1 must not contain the test task: use captions of other images.")
    out = []
    for r in recs:
        (img,) = record_images(r)
        prompt = r["messages"][0]["content"].split("\n", 1)[1]
        out.append({"image": img.tolist(), "prompt": prompt, "completion": r["messages"][-1]["content"],
                    "label": r.get("label"), "source": r["where"]})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- 2. the plain MLP on pixels ---------------------------------------------------------------------

def _xy(path: str) -> tuple[np.ndarray, list[str]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return np.array([np.asarray(r["image"], np.float32).ravel() / 255.0 for r in rows]), [r["label"] for r in rows]


def mlp_reference(cfg: VLMDemoConfig, splits: dict) -> dict:
    """A scikit-learn MLPClassifier on raw pixels (x / 255), trained on the stage-2 classification images."""
    from sklearn.neural_network import MLPClassifier

    stage2 = [json.loads(line) for line in Path(splits["stage2"]).read_text().splitlines()]
    train = [r for r in stage2 if r["task"] == "classify"]
    x = np.array([np.asarray(r["image"], np.float32).ravel() / 255.0 for r in train])
    model = MLPClassifier(hidden_layer_sizes=tuple(cfg.mlp.hidden), alpha=cfg.mlp.alpha, max_iter=cfg.mlp.max_iter,
                          random_state=cfg.seed)
    model.fit(x, [r["label"] for r in train])
    out = {"model": f"sklearn MLPClassifier hidden={cfg.mlp.hidden} relu adam alpha={cfg.mlp.alpha} "
                    f"max_iter={cfg.mlp.max_iter} random_state={cfg.seed}", "train_images": len(train),
           "iterations": int(model.n_iter_)}
    for name in ("dev", "test"):
        xs, ys = _xy(splits[name])
        correct = [float(p == y) for p, y in zip(model.predict(xs), ys)]
        out[name] = {**summarize(correct, seed=cfg.seed), "correct": correct}
    return out


# --- 3-5. features, stages, evaluation ----------------------------------------------------------------

def stage_config(base: VLMConfig, out: Path, train: str, features: str, init: str | None,
                 overwrite: bool) -> VLMConfig:
    cfg = dataclasses.replace(base, output_dir=str(out), overwrite=overwrite,
                              data=dataclasses.replace(base.data, train=train, feature_cache=features),
                              eval=VLMEval(data=None))
    if init is not None:
        cfg.model = dataclasses.replace(cfg.model, init=init)
    return cfg


def encode_images(s1: VLMConfig, splits: dict, features: str) -> dict:
    """Every Fashion-MNIST image of the demo through the frozen tower once (stage 1 encodes its own)."""
    from polm.vlm.features import FeatureCache
    from polm.vlm.towers import build_tower

    tower = build_tower(s1.model.tower.name, s1.model.tower.options)
    cache = FeatureCache(tower, features)
    images = [img for name in ("stage2", "dev", "exemplars", "test")
              for r in load_image_records(splits[name]) for img in record_images(r)]
    start = time.perf_counter()
    cache.get(images)
    seconds = time.perf_counter() - start
    return {"fashion_mnist_images": len({i.tobytes() for i in images}), "computed": cache.computed,
            "seconds": round(seconds, 2), "s_per_image": round(seconds / max(cache.computed, 1), 4),
            "tower": s1.model.tower.name, "tower_options": s1.model.tower.options}


def evaluate_rows(cfg: VLMDemoConfig, stage: dict, splits: dict, out_dir: Path, *, shots: list[int],
                  dev: bool = False) -> dict:
    """Classification (exact match, log-likelihood) and captioning (CIDEr-D) of a trained stage's model,
    features read from the shared cache; per-item results come back from the eval files."""
    from polm.vlm.features import FeatureCache, image_inputs
    from polm.vlm.runners import ComposedRunner

    vlm = stage["model"]
    cache = FeatureCache(vlm.tower, splits_features(cfg))
    runner = ComposedRunner(vlm, stage["tokenizer"], image_inputs(vlm.tower, cache))
    common = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size, seed=cfg.seed, shots=shots)
    jobs = [("test", VLMEval(data=splits["test"], exemplars=splits["exemplars"], methods=["exact_match", "loglik"],
                             labels=list(FASHION_MNIST_CLASSES), **common)),
            ("caption", VLMEval(task="captioning", data=splits["caption_test"], exemplars=splits["caption_exemplars"],
                                **{**common, "max_new_tokens": cfg.caption_max_new_tokens}))]
    if dev:
        jobs.append(("dev", VLMEval(data=splits["dev"], methods=["exact_match", "loglik"],
                                    labels=list(FASHION_MNIST_CLASSES), **{**common, "shots": [0]})))
    rows = {}
    for name, e in jobs:
        ecfg = VLMConfig(data=dataclasses.replace(stage_data(cfg), train=e.exemplars or e.data), eval=e)
        summaries = evaluate(ecfg, runner, out_dir / name)
        for key, summary in summaries.items():
            method, k = key.split("/")
            file = out_dir / name / "eval" / (f"vlm_caption_{k}.json" if method == "caption" else f"vlm_{method}_{k}.json")
            items = json.loads(file.read_text())["items"]
            per_item = [i["cider_d"] if method == "caption" else i["correct"] for i in items]
            rows[f"{name}/{key}"] = {**summary, "per_item": per_item, "file": str(file)}
    rows["features_computed"] = cache.computed
    return rows


def splits_features(cfg: VLMDemoConfig) -> str:
    return str(Path(cfg.output_dir) / "features")


def stage_data(cfg: VLMDemoConfig):
    return dataclasses.replace(cfg.stage2.data, max_length=cfg.eval_max_length)


def stage_summary(cfg: VLMConfig, run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and "event" not in r]
    info = json.loads((run_dir / "lineage.json").read_text()) if (run_dir / "lineage.json").is_file() else {}
    c = cfg.components
    return {"run_dir": str(run_dir), "steps": len(losses), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "losses": losses,
            "micro_batch_size": cfg.train.micro_batch_size, "lr": cfg.train.lr, "data": cfg.data.train,
            "trained": {"vision": c.vision.train, "projector": c.projector.train, "llm": c.llm.train},
            "lineage_data": info.get("data")}


# --- the table ----------------------------------------------------------------------------------------

def _row(entry: dict) -> dict:
    return {k: entry[k] for k in ("value", "ci_low", "ci_high", "n")}


def results_table(cfg: VLMDemoConfig, rows: dict, rows_ft: dict, mlp: dict) -> dict:
    k = cfg.shots
    cls = {"zero_shot": {}, "few_shot": {}, "fine_tuned": {}, "fine_tuned_dev": {}}
    paired = {}
    for method in ("exact_match", "loglik"):
        zs, fs, ft = rows[f"test/{method}/0shot"], rows[f"test/{method}/{k}shot"], rows_ft[f"test/{method}/0shot"]
        cls["zero_shot"][method], cls["few_shot"][method], cls["fine_tuned"][method] = _row(zs), _row(fs), _row(ft)
        cls["fine_tuned_dev"][method] = _row(rows_ft[f"dev/{method}/0shot"])
        paired[f"{method}: few_shot - zero_shot"] = paired_difference(zs["per_item"], fs["per_item"], seed=cfg.seed)
        paired[f"{method}: fine_tuned - zero_shot"] = paired_difference(zs["per_item"], ft["per_item"], seed=cfg.seed)
        paired[f"{method}: fine_tuned - mlp"] = paired_difference(mlp["test"]["correct"], ft["per_item"], seed=cfg.seed)
    zc, fc, tc = rows["caption/caption/0shot"], rows[f"caption/caption/{k}shot"], rows_ft["caption/caption/0shot"]
    captioning = {name: {**_row(r), "bleu": r["bleu"], "metric": "cider_d"}
                  for name, r in (("zero_shot", zc), ("few_shot", fc), ("fine_tuned", tc))}
    paired["cider_d: few_shot - zero_shot"] = paired_difference(zc["per_item"], fc["per_item"], seed=cfg.seed)
    paired["cider_d: fine_tuned - zero_shot"] = paired_difference(zc["per_item"], tc["per_item"], seed=cfg.seed)
    mlp_out = {key: (_row(v) if isinstance(v, dict) else v) for key, v in mlp.items()}
    return {"classification": cls, "captioning": captioning, "mlp_on_pixels": mlp_out, "paired": paired,
            "shots": k, "eval_features_computed": {"stage1": rows["features_computed"],
                                                   "stage2": rows_ft["features_computed"]},
            "eval_files": {f"{stage}/{key}": r["file"] for stage, rs in (("stage1", rows), ("stage2", rows_ft))
                           for key, r in rs.items() if isinstance(r, dict)}}


def copy_images(cfg: VLMDemoConfig, run_dir: Path) -> list[str]:
    """The two loss curves and the test confusion matrices into images_dir, each written atomically."""
    out, wanted = Path(cfg.images_dir), {"vlm_stage1_loss.png": run_dir / "stage1" / "plots" / "loss.png",
                                         "vlm_stage2_loss.png": run_dir / "stage2" / "plots" / "loss.png"}
    wanted.update(sorted(_confusion_sources(run_dir).items()))
    written = []
    for name, src in wanted.items():
        with atomic_file(out / name) as tmp:
            tmp.write_bytes(Path(src).read_bytes())
        written.append(str(out / name))
    return written


def _confusion_sources(run_dir: Path) -> dict[str, Path]:
    found = {}
    for stage in ("stage1", "stage2"):
        for png in sorted((run_dir / "eval" / stage / "test" / "plots").glob("confusion_*.png")):
            found[f"vlm_{stage}_{png.name}"] = png
    return found


def machine(load_start: float) -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "load_avg_1m_at_start": load_start, "load_avg_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(), "torch": torch.__version__, "argv": sys.argv}


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(r: dict, pct: bool = True) -> str:
        f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.3f}")
        return f"{f(r['value'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]"

    k, cls, cap = result["shots"], result["classification"], result["captioning"]
    table = Table(title=f"Fashion-MNIST test (n={cls['zero_shot']['loglik']['n']}), 95% bootstrap CI")
    for col in ("row", "exact match", "log-likelihood", f"captioning CIDEr-D (n={cap['zero_shot']['n']})"):
        table.add_column(col)
    for name, label in (("zero_shot", "zero-shot"), ("few_shot", f"{k}-shot"), ("fine_tuned", "fine-tuned")):
        table.add_row(label, fmt(cls[name]["exact_match"]), fmt(cls[name]["loglik"]), fmt(cap[name], pct=False))
    table.add_row("MLP on pixels", fmt(result["mlp_on_pixels"]["test"]), "", "")
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print("time: " + ", ".join(f"{name} {s:.0f}s" for name, s in result["wall_s"].items()))
