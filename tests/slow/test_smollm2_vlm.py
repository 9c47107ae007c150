"""The embedded EfficientNet-Lite0 + SmolLM2-135M-Instruct as a composed VLM through `polm vlm`: stage 1
(projector only, MNIST captions) lowers the loss, stage 2 (LoRA, sklearn digits) starts from it and
evaluates zero- and one-shot; the saved VLM reloads with the same greedy answers (about a minute on CPU;
`make test-slow`)."""

from __future__ import annotations

import json

import pytest

from polm.cli import main

pytestmark = pytest.mark.slow


def losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "event" not in r]


def test_two_stages_on_the_embedded_tower_and_lm(tmp_path, all_threads):
    common = [f"data.feature_cache={tmp_path / 'features'}", "train.progress=false", "train.tensorboard=false",
              "train.micro_batch_size=8", "train.save_every=0"]
    stage1 = tmp_path / "stage1"
    assert main(["vlm", "configs/vlm_stage1.yaml", f"output_dir={stage1}", "train.max_steps=6", "train.warmup_steps=0",
                 "data.train=builtin:mnist?split=train&n=16&prompt=Describe the image.&answer=a handwritten digit {label}",
                 *common]) == 0
    l1 = losses(stage1)
    assert len(l1) == 6 and l1[-1] < l1[0], l1
    assert json.loads((stage1 / "final" / "polm_vlm.json").read_text())["lm_name"] == "smollm2-135m-instruct"

    stage2 = tmp_path / "stage2"
    evals = ["eval.data=builtin:digits?split=test&n=4", "eval.exemplars=builtin:digits?split=train&n=8&seed=1",
             "eval.methods=[exact_match]", "eval.max_new_tokens=6", "eval.labels=null"]
    assert main(["vlm", "configs/vlm_stage2.yaml", f"output_dir={stage2}", f"model.init={stage1 / 'final'}",
                 "train.max_steps=2", "data.train=builtin:digits?split=train&n=16", "eval.shots=[0,1]", *evals,
                 *common]) == 0
    one_shot = json.loads((stage2 / "eval" / "vlm_exact_match_1shot.json").read_text())
    assert one_shot["n"] == 4 and all(len(i["exemplars"]) == 1 for i in one_shot["items"])

    # the saved VLM (LoRA adapter over SmolLM2, trained projector) gives the same greedy answers
    again = tmp_path / "again"
    assert main(["vlm", "configs/vlm_stage2.yaml", f"output_dir={again}", f"model.init={stage2 / 'final'}",
                 "components.llm.train=none", "eval.shots=[0]", *evals, *common, "--eval-only"]) == 0
    after, reloaded = (json.loads((d / "eval" / "vlm_exact_match_0shot.json").read_text()) for d in (stage2, again))
    assert [i["answer"] for i in reloaded["items"]] == [i["answer"] for i in after["items"]]
