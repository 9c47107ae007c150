"""polm's VLM recipe (`model.hf=`, the transformers family) vs TRL `SFTTrainer` on the same tiny LLaVA.

    python bench/vlm_vs_trl.py --quick              # about 1 minute on 2 CPU cores
    python bench/vlm_vs_trl.py                      # the recorded run (about 3 minutes on 2 CPU cores)
    python bench/vlm_vs_trl.py --threads 1          # when other processes oversubscribe the cores
    python bench/vlm_vs_trl.py --device cuda

The model is a random-init LLaVA built from a config with a fixed seed and saved once to a temp dir:
CLIP vision (32×32 images, patch 4: 64 image tokens, 2 layers of 64-d), LLaMA-style text (4 layers of
256-d, SmolLM2's 49,152-token vocabulary, so the output layer is as wide as a real small LM's). The data
are scikit-learn digits (8×8, as RGB PNGs) with the fixed question "What digit is this?" and the answer
"a handwritten digit N". Both sides train the projector and the whole language model (the vision tower
frozen), on answer tokens only: polm's recipe labels the final assistant turn; TRL gets
conversational prompt/completion records and its completion-only loss (`completion_only_loss=True`,
its default for that format; `assistant_only_loss` is for `messages` records and needs a template with
`{% generation %}` markers). The micro-batches are the same examples in the same order (the order
polm's BatchStream draws, handed to TRL's sequential sampler), with the same optimizer, lr, schedule,
clipping and max_length. The TRL warm-up also encodes every micro-batch both ways and compares the
token ids, labels and pixel values; the run fails if they differ.

polm runs `run_vlm` (what `polm vlm` runs); TRL runs `SFTTrainer.train()`. Each trial is a fresh process;
the sides alternate after a warm-up. Figures per side: target (answer) tokens per second, the median
over steps 2..N of each step's rate (step 1 pays one-off allocation); the peak RSS while training (VmHWM
reset when training starts, so imports and loading before it cannot set it); the per-step losses, each
the mean CE per answer token of the step, which must agree within LOSS_RTOL. Writes
bench/results/vlm_vs_trl.json (_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import common

SCRIPT = Path(__file__).resolve()
TOKENIZER = "smollm2-135m-instruct"
PROMPT = "What digit is this?"
ANSWER = "a handwritten digit {label}"
LOSS_RTOL = 1e-4   # per-step losses: |polm - TRL| / TRL, fp32 on both sides
CHAT_TEMPLATE = (   # ChatML that places an image part where the user turn has it
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "{{ '<image>' }}{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class Settings:
    """Everything both sides share; the JSON records it as is."""
    steps: int = 8                   # optimizer steps per trial; throughput is measured over steps 2..N
    micro_batch_size: int = 4
    grad_accum: int = 2
    max_length: int = 128            # no example is cut (~90 tokens: 64 image tokens + the chat)
    lr: float = 1e-4
    schedule: str = "constant"
    max_grad_norm: float = 1.0
    seed: int = 0
    image_size: int = 32
    patch_size: int = 4
    vision_hidden: int = 64
    vision_layers: int = 2
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 512
    repeats: int = 3
    warmup: bool = True
    warmup_steps_per_trial: int = 1  # a warm-up only brings code and weights into the page cache

    @property
    def examples_needed(self) -> int:
        return self.steps * self.grad_accum * self.micro_batch_size


QUICK = {"steps": 3, "grad_accum": 1, "repeats": 1}


# --- the model and the data (parent process) ----------------------------------------------------------

def build_tiny_llava(path: Path, s: Settings) -> Path:
    """A random-init LLaVA (seeded) with SmolLM2's tokenizer + `<image>` and a CLIP image processor, saved
    to `path` as any transformers VLM checkpoint."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from polm.assets import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(TOKENIZER))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(hidden_size=s.vision_hidden, intermediate_size=4 * s.vision_hidden,
                              num_hidden_layers=s.vision_layers, num_attention_heads=4, image_size=s.image_size,
                              patch_size=s.patch_size, projection_dim=s.vision_hidden)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=s.text_hidden, intermediate_size=s.text_intermediate,
                       num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads,
                       num_key_value_heads=s.text_kv_heads, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(s.seed)
    model = LlavaForConditionalGeneration(config).eval()
    images = CLIPImageProcessorPil(size={"shortest_edge": s.image_size},
                                crop_size={"height": s.image_size, "width": s.image_size})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=s.patch_size,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_digit_records(folder: Path, n: int, seed: int) -> Path:
    """n sklearn digits (train split, seeded subset) as RGB PNGs + a JSONL of {image, prompt, completion}."""
    import numpy as np
    from PIL import Image

    from polm.vlm.data import load_image_records

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, rec in enumerate(load_image_records(f"builtin:digits?n={n}&seed={seed}")):
        gray = np.asarray(rec["images"][0], dtype=np.uint8)
        Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB").save(folder / f"{i:04d}.png")
        lines.append(json.dumps({"image": f"{i:04d}.png", "prompt": PROMPT,
                                 "completion": ANSWER.format(label=rec["label"])}))
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def polm_order(n: int, micro_batch_size: int, seed: int) -> list[int]:
    """The record indices in the order polm's recipe trains on them (its seeded BatchStream, epoch 0)."""
    from polm.train.batches import BatchStream

    stream = BatchStream(list(range(n)), list, micro_batch_size, seed=seed)
    return [i for _ in range(stream.micro_batches_per_epoch) for i in next(stream)]


