"""bench/common.py helpers: alternation order, spreads, the command line, /proc memory parsing and the
peak RSS of a block alone (the kernel's high-water mark reset at its start)."""

from __future__ import annotations

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
