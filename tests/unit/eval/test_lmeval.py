"""lm-evaluation-harness bridge: a local-data multiple-choice task defined for both gives the same
per-item loglikelihoods and accuracy in polm, in lm-eval's HF backend, and in lm-eval on polm."""

from __future__ import annotations

import pytest

from polm.eval.builtin_tasks import GPQADiamondTask
from polm.eval.lmeval import export_choice_task
from polm.eval.model import ModelAdapter
from polm.eval.runner import evaluate


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    task = GPQADiamondTask()
    items = task.load_items()[:6]
    directory = tmp_path_factory.mktemp("lm-eval-tasks")
    export_choice_task(task, items, directory, "polm_gpqa_parity")
    return directory


def test_polm_matches_lm_eval_hf_backend(tiny_model_dir, exported):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    ours = evaluate(ModelAdapter.load(str(tiny_model_dir), chat="false"), ["gpqa-diamond"], limit=6)
    records = ours["tasks"]["gpqa-diamond"]["records"]
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32",
                             tasks=["polm_gpqa_parity"], task_manager=TaskManager(include_path=str(exported)),
                             batch_size=4, device="cpu", log_samples=True, bootstrap_iters=0)
    samples = sorted(theirs["samples"]["polm_gpqa_parity"], key=lambda s: s["doc_id"])
    for rec, sample in zip(records, samples):
        assert rec["logprobs"] == pytest.approx([r[0][0] for r in sample["resps"]], abs=1e-4)
        assert rec["metrics"]["accuracy"] == sample["acc"]
    assert ours["tasks"]["gpqa-diamond"]["metrics"]["accuracy"]["value"] == \
        theirs["results"]["polm_gpqa_parity"]["acc,none"]


def test_lm_eval_task_runs_on_a_polm_model(tiny_model_dir, exported):
    adapter = ModelAdapter.load(str(tiny_model_dir), chat="false")
    spec = f"lm-eval:polm_gpqa_parity?include={exported}"
    bridged = evaluate(adapter, [spec], limit=6)["tasks"][spec]
    native = evaluate(adapter, ["gpqa-diamond"], limit=6)["tasks"]["gpqa-diamond"]
    assert bridged["primary_metric"] == "acc" and bridged["n"] == 6
    assert [r["metrics"]["acc"] for r in bridged["records"]] == [r["metrics"]["accuracy"] for r in native["records"]]