def trl_records(data_path: Path, order: list[int]) -> list[dict]:
    """The JSONL records in polm's order, as TRL's conversational prompt/completion rows (image path kept)."""
    rows = [json.loads(line) for line in data_path.read_text().splitlines() if line.strip()]
    return [{"image_path": str(data_path.parent / rows[i]["image"]),
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rows[i]["prompt"]}]}],
             "completion": [{"role": "assistant", "content": [{"type": "text", "text": rows[i]["completion"]}]}]}
            for i in order]


# --- workers (one fresh process per trial) -----------------------------------------------------------

class _Instrument:
    """Step clock + peak RSS of the training loop alone."""

    def __init__(self):
        self.clock, self.mem = common.StepClock(), common.PeakRss()


def run_polm(spec: dict) -> dict:
    """`run_vlm` on the model.hf family, its shared loop wrapped to time steps and measure the training's RSS."""
    from polm.recipes import vlm as recipe
    from polm.train.metrics import read_metrics

    s, device = Settings(**spec["settings"]), spec["device"]
    ins, loop = _Instrument(), recipe.train

    def timed_train(*, step_fn, cfg, **kwargs):
        calls = [0]

        def step(batch):
            if calls[0] % cfg.grad_accum == 0:   # the first micro-batch of an optimizer step
                ins.clock.mark()
            calls[0] += 1
            return step_fn(batch)

        with ins.mem, ins.mem.phase("train"):
            result = loop(step_fn=step, cfg=cfg, **kwargs)
        ins.clock.finish()
        return result

    recipe.train = timed_train
    with tempfile.TemporaryDirectory(prefix="polm-bench-vlm-") as run_dir:
        cfg = polm_config(spec, s, run_dir)
        recipe.run_vlm(cfg)
        records = [r for r in read_metrics(Path(run_dir)) if "loss" in r]
    return {"losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records],
            "targets": [r["target_tokens"] for r in records], "tokens": [r["tokens"] for r in records],
            "train_memory": ins.mem.as_dict(), "cuda_peak_mib": common.cuda_peak_mib(device), **ins.clock.as_dict()}


def polm_config(spec: dict, s: Settings, run_dir: str):
    """The recipe's config: model.hf, projector + full LM trained, tower frozen, one learning rate."""
    from polm.models import ModelConfig
    from polm.recipes.vlm import VLMConfig, VLMData
    from polm.train.config import TrainConfig
    from polm.vlm.build import Component, Components, LLMComponent, VLMModelConfig

    cfg = VLMConfig(
        output_dir=run_dir, overwrite=True,
        model=VLMModelConfig(hf=spec["model_dir"], lm=ModelConfig(device=spec["device"])),
        components=Components(vision=Component(train=False), projector=Component(train=True),
                              llm=LLMComponent(train="full")),
        data=VLMData(train=spec["data_path"], max_length=s.max_length),
        train=TrainConfig(max_steps=spec["steps"], micro_batch_size=s.micro_batch_size, grad_accum=s.grad_accum,
                          lr=s.lr, weight_decay=0.0, schedule=s.schedule, warmup_steps=0,
                          max_grad_norm=s.max_grad_norm, precision=common.precision_for(spec["device"]),
                          seed=s.seed, log_every=1, save_every=0, progress=False, tensorboard=False, resume=False))
    cfg.validate()
    return cfg


def _trl_dataset(spec: dict):
    from datasets import Dataset
    from PIL import Image

    rows = json.loads(Path(spec["trl_records_path"]).read_text())
    with_images = []
    for row in rows:
        with Image.open(row["image_path"]) as img:
            with_images.append({"images": [img.convert("RGB")], "prompt": row["prompt"],
                                "completion": row["completion"]})
    return Dataset.from_list(with_images)


