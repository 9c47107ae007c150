"""Bridge to lm-evaluation-harness (optional: `pip install lm-eval==0.4.13`).

- `polm eval --task lm-eval:<task>?include=DIR` runs any lm-eval task on a polm model: lm-eval
  builds its instances (prompts, few-shot contexts), they become polm requests that the runner
  answers together with every other task's, and lm-eval's filters and metrics score the answers into
  polm records, so CIs, paired comparisons and reports work as for built-in tasks.
- `export_choice_task` writes a polm multiple-choice task as a local-data lm-eval task (same
  prompts, same choices), for parity checks against lm-eval's own HF backend
  (bench/eval_vs_lmeval.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from polm.errors import PolmError, require
from polm.eval.builtin_tasks import LETTERS
from polm.eval.prompting import build_prompt
from polm.eval.task import (
    TASKS,
    EvalSettings,
    GenerateRequest,
    LoglikelihoodRequest,
    PromptFormat,
    Request,
    RollingLoglikelihoodRequest,
    Task,
)


def polm_request(instance) -> Request:
    """An lm-eval Instance as the polm request that answers it (generation: `repeats` samples)."""
    if instance.request_type == "loglikelihood":
        context, continuation = instance.args
        return LoglikelihoodRequest(context, continuation)
    if instance.request_type == "loglikelihood_rolling":
        return RollingLoglikelihoodRequest(instance.args[0])
    context, kwargs = instance.args
    until = kwargs.get("until") or []
    return GenerateRequest(context, max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
                           temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                           n=instance.repeats or 1, stop=tuple([until] if isinstance(until, str) else until))


def lm_eval_responses(instance, response: Any) -> list[Any]:
    """A polm response in lm-eval's shape: one entry per repeat, (logprob, is_greedy) / logprob / text."""
    repeats = instance.repeats or 1
    if instance.request_type == "loglikelihood":
        return [tuple(response)] * repeats
    if instance.request_type == "loglikelihood_rolling":
        return [response[0]] * repeats
    return list(response)


class LMEvalTask(Task):
    """One lm-eval task; items are its evaluation documents (ids = document indices)."""

    modes = ("zero-shot", "few-shot")

    def __init__(self, task: str, *, include: str | None = None, metric: str | None = None):
        self.task, self.include, self.metric = task, include, metric

    def _task_manager(self):
        require("lm_eval", "lmeval", "lm-eval tasks")
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=self.include) if self.include else TaskManager()

    def _lm_task(self):
        from lm_eval.tasks import get_task_dict

        tasks = get_task_dict([self.task], self._task_manager())
        if self.task not in tasks:
            raise PolmError(f"lm-eval has no single task '{self.task}'", fix="Name one task, not a group.")
        return tasks[self.task]

    def load_items(self, limit: int | None = None) -> list[dict]:
        task = self._lm_task()
        self.primary_metric = self.metric or self._metric_names(task.dump_config())[0]  # type: ignore[misc]
        return [{"id": i} for i in range(len(task.eval_docs))]

    def _instances(self, items: list[dict], num_fewshot: int, seed: int) -> tuple[Any, list[list[Any]]]:
        """The lm-eval task and, per item, its instances (in lm-eval's order), built as simple_evaluate
        builds them: a task whose config fixes 0 shots keeps 0."""
        task = self._lm_task()
        if task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=seed)
        task.build_all_requests(samples=[it["id"] for it in items], rank=0, world_size=1)
        by_doc: dict[int, list[Any]] = defaultdict(list)
        for instance in task.instances:
            by_doc[instance.doc_id].append(instance)
        return task, [sorted(by_doc[pos], key=lambda x: x.idx) for pos in range(len(items))]

    def requests(self, items: list[dict], settings: EvalSettings, fmt: PromptFormat) -> list[list[Request]]:
        self.check_mode(settings.mode)
        if not items:
            return []
        num_fewshot = settings.num_fewshot if settings.mode == "few-shot" else 0
        _, per_item = self._instances(items, num_fewshot, settings.seed)
        return [[polm_request(inst) for inst in insts] for insts in per_item]

    def score_items(self, items: list[dict], requests: list[list[Any]], responses: list[list[Any]]) -> list[dict]:
        """lm-eval's filters and process_results on the answers. The instances are rebuilt zero-shot:
        filters and metrics read only the documents and the responses, never the prompts."""
        if not items:
            return []
        task, per_item = self._instances(items, 0, 0)
        for insts, answers in zip(per_item, responses):
            for inst, answer in zip(insts, answers):
                inst.resps = lm_eval_responses(inst, answer)
        task.apply_filters()
        names = self._metric_names(task.dump_config())
        docs = dict(task.doc_iterator(rank=0, world_size=1, samples=[it["id"] for it in items]))
        records = []
        for pos, (item, insts) in enumerate(zip(items, per_item)):
            for key in insts[0].filtered_resps:
                metrics = task.process_results(docs[pos], [inst.filtered_resps[key] for inst in insts])
                records.append({"id": item["id"], "target": str(task.doc_to_target(docs[pos])), "category": None,
                                "metrics": {m: float(metrics[m]) for m in names
                                            if isinstance(metrics.get(m), (int, float, bool))}})
        return records

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
