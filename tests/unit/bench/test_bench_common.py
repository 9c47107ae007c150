"""bench/common.py helpers: alternation order, spreads, the command line, /proc memory parsing, the
peak RSS of a block alone (the kernel's high-water mark reset at its start), the flags and result file
every bench shares, a worker run through `run_worker` -> `serve_worker`, and the TRL step clock."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import common  # noqa: E402

LINUX_PEAK_RESET = Path("/proc/self/clear_refs").exists() and Path("/proc/self/status").exists()


def test_alternation_reverses_every_other_round():
    assert common.alternation_order(["a", "b"], 3) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert common.alternation_order(["a", "b", "c", "d"], 2) == [
        (0, "a"), (0, "b"), (0, "c"), (0, "d"), (1, "d"), (1, "c"), (1, "b"), (1, "a")]


def test_alternate_runs_warmups_first_then_the_rounds_in_order():
    calls = []
    trials = {name: (lambda name=name: calls.append(name) or {"n": len(calls)}) for name in ("polm", "trl")}
    warmups = {name: (lambda name=name: calls.append(f"warm {name}") or {}) for name in ("polm", "trl")}
    results, warmed = common.alternate(trials, 3, warmups, log=lambda _: None)
    assert calls == ["warm polm", "warm trl", "polm", "trl", "trl", "polm", "polm", "trl"]
    assert [r["n"] for r in results["polm"]] == [3, 6, 7]
    assert [r["n"] for r in results["trl"]] == [4, 5, 8]
    assert set(warmed) == {"polm", "trl"}


def test_spread_is_median_min_max_and_the_values():
    assert common.spread([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "values": [3.0, 1.0, 2.0]}
    assert common.spread([4, 1])["median"] == 2.5


def test_command_line_is_how_to_rerun_it():
    assert common.command_line(Path("/x/bench/grpo_vs_trl.py"), ["--quick", "a b"]) == \
        "python bench/grpo_vs_trl.py --quick 'a b'"


def test_memory_status_parses_proc_status_in_mib():
    text = "Name:\tpython\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nRssAnon:\t     512 kB\nRssFile:\t     256 kB\n"
    assert common.memory_status_mib(text) == {"VmHWM": 2.0, "VmRSS": 1.0, "RssAnon": 0.5, "RssFile": 0.25}


def test_cpu_flags_are_booleans_for_the_names_asked():
    flags = common.cpu_flags(("avx2", "no_such_flag"))
    assert flags in ({}, {"avx2": flags.get("avx2"), "no_such_flag": False})


@pytest.mark.skipif(not LINUX_PEAK_RESET, reason="needs Linux /proc/self/clear_refs")
def test_peak_rss_counts_the_block_alone_and_keeps_the_process_peak():
    earlier = torch.ones(64 * 2**20 // 4)          # 64 MiB touched before the block, then freed
    del earlier
    before_block = common.peak_rss_mib()
    mem = common.PeakRss()

    def allocate(mib: int) -> float:
        x = torch.ones(mib * 2**20 // 4)
        return float(x[0])

    first, second = mem.wrap("first", allocate), mem.wrap("second", allocate)
    with mem:
        first(32)
        second(16)
    out = mem.as_dict()
    assert out["method"] == "VmHWM after clear_refs reset"
    assert 30 <= out["peak_delta_mib"] < 48          # the 32 MiB phase, not the 64 MiB from before
    phases = {p["name"]: p for p in out["phases"]}
    assert list(phases) == ["first", "second"]
    assert 30 <= phases["first"]["peak_delta_mib"] < 40
    assert 14 <= phases["second"]["peak_delta_mib"] < 24
    assert common.peak_rss_mib() >= before_block      # the reset does not lose the process's peak


def test_peak_rss_phases_do_not_nest_and_need_the_block():
    mem = common.PeakRss()
    with pytest.raises(RuntimeError, match="inside the block"):
        with mem.phase("outside"):
            pass
    with mem:
        with mem.phase("outer"):
            with pytest.raises(RuntimeError, match="not inside another phase"):
                with mem.phase("inner"):
                    pass
    assert [p["name"] for p in mem.as_dict()["phases"]] == ["outer"]


def test_wrap_iter_measures_the_whole_iteration():
    mem = common.PeakRss()
    gen = mem.wrap_iter("merge", lambda n: (i for i in range(n)))
    with mem:
        assert list(gen(3)) == [0, 1, 2]
    assert [p["name"] for p in mem.as_dict()["phases"]] == ["merge"]


# --- the shared command line, the worker protocol, the TRL step clock ----------------------------------

def _bench_parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    common.add_output_args(parser, "x_vs_y", **kwargs)
    return parser


def test_output_args_default_to_the_results_file_named_after_the_bench():
    args = _bench_parser().parse_args([])
    assert (args.threads, args.out, args.worker, args.result) == (None, None, None, None)
    assert common.results_path("x_vs_y", args.quick, args.out) == common.RESULTS_DIR / "x_vs_y.json"
    assert common.results_path("x_vs_y", True, None) == common.RESULTS_DIR / "x_vs_y_quick.json"
    args = _bench_parser().parse_args(["--threads", "2", "--out", "elsewhere/r.json", "--quick"])
    assert args.threads == 2 and common.results_path("x_vs_y", args.quick, args.out) == Path("elsewhere/r.json")


def test_output_args_show_out_and_threads_and_hide_the_worker_flags():
    text = " ".join(_bench_parser().format_help().split())   # argparse wraps help lines
    assert "default: bench/results/x_vs_y.json (_quick.json with --quick)" in text
    assert common.THREADS_HELP in text and "--worker" not in text and "--result" not in text
    assert "--threads" not in _bench_parser(threads_help=None).format_help()
    assert _bench_parser(threads_help=None).parse_args(["--worker", "s.json", "--result", "r.json"]).worker == "s.json"


def test_given_keeps_only_the_values_set_on_the_command_line():
    assert common.given(steps=None, repeats=5, impl="fused", warm=0) == {"repeats": 5, "impl": "fused"}


@dataclasses.dataclass
class _Settings:
    steps: int = 10
    repeats: int = 3
    warmup: bool = True
    device: str = "cpu"


def test_with_flags_puts_quick_over_the_defaults_and_given_flags_over_both():
    quick = {"steps": 3, "repeats": 1, "warmup": False}
    base = _Settings(device="cuda")
    assert common.with_flags(base) == base
    assert common.with_flags(base, quick) == _Settings(3, 1, False, "cuda")
    assert common.with_flags(base, quick, steps=6, repeats=None) == _Settings(6, 1, False, "cuda")
    assert common.with_flags(base, None, repeats=5) == _Settings(10, 5, True, "cuda")


def test_a_parent_is_no_worker():
    calls = []
    assert common.serve_worker(argparse.Namespace(worker=None, result=None), calls.append) is False
    assert calls == []


def test_a_worker_reads_its_spec_and_writes_the_result_with_its_peak_rss(tmp_path, monkeypatch):
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"side": "polm", "n": 3}))
    monkeypatch.delenv("POLM_BENCH_TEST_A", raising=False)
    monkeypatch.setenv("POLM_BENCH_TEST_B", "kept")
    args = argparse.Namespace(worker=str(spec), result=str(result))
    served = common.serve_worker(args, lambda s: {"twice": 2 * s["n"], "env_a": os.environ["POLM_BENCH_TEST_A"]},
                                 {"POLM_BENCH_TEST_A": "1", "POLM_BENCH_TEST_B": "default"})
    out = json.loads(result.read_text())
    assert served is True and os.environ["POLM_BENCH_TEST_B"] == "kept"   # defaults never override the parent
    assert (out["twice"], out["env_a"]) == (6, "1") and out["peak_rss_mib"] > 0


def test_run_worker_and_serve_worker_speak_the_same_protocol(tmp_path):
    script = tmp_path / "bench_like.py"
    script.write_text(
        "import argparse, sys\n"
        f"sys.path.insert(0, {str(Path(common.__file__).parent)!r})\n"
        "import common\n"
        "parser = argparse.ArgumentParser()\n"
        "common.add_worker_args(parser)\n"
        "args = parser.parse_args()\n"
        "assert common.serve_worker(args, lambda spec: {'side': spec['side'], 'sum': sum(spec['values'])})\n")
    out = common.run_worker(script, {"name": "t", "side": "trl", "values": [1, 2, 4]})
    assert out.pop("peak_rss_mib") > 0 and out == {"side": "trl", "sum": 7}


def test_trainer_step_clock_marks_every_step_and_finishes_at_the_end():
    clock, events = common.StepClock(), []
    callback = common.trainer_step_clock(clock, on_begin=lambda: events.append(("begin", len(clock.wall))),
                                         on_end=lambda: events.append(("end", len(clock.wall))))
    callback.on_train_begin(None, None, None)
    for _ in range(3):
        callback.on_step_begin(None, None, None)
    callback.on_train_end(None, None, None)
    assert events == [("begin", 0), ("end", 4)]   # on_end runs after finish(): 3 step marks + the end mark
    assert len(clock.as_dict()["step_wall_s"]) == 3
    assert 0 < callback.rss_at_train_start_mib <= common.peak_rss_mib()