def _trl_args(spec: dict, s: Settings, out_dir: str):
    from trl import SFTConfig

    device = spec["device"]
    return SFTConfig(
        output_dir=out_dir, max_steps=spec["steps"], per_device_train_batch_size=s.micro_batch_size,
        gradient_accumulation_steps=s.grad_accum, learning_rate=s.lr, weight_decay=0.0,
        lr_scheduler_type=s.schedule, warmup_steps=0, max_grad_norm=s.max_grad_norm,
        bf16=common.precision_for(device) == "bf16", use_cpu=not device.startswith("cuda"),
        gradient_checkpointing=False,   # SFTConfig's default is on; polm's is off, and both must do the same work
        completion_only_loss=True, max_length=s.max_length, padding_free=False, packing=False,
        train_sampling_strategy="sequential", seed=s.seed, data_seed=s.seed, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)


def _trl_model(spec: dict):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(spec["model_dir"], dtype=torch.float32).to(spec["device"])
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "vision_tower":   # frozen, as polm's components.vision.train=false
            module.requires_grad_(False)
    return model


def run_trl(spec: dict) -> dict:
    """SFTTrainer on conversational prompt/completion rows with images (its VLM collator encodes on the fly)."""
    from transformers import AutoProcessor
    from trl import SFTTrainer

    s, device = Settings(**spec["settings"]), spec["device"]
    processor = AutoProcessor.from_pretrained(spec["model_dir"])
    model, dataset = _trl_model(spec), _trl_dataset(spec)
    ins = _Instrument()

    with tempfile.TemporaryDirectory(prefix="polm-bench-trl-") as out_dir:
        trainer = SFTTrainer(model=model, args=_trl_args(spec, s, out_dir), train_dataset=dataset,
                             processing_class=processor, callbacks=[common.trainer_step_clock(ins.clock)])
        check = same_inputs(spec, trainer, dataset) if spec.get("check") else None
        with ins.mem, ins.mem.phase("train"):
            trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    out = {"losses": [h["loss"] for h in logs], "grad_norms": [h["grad_norm"] for h in logs],
           "train_memory": ins.mem.as_dict(), "cuda_peak_mib": common.cuda_peak_mib(device),
           "optimizer": str(trainer.args.optim.value), "completion_only_loss": trainer.completion_only_loss,
           **ins.clock.as_dict()}
    return out | ({"input_check": check} if check is not None else {})


def same_inputs(spec: dict, trainer, dataset) -> dict:
    """Every micro-batch encoded by TRL's collator and by polm's recipe (encode_hf_record + hf_collate):
    equal ids and labels, the pixel values' largest difference, the target counts per micro-batch."""
    import torch

    from polm.recipes.vlm import with_images
    from polm.vlm.data import load_image_records
    from polm.vlm.hf import encode_hf_record, hf_collate, image_token_id

    s = Settings(**spec["settings"])
    processor = trainer.processing_class
    token = image_token_id(trainer.model, processor)
    records = [with_images(r) for r in load_image_records(spec["data_path"])]
    order = spec["order"]
    ids_equal = labels_equal = True
    pixel_diff, polm_targets, trl_targets, lengths = 0.0, [], [], []
    for start in range(0, len(order), s.micro_batch_size):
        picked = order[start:start + s.micro_batch_size]
        ours = hf_collate([encode_hf_record(records[i], processor, token, max_length=s.max_length) for i in picked],
                          processor.tokenizer.pad_token_id)
        theirs = trainer.data_collator([dataset[k] for k in range(start, start + len(picked))])
        ids_equal &= torch.equal(ours["input_ids"], theirs["input_ids"])
        labels_equal &= torch.equal(ours["labels"], theirs["labels"])
        pixel_diff = max(pixel_diff, float((ours["pixel_values"] - theirs["pixel_values"]).abs().max()))
        polm_targets.append(int((ours["labels"][:, 1:] != -100).sum()))
        trl_targets.append(int((theirs["labels"][:, 1:] != -100).sum()))
        lengths += ours["attention_mask"].sum(1).tolist()
    return {"ids_equal": bool(ids_equal), "labels_equal": bool(labels_equal), "pixel_max_abs_diff": pixel_diff,
            "polm_targets_per_micro_batch": polm_targets, "trl_targets_per_micro_batch": trl_targets,
            "length_min": min(lengths), "length_max": max(lengths)}


def worker(spec: dict) -> dict:
    common.set_threads(spec.get("threads"))
    return {"side": spec["side"], **(run_polm(spec) if spec["side"] == "polm" else run_trl(spec))}


