"""Bridge to lm-evaluation-harness (optional: `pip install lm-eval==0.4.13`).

- `polm eval --task lm-eval:<task>?include=DIR` runs any lm-eval task on a polm model: lm-eval
  builds the requests, polm's ModelAdapter answers them (`PolmLM`), and the per-document results
  come back as polm records, so CIs, paired comparisons and reports work as for built-in tasks.
- `export_choice_task` writes a polm multiple-choice task as a local-data lm-eval task (same
  prompts, same choices), for parity checks against lm-eval's own HF backend
  (bench/eval_vs_lmeval.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polm.errors import PolmError, require
from polm.eval.tasks import TASKS, EvalSettings, Task


def polm_lm(adapter):
    """An lm-eval `LM` whose three request types are served by a polm ModelAdapter."""
    require("lm_eval", "lmeval", "the lm-evaluation-harness bridge")
    from lm_eval.api.model import LM

    class PolmLM(LM):
        def __init__(self):
            super().__init__()
            self.adapter = adapter

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return self.adapter.loglikelihood([tuple(r.args) for r in requests])

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            return [lp for lp, _ in self.adapter.loglikelihood_rolling([r.args[0] for r in requests])]

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            # Requests with the same generation settings are generated together (batched).
            out: list[str | None] = [None] * len(requests)
            groups: dict[str, list[int]] = {}
            for i, r in enumerate(requests):
                groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
            for key, idx in groups.items():
                kwargs = json.loads(key)
                until = kwargs.get("until") or []
                texts = self.adapter.generate([requests[i].args[0] for i in idx], formatted=True,
                                              stop=[until] if isinstance(until, str) else until,
                                              max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
                                              temperature=float(kwargs.get("temperature", 0.0))
                                              if kwargs.get("do_sample") else 0.0)
                for i, samples in zip(idx, texts):
                    out[i] = samples[0]
            return out  # type: ignore[return-value]

    return PolmLM()


class LMEvalTask(Task):
    """One lm-eval task; items are its evaluation documents (ids = document indices)."""

    modes = ("zero-shot", "few-shot")

    def __init__(self, task: str, *, include: str | None = None, metric: str | None = None):
        self.task, self.include, self.metric = task, include, metric

    def _task_manager(self):
        require("lm_eval", "lmeval", "lm-eval tasks")
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=self.include) if self.include else TaskManager()

    def load_items(self, limit: int | None = None) -> list[dict]:
        from lm_eval.tasks import get_task_dict

        tasks = get_task_dict([self.task], self._task_manager())
        if self.task not in tasks:
            raise PolmError(f"lm-eval has no single task '{self.task}'", fix="Name one task, not a group.")
        docs = list(tasks[self.task].eval_docs)
        return [{"id": i} for i in range(len(docs))]

    def evaluate(self, model, items: list[dict], settings: EvalSettings) -> list[dict]:
        from lm_eval import simple_evaluate

        self.check_mode(settings.mode)
        out = simple_evaluate(model=polm_lm(model), tasks=[self.task], task_manager=self._task_manager(),
                              samples={self.task: [it["id"] for it in items]}, log_samples=True,
                              num_fewshot=settings.num_fewshot if settings.mode == "few-shot" else 0,
                              fewshot_random_seed=settings.seed, bootstrap_iters=0)
        samples = sorted(out["samples"][self.task], key=lambda s: s["doc_id"])
        names = self._metric_names(out["configs"][self.task])
        self.primary_metric = self.metric or names[0]  # type: ignore[misc]
        return [{"id": s["doc_id"], "target": str(s.get("target")), "category": None,
                 "metrics": {m: float(s[m]) for m in names if isinstance(s.get(m), (int, float, bool))}}
                for s in samples]

    @staticmethod
    def _metric_names(config: dict[str, Any]) -> list[str]:
        return [m["metric"] for m in config.get("metric_list", [])] or ["acc"]


@TASKS.register("lm-eval")
def lm_eval_task(task: str, *, include: str | None = None, metric: str | None = None) -> Task:
    """lm-eval:<task>?include=DIR_WITH_TASK_YAMLS&metric=acc"""
    if not task:
        raise PolmError("lm-eval: needs a task name", fix="Write e.g. lm-eval:my_task?include=tasks/.")
    return LMEvalTask(task, include=include, metric=metric)


def export_choice_task(task: Task, items: list[dict], directory: Path, name: str) -> Path:
    """Write `task`'s multiple-choice items (plain zero-shot prompts, choices " (A)".." (D)") as a
    local-data lm-eval task `name` in `directory`; returns the YAML path."""
    from polm.eval.builtin_tasks import LETTERS
    from polm.eval.prompting import build_prompt

    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"context": build_prompt(task, it, [], "zero-shot", chat=False),
                                        "choices": [f"({x})" for x in LETTERS], "gold": it["gold"]}) + "\n"
                            for it in items))
    yaml_path = directory / f"{name}.yaml"
    yaml_path.write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{gold}}\"\ntarget_delimiter: \" \"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return yaml_path
