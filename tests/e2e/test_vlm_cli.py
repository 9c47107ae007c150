"""`polm vlm` through the CLI on a tiny Llama + tiny conv tower: stage 1 (projector only), stage 2 (LoRA
from stage 1), reload with the same greedy tokens, exact resume, and each bad input as one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from vlm_helpers import build_tiny_llava
from vlm_helpers import two_class_image as image

from polm.cli import main


@pytest.fixture()
def image_data(tmp_path: Path) -> Path:
    path = tmp_path / "images.jsonl"
    rows = [{"image": image(i % 2, i), "prompt": "What is this?", "completion": ["hello", "world"][i % 2]}
            for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stage1_config(tmp_path: Path, model_dir, data, **extra) -> Path:
    cfg = {"output_dir": str(tmp_path / "stage1"),
           "model": {"lm": {"name": str(model_dir)},
                     "tower": {"name": "tiny-conv", "options": {"image_size": 16, "patch": 4}},
                     "projector": {"name": "mlp2x_gelu"}},
           "components": {"projector": {"train": True, "lr": 0.05}},
           "data": {"train": str(data), "max_length": 64},
           "train": {"max_steps": 12, "micro_batch_size": 4, "lr": 0.001, "schedule": "constant",
                     "progress": False, "tensorboard": False, "save_every": 0}}
    for key, value in extra.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / f"stage1-{len(list(tmp_path.glob('stage1-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "event" not in r]


def greedy(vlm, tokenizer, images) -> list[list[int]]:
    from polm.vlm.collate import encode_image_record, vlm_collate
    from polm.vlm.data import normalize_record

    examples = [encode_image_record(normalize_record({"image": img, "prompt": "What is this?"}, "q"), tokenizer,
                                    vlm.spec.tokens_per_image, max_length=64, generation_prompt=True) for img in images]
    batch = vlm_collate(examples, tokenizer.pad_token_id,
                        lambda imgs: {"pixel_values": torch.stack([vlm.tower.preprocess(i) for i in imgs])},
                        left_pad=True)
    return vlm.eval().generate(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"],
                               max_new_tokens=4, pad_token_id=tokenizer.pad_token_id).tolist()


def test_stage1_then_stage2_train_save_and_reload(tiny_model_dir, image_data, tmp_path):
    from polm.vlm.model import load_vlm
    from polm.vlm.towers import build_tower

    cfg1 = stage1_config(tmp_path, tiny_model_dir, image_data)
    assert main(["vlm", str(cfg1)]) == 0
    stage1 = tmp_path / "stage1"
    l1 = losses(stage1)
    # projector-only on a random LM moves the loss less than full training would; it does fall
    assert len(l1) == 12 and sum(l1[-3:]) / 3 < l1[0] - 0.1, l1
    final1 = stage1 / "final"
    spec = json.loads((final1 / "polm_vlm.json").read_text())
    assert spec["lm_name"] == str(tiny_model_dir) and not (final1 / "lm" / "model.safetensors").exists()
    # only the projector trained: the tower's weights are the fresh tower's
    fresh = build_tower("tiny-conv", {"image_size": 16, "patch": 4}).state_dict()
    saved = load_file(final1 / "tower.safetensors")
    assert all(torch.equal(saved[k], fresh[k]) for k in fresh)

    out2 = tmp_path / "stage2"
    assert main(["vlm", str(cfg1), f"output_dir={out2}", f"model.init={final1}", "components.llm.train=lora",
                 "components.llm.lr=0.01", "lora.r=8", "lora.alpha=16"]) == 0
    l2 = losses(out2)
    assert l2[0] == pytest.approx(l1[-1], rel=0.5) and sum(l2[-3:]) / 3 < l2[0], l2
    assert (out2 / "final" / "lm" / "adapter_config.json").is_file()

    from polm.config import load_config
    from polm.recipes.vlm import VLMConfig, run_vlm

    cfg = load_config(VLMConfig, cfg1, [f"output_dir={tmp_path / 'again'}", f"model.init={final1}",
                                        "components.llm.train=lora", "train.max_steps=4"])
    result = run_vlm(cfg)
    images = [image(0, 100), image(1, 101)]
    in_memory = greedy(result["model"], result["tokenizer"], images)
    reloaded, tok = load_vlm(result["final_dir"])
    assert greedy(reloaded, tok, images) == in_memory


def test_resume_matches_the_uninterrupted_run(tiny_model_dir, image_data, tmp_path):
    cfg = stage1_config(tmp_path, tiny_model_dir, image_data, **{"train.save_every": 4})
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["vlm", str(cfg), f"output_dir={full}", "components.llm.train=lora"]) == 0
    assert main(["vlm", str(cfg), f"output_dir={part}", "components.llm.train=lora", "train.max_steps=8"]) == 0
    (part / "run.json").write_text(json.dumps({"status": "running"}))
    (part / "final").rename(tmp_path / "old-final")
    assert main(["vlm", str(cfg), f"output_dir={part}", "components.llm.train=lora"]) == 0
    assert losses(part) == pytest.approx(losses(full), abs=1e-6)


def test_bad_inputs_are_one_clear_line(tiny_model_dir, image_data, tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"image": "nowhere.png", "prompt": "p", "completion": "hello"}) + "\n")
    broken = tmp_path / "broken.jsonl"
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    broken.write_text(json.dumps({"image": "bad.png", "prompt": "p", "completion": "hello"}) + "\n")
    cfg = stage1_config(tmp_path, tiny_model_dir, image_data)
    cases = {   # the image errors come before any model loads; the others need the model's shapes
        f"data.train={missing}": "image file '.*nowhere.png' does not exist",
        f"data.train={broken}": "image file '.*bad.png' cannot be read as an image",
        "data.max_length=10": "max_length=10 would cut its image tokens",
        "model.projector.out_dim=48": "the projector writes 48-d image tokens but the LM's embeddings are 32-d",
        "components.projector.train=false": "every component is frozen",
    }
    import re

    for override, message in cases.items():
        assert main(["vlm", str(cfg), f"output_dir={tmp_path / 'bad'}", override]) == 2, override
        err = capsys.readouterr().err
        # one message, no traceback (a model's weight-loading progress bar may stand before it)
        errors = [line for line in err.splitlines() if line.startswith("polm vlm: error: ")]
        assert len(errors) == 1 and re.search(message, errors[0]) and "Traceback" not in err, (override, err)
        assert not (tmp_path / "bad").exists()


def test_eval_after_training_and_eval_only(tiny_model_dir, image_data, tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"image": image(i % 2, 1000 + i), "prompt": "What is this?",
                                        "completion": ["hello", "world"][i % 2]}) + "\n" for i in range(4)))
    cfg = stage1_config(tmp_path, tiny_model_dir, image_data, **{"eval.data": str(test), "eval.shots": [0, 2],
                                                                  "train.max_steps": 4, "data.max_length": 160})
    assert main(["vlm", str(cfg)]) == 0
    run = tmp_path / "stage1"
    for name in ("exact_match_0shot", "loglik_0shot", "exact_match_2shot", "loglik_2shot"):
        data = json.loads((run / "eval" / f"vlm_{name}.json").read_text())
        assert data["n"] == 4 and data["classes"] == ["hello", "world"] and 0 <= data["value"] <= 1
        assert (run / "plots" / f"confusion_{name}.png").is_file()
    trained = json.loads((run / "eval" / "vlm_loglik_2shot.json").read_text())
    assert all(len(item["exemplars"]) == 2 and ".jsonl:" in item["exemplars"][0] for item in trained["items"])

    again = tmp_path / "eval-only"
    assert main(["vlm", str(cfg), f"model.init={run / 'final'}", f"output_dir={again}",
                 "eval.methods=[loglik]", "eval.shots=[2]", "--eval-only"]) == 0
    reloaded = json.loads((again / "eval" / "vlm_loglik_2shot.json").read_text())
    assert [i["predicted"] for i in reloaded["items"]] == [i["predicted"] for i in trained["items"]]

    assert main(["vlm", str(cfg), f"model.init={run / 'final'}", f"output_dir={again}", "eval.task=captioning",
                 "eval.shots=[0,1]", "eval.max_new_tokens=4", "--eval-only"]) == 0
    caption = json.loads((again / "eval" / "vlm_caption_1shot.json").read_text())
    assert caption["n"] == 4 and caption["metric"] == "cider_d" and "bleu" in caption


def test_transformers_llava_trains_through_its_processor_and_reloads(image_data, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from polm.config import load_config
    from polm.recipes.vlm import VLMConfig, run_vlm

    llava = build_tiny_llava(tmp_path / "llava")
    args = [f"model.hf={llava}", f"output_dir={tmp_path / 'hf'}", f"data.train={image_data}", "data.max_length=64",
            "components.llm.train=lora", "components.llm.lr=0.01", "components.projector.lr=0.01",
            "lora.target_modules=[q_proj,v_proj]", "lora.r=8", "lora.alpha=16", "train.max_steps=12",
            "train.micro_batch_size=4", "train.lr=0.01", "train.schedule=constant", "train.progress=false",
            "train.tensorboard=false", "train.save_every=0"]
    assert main(["vlm", *args, f"output_dir={tmp_path / 'cli'}"]) == 0
    l_cli = losses(tmp_path / "cli")
    assert len(l_cli) == 12 and sum(l_cli[-3:]) / 3 < l_cli[0] - 0.1, l_cli

    result = run_vlm(load_config(VLMConfig, None, args))
    processor = AutoProcessor.from_pretrained(result["final_dir"])
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                       {"type": "text", "text": "What is this?"}]}],
                                         add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text, text], images=[np.array(image(0, 7), np.uint8)[:, :, None].repeat(3, 2),
                                               np.array(image(1, 8), np.uint8)[:, :, None].repeat(3, 2)],
                    return_tensors="pt")
    with torch.no_grad():
        before = result["model"].generate(**enc, max_new_tokens=4, do_sample=False).tolist()
        reloaded = AutoModelForImageTextToText.from_pretrained(result["final_dir"]).eval()
        assert reloaded.generate(**enc, max_new_tokens=4, do_sample=False).tolist() == before
    base = AutoModelForImageTextToText.from_pretrained(llava).eval()
    trained_proj = reloaded.model.multi_modal_projector.linear_1.weight
    assert not torch.equal(trained_proj, base.model.multi_modal_projector.linear_1.weight)   # the projector trained
    assert torch.equal(reloaded.model.vision_tower.embeddings.patch_embedding.weight,
                       base.model.vision_tower.embeddings.patch_embedding.weight)   # the tower did not


def test_itc_itm_itg_mixture_trains_logs_each_term_and_resumes_exactly(tiny_model_dir, image_data, tmp_path):
    mix = ["objectives={itg: 1.0, itc: 0.5, itm: 0.5}", "train.max_steps=6", "train.save_every=3"]
    cfg = stage1_config(tmp_path, tiny_model_dir, image_data)
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["vlm", str(cfg), f"output_dir={full}", *mix]) == 0
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "event" not in r]
    assert len(steps) == 6 and all({"loss_itg", "loss_itc", "loss_itm"} <= set(r) for r in steps)
    first = steps[0]
    assert first["loss"] == pytest.approx(first["loss_itg"] + 0.5 * first["loss_itc"] + 0.5 * first["loss_itm"],
                                          rel=1e-4)
    assert main(["vlm", str(cfg), f"output_dir={part}", *mix, "train.max_steps=3"]) == 0
    (part / "run.json").write_text(json.dumps({"status": "running"}))
    (part / "final").rename(tmp_path / "old-final")
    assert main(["vlm", str(cfg), f"output_dir={part}", *mix]) == 0
    assert losses(part) == pytest.approx(losses(full), abs=1e-6)


def test_bad_objectives_are_one_clear_line(tiny_model_dir, image_data, tmp_path, capsys):
    cfg = stage1_config(tmp_path, tiny_model_dir, image_data)
    for override, message in {"objectives={itcc: 1.0}": "objectives.itcc=1.0 is not a weight >= 0 of a known loss",
                              "objectives={itg: 0.0}": "every objective weight is 0"}.items():
        assert main(["vlm", str(cfg), f"output_dir={tmp_path / 'bad'}", override]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_transformers_llava_eval_after_training_and_eval_only(image_data, tmp_path):

    llava = build_tiny_llava(tmp_path / "llava")
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"image": image(i % 2, 1000 + i), "prompt": "What is this?",
                                        "completion": ["hello", "world"][i % 2]}) + "\n" for i in range(4)))
    run = tmp_path / "hf"
    common = [f"data.train={image_data}", "data.max_length=96", f"eval.data={test}", "eval.shots=[0,1]",
              "eval.max_new_tokens=4", "train.progress=false", "train.tensorboard=false", "train.save_every=0"]
    assert main(["vlm", f"model.hf={llava}", f"output_dir={run}", "components.llm.train=lora",
                 "lora.target_modules=[q_proj,v_proj]", "train.max_steps=4", "train.micro_batch_size=4", *common]) == 0
    for name in ("exact_match_0shot", "loglik_0shot", "exact_match_1shot", "loglik_1shot"):
        data = json.loads((run / "eval" / f"vlm_{name}.json").read_text())
        assert data["n"] == 4 and data["classes"] == ["hello", "world"]
        assert (run / "plots" / f"confusion_{name}.png").is_file()
    again = tmp_path / "again"
    assert main(["vlm", f"model.hf={run / 'final'}", f"output_dir={again}", "eval.methods=[loglik]", *common,
                 "--eval-only"]) == 0
    for k in (0, 1):
        after = json.loads((run / "eval" / f"vlm_loglik_{k}shot.json").read_text())
        reloaded = json.loads((again / "eval" / f"vlm_loglik_{k}shot.json").read_text())
        assert [i["predicted"] for i in reloaded["items"]] == [i["predicted"] for i in after["items"]]


def test_held_out_loss_with_perplexity_only_for_the_token_loss(tiny_model_dir, image_data, tmp_path):
    cfg = stage1_config(tmp_path, tiny_model_dir, image_data)
    for name, extra, has_ppl in (("itg", [], True), ("mix", ["objectives={itg: 1.0, itc: 1.0}"], False)):
        out = tmp_path / name
        assert main(["vlm", str(cfg), f"output_dir={out}", "data.eval_fraction=0.25", "train.max_steps=2", *extra]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if "eval/loss" in r]
        assert len(evals) == 1 and ("eval/ppl" in evals[0]) is has_ppl
        assert json.loads((out / "lineage.json").read_text())["data"]["eval_examples"] == 3


def test_transformers_vlm_trains_on_the_configured_device(image_data, tmp_path):
    """model.lm.device places a model.hf VLM as it places the composed family's LM: cuda where there is
    one, and without one the same one-line refusal as every recipe's model.device=cuda."""

    from polm.config import load_config
    from polm.errors import PolmError
    from polm.recipes.vlm import VLMConfig, run_vlm

    llava = build_tiny_llava(tmp_path / "llava")
    cfg = load_config(VLMConfig, None, [f"model.hf={llava}", "model.lm.device=cuda", f"output_dir={tmp_path / 'run'}",
                                        f"data.train={image_data}", "data.max_length=64", "train.max_steps=1",
                                        "train.micro_batch_size=2", "train.progress=false", "train.tensorboard=false",
                                        "train.save_every=0"])
    if torch.cuda.is_available():
        assert next(run_vlm(cfg)["model"].parameters()).device.type == "cuda"
    else:
        with pytest.raises(PolmError, match="model.device is 'cuda' but no CUDA device is available"):
            run_vlm(cfg)
        assert not (tmp_path / "run").exists()