# --- summary (parent) --------------------------------------------------------------------------------

def step_targets(per_micro_batch: list[int], grad_accum: int) -> list[int]:
    """Target tokens of each optimizer step from the counts of its micro-batches."""
    return [sum(per_micro_batch[i:i + grad_accum]) for i in range(0, len(per_micro_batch), grad_accum)]


def step_rates(targets: list[int], step_wall_s: list[float]) -> list[float]:
    """Target tokens per second of each step after step 1 (step 1 pays one-off allocation)."""
    return [t / w for t, w in list(zip(targets, step_wall_s))[1:]]


def loss_agreement(polm: list[float], trl: list[float], rtol: float = LOSS_RTOL) -> dict:
    """Per-step relative differences |polm - TRL| / |TRL| and whether all are within rtol (and counts equal)."""
    diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(polm, trl)]
    return {"rel_diffs": diffs, "max_rel_diff": max(diffs) if diffs else float("nan"), "rtol": rtol,
            "agree": len(polm) == len(trl) and bool(diffs) and max(diffs) <= rtol}


def summarize_side(trials: list[dict], targets: list[int], device: str) -> dict:
    """Medians over trials of: target tokens/s (each trial's median over steps 2..N), step time, peak memory
    while training (RSS on CPU, max allocated on CUDA) and what training added over the RSS it started at."""
    cuda = device.startswith("cuda")
    per_trial = []
    for t in trials:
        mem = t["train_memory"]
        per_trial.append({"target_tokens_per_s": common.median(step_rates(targets, t["step_wall_s"])),
                          "step_s": common.median(t["step_wall_s"][1:]),
                          "memory_mib": t["cuda_peak_mib"] if cuda else mem["peak_mib"],
                          "train_rss_added_mib": mem["peak_delta_mib"], "rss_at_train_start_mib": mem["rss_before_mib"],
                          "worker_peak_rss_mib": t["peak_rss_mib"]})
    out = {key: common.median([p[key] for p in per_trial]) for key in per_trial[0]}
    out["target_tokens_per_s_spread"] = common.spread([p["target_tokens_per_s"] for p in per_trial])
    return out | {"trials": per_trial}


def check_same_work(check: dict, polm: dict, trl: dict, settings: Settings) -> dict:
    """The same encoded inputs on both sides, the same target counts per step, agreeing losses."""
    targets = step_targets(check["polm_targets_per_micro_batch"], settings.grad_accum)
    out = {"ids_equal": check["ids_equal"], "labels_equal": check["labels_equal"],
           "pixel_max_abs_diff": check["pixel_max_abs_diff"],
           "targets_per_step": targets,
           "targets_equal": (check["polm_targets_per_micro_batch"] == check["trl_targets_per_micro_batch"]
                             and polm["targets"] == targets[:len(polm["targets"])]),
           "steps": {"polm": len(polm["losses"]), "trl": len(trl["losses"])},
           "losses": {"polm": polm["losses"], "trl": trl["losses"]}, **loss_agreement(polm["losses"], trl["losses"])}
    out["ok"] = bool(out["ids_equal"] and out["labels_equal"] and out["pixel_max_abs_diff"] < 1e-6
                     and out["targets_equal"] and out["agree"])
    return out


def goals(speedup: float, memory_ratio: float, same: dict) -> dict:
    """The VLM bench goal: ≥ 1.3× TRL's throughput and ≤ 0.8× its peak memory, with the same losses."""
    return {"throughput_ge_1.3x": speedup >= 1.3, "memory_le_0.8x": memory_ratio <= 0.8,
            "same_losses": bool(same["agree"])}


def run_benchmark(args: argparse.Namespace, settings: Settings) -> dict:
    common.set_threads(args.threads)
    machine = common.machine_description(args.device, ("torch", "transformers", "trl", "accelerate", "datasets"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="polm-bench-vlm-data-") as tmp:
        model_dir = build_tiny_llava(Path(tmp) / "llava", settings)
        data_path = write_digit_records(Path(tmp) / "digits", settings.examples_needed, settings.seed)
        order = polm_order(settings.examples_needed, settings.micro_batch_size, settings.seed)
        (Path(tmp) / "trl.json").write_text(json.dumps(trl_records(data_path, order)))
        print(f"{machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads); "
              f"tiny LLaVA in {model_dir}, {settings.examples_needed} digit examples", flush=True)
        base = {"model_dir": str(model_dir), "data_path": str(data_path), "trl_records_path": str(Path(tmp) / "trl.json"),
                "order": order, "device": args.device, "settings": asdict(settings), "threads": args.threads,
                "steps": settings.steps}
        warm = {**base, "steps": settings.warmup_steps_per_trial}
        run = common.run_worker
        trials = {side: (lambda side=side: run(SCRIPT, {**base, "side": side})) for side in ("polm", "trl")}
        # the TRL warm-up always runs: it also checks that both sides encode the same inputs
        warmups = {"trl": lambda: run(SCRIPT, {**warm, "side": "trl", "check": True})}
        if settings.warmup:
            warmups = {"polm": lambda: run(SCRIPT, {**warm, "side": "polm"}), **warmups}
        rounds, warmed = common.alternate(trials, settings.repeats, warmups, log=lambda m: print(f"  {m}", flush=True))
    check = warmed["trl"]["input_check"]
    same = check_same_work(check, rounds["polm"][0], rounds["trl"][0], settings)
    polm, trl = (summarize_side(rounds[k], same["targets_per_step"], args.device) for k in ("polm", "trl"))
    speedup = polm["target_tokens_per_s"] / trl["target_tokens_per_s"]
    memory_ratio = polm["memory_mib"] / trl["memory_mib"]
    return {
        "benchmark": "vlm_vs_trl", "command": common.command_line(SCRIPT), "quick": args.quick, "device": args.device,
        "machine": machine, "settings": asdict(settings), "loss_rtol": LOSS_RTOL,
        "trl_options": {"completion_only_loss": rounds["trl"][0]["completion_only_loss"], "optimizer": rounds["trl"][0]["optimizer"],
                        "padding_free": "not supported by TRL for vision datasets", "packing": False,
                        "gradient_checkpointing": False, "use_liger_kernel": False},
        "data": {"source": "builtin:digits (sklearn, 8x8 as RGB PNG)", "prompt": PROMPT, "answer": ANSWER,
                 "examples": settings.examples_needed, "length_min": check["length_min"],
                 "length_max": check["length_max"], "targets_per_step": same["targets_per_step"]},
        "polm": polm, "trl": trl, "speedup": speedup, "memory_ratio": memory_ratio, "same_work": same,
        "goals": goals(speedup, memory_ratio, same),
        "wall_s": round(time.perf_counter() - started, 1), "load_avg_1m_at_end": common.load_avg_1m()}


def print_report(report: dict) -> None:
    p, t = report["polm"], report["trl"]
    mem = "peak CUDA MiB (training)" if report["device"].startswith("cuda") else "peak RSS MiB (training)"
    rows = [["target tok/s (median steps 2..N)", p["target_tokens_per_s"], t["target_tokens_per_s"], report["speedup"]],
            ["step time s", p["step_s"], t["step_s"], p["step_s"] / t["step_s"]],
            [mem, p["memory_mib"], t["memory_mib"], report["memory_ratio"]],
            ["RSS added by training MiB", p["train_rss_added_mib"], t["train_rss_added_mib"],
             p["train_rss_added_mib"] / max(t["train_rss_added_mib"], 1e-9)],
            ["RSS at train start MiB", p["rss_at_train_start_mib"], t["rss_at_train_start_mib"],
             p["rss_at_train_start_mib"] / t["rss_at_train_start_mib"]]]
    print(common.format_table(["figure", "polm", "TRL", "polm/TRL"], rows))
    w = report["same_work"]
    print(f"same inputs: ids {w['ids_equal']}, labels {w['labels_equal']}, pixels max diff "
          f"{w['pixel_max_abs_diff']:.1e}, targets per step {w['targets_per_step']} equal {w['targets_equal']}")
    for side in ("polm", "trl"):
        print(f"losses {side:4s}: " + " ".join(f"{x:.6f}" for x in w["losses"][side]))
    print(f"losses agree (per answer-token mean, rtol {w['rtol']:.0e}): {w['agree']}, max rel diff "
          f"{w['max_rel_diff']:.1e}")
    print("goals: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["goals"].items()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 repeat (about 1 min on 2 CPU cores)")
    parser.add_argument("--steps", type=int, help="optimizer steps per trial")
    parser.add_argument("--repeats", type=int, help="measured rounds per side")
    common.add_output_args(parser, "vlm_vs_trl")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if common.serve_worker(args, worker, common.HF_WORKER_ENV):
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = common.with_flags(Settings(), QUICK if args.quick else None, steps=args.steps, repeats=args.repeats)
    out = common.results_path("vlm_vs_trl", args.quick, args.out)
    report = run_benchmark(args, settings)
    print_report(report)
    common.write_report(out, report)
    return 0 if report["same_work"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
