"""Shared helpers for polm's side-by-side benchmarks (see BENCHMARKS.md): the machine and its load, fresh-process
workers with their peak memory (whole process, or one block alone), the matmul peak, the alternating A/B runner,
the command-line flags and result file every bench has.

A bench script imports this as `common` (running `python bench/x.py` puts bench/ on sys.path) and
re-runs itself as a worker: `python bench/x.py --worker SPEC.json --result OUT.json`. Its `main` starts with

    args = parse_args(argv)                       # common.add_output_args / add_worker_args add the shared flags
    if common.serve_worker(args, worker):         # in a worker: worker(spec) -> result JSON, then exit
        return 0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --- the machine -------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """{distribution: installed version or None}, read from metadata so nothing heavy is imported."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags(names: Sequence[str] = CPU_FLAGS) -> dict[str, bool]:
    """Which of `names` /proc/cpuinfo lists: whether bf16 matmuls have hardware support (avx512_bf16, amx_bf16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return {name: name in present for name in names}


def load_avg_1m() -> float:
    """The 1-minute load average: how busy the machine was (compare it with `cores`)."""
    return round(os.getloadavg()[0], 2)


def command_line(script: str | Path, argv: Sequence[str] | None = None) -> str:
    """How this run was started, as one would retype it: `python bench/<script> <args>`."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"bench/{Path(script).name}", *map(shlex.quote, args)])


def machine_description(device: str = "cpu", packages: Sequence[str] = ("torch", "transformers", "peft")) -> dict:
    """What the numbers were measured on: CPU model and flags, cores, memory, load, GPU name, package versions."""
    import torch

    desc: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": usable_cores(), "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_avg_1m_at_start": load_avg_1m(),
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": package_versions(packages),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        desc["gpu"] = torch.cuda.get_device_name(0)
        desc["cuda"] = torch.version.cuda
    return desc


# --- one measurement per fresh process ---------------------------------------------------------------

_PEAK_BEFORE_RESET_MIB = 0.0   # the process's peak before a PeakRss reset it (the reset also clears ru_maxrss)


def peak_rss_mib() -> float:
    """Peak resident set size of THIS process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS),
    including any peak from before a `PeakRss` block reset the kernel's high-water mark."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = memory_status_mib().get("VmHWM", 0.0)   # live; ru_maxrss can lag it by a fraction of a MiB
    return max(peak / 2**20 if sys.platform == "darwin" else peak / 2**10, hwm, _PEAK_BEFORE_RESET_MIB)


def memory_status_mib(text: str | None = None) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process from /proc/self/status, MiB ({} off Linux).

    RssFile counts pages of mapped files (e.g. safetensors read through mmap), which the kernel can drop
    and re-read; RssAnon is memory the process allocated itself.
    """
    if text is None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return {}
    found = re.findall(r"^(VmRSS|VmHWM|RssAnon|RssFile):\s+(\d+) kB", text, flags=re.M)
    return {key: int(kib) / 1024 for key, kib in found}


def reset_peak_rss() -> bool:
    """Set the kernel's peak-RSS mark (VmHWM, and ru_maxrss with it) to the current RSS: write "5" to
    /proc/self/clear_refs (Linux >= 4.0). The peak so far is kept for `peak_rss_mib`. False if not possible."""
    global _PEAK_BEFORE_RESET_MIB
    before = peak_rss_mib()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    _PEAK_BEFORE_RESET_MIB = max(_PEAK_BEFORE_RESET_MIB, before)
    return True


class PeakRss:
    """The peak resident memory of one block of code alone, and of named phases inside it:

        mem = PeakRss()
        merge = mem.wrap("merge", merge)          # a function the block calls: a phase
        with mem:
            run()
        mem.as_dict()   # {"rss_before_mib", "peak_mib", "peak_delta_mib", ..., "phases": [{"name", ...}]}

    `peak_mib` is the kernel's high-water mark (VmHWM) after resetting it at entry (`reset_peak_rss`), so
    nothing before the block (imports, loading) can set it; each phase resets it again at its start and
    reads it at its end (the block's peak is the highest of all readings), so a phase's `peak_delta_mib`
    is what that phase added over the RSS it started from. Where the reset is not possible the peaks are
    sampled maxima instead (`method` says which). A thread samples VmRSS every `interval_s`: when the
    sampled peak happened and how it splits into anonymous memory and mapped-file pages (a sampler can
    miss a peak shorter than its interval; VmHWM cannot). Phases run one at a time, never nested.
    """

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.phases: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timeline: list[tuple[float, dict[str, float]]] = []
        self._started, self._high, self._reset = 0.0, 0.0, False
        self._active, self._in_phase = False, False

    def __enter__(self) -> PeakRss:
        self._reset = reset_peak_rss()
        self._before = memory_status_mib()
        self._started, self._active = time.perf_counter(), True
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self._fold()
        self._active = False
        seconds = time.perf_counter() - self._started
        before = self._before.get("VmRSS", float("nan"))
        best_at, best = self._sampled_peak(0.0, seconds)
        peak = self._high if self._reset else best.get("VmRSS", float("nan"))
        self.result = {
            "rss_before_mib": round(before, 1), "peak_mib": round(peak, 1), "peak_delta_mib": round(peak - before, 1),
            "rss_after_mib": round(memory_status_mib().get("VmRSS", float("nan")), 1),
            "method": "VmHWM after clear_refs reset" if self._reset else "sampled VmRSS",
            "sampled_peak_mib": round(best.get("VmRSS", float("nan")), 1), "sampled_peak_at_s": round(best_at, 3),
            "anon_at_sampled_peak_mib": round(best.get("RssAnon", float("nan")), 1),
            "file_at_sampled_peak_mib": round(best.get("RssFile", float("nan")), 1),
            "samples": len(self._timeline), "seconds": round(seconds, 3), "phases": list(self.phases)}

    def as_dict(self) -> dict[str, Any]:
        return dict(self.result)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the code inside as phase `name` (inside the block, not inside another phase)."""
        if not self._active or self._in_phase:
            raise RuntimeError(f"PeakRss phase '{name}' must run inside the block and not inside another phase")
        self._fold()
        if self._reset:
            reset_peak_rss()
        start, t0 = memory_status_mib(), time.perf_counter() - self._started
        self._in_phase = True
        try:
            yield
        finally:
            self._in_phase = False
            t1 = time.perf_counter() - self._started
            self._sample()
            hwm = self._fold()
            _, best = self._sampled_peak(t0, t1)
            peak = hwm if self._reset else best.get("VmRSS", float("nan"))
            rss0 = start.get("VmRSS", float("nan"))
            self.phases.append({
                "name": name, "start_s": round(t0, 3), "seconds": round(t1 - t0, 3), "rss_start_mib": round(rss0, 1),
                "peak_mib": round(peak, 1), "peak_delta_mib": round(peak - rss0, 1),
                "anon_at_sampled_peak_mib": round(best.get("RssAnon", float("nan")), 1),
                "file_at_sampled_peak_mib": round(best.get("RssFile", float("nan")), 1)})

    def wrap(self, name: str, fn: Callable) -> Callable:
        """fn, each call of it measured as phase `name`."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return wrapper

    def wrap_iter(self, name: str, fn: Callable) -> Callable:
        """A generator function, its whole iteration measured as phase `name`."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.phase(name):
                yield from fn(*args, **kwargs)
        return wrapper

    def _fold(self) -> float:
        """Read VmHWM and keep the highest reading since entry."""
        hwm = memory_status_mib().get("VmHWM", float("nan"))
        self._high = max(self._high, hwm)
        return hwm

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        self._timeline.append((time.perf_counter() - self._started, memory_status_mib()))

    def _sampled_peak(self, t0: float, t1: float) -> tuple[float, dict[str, float]]:
        """(time, status) of the highest sampled VmRSS in [t0, t1] ({} if no sample fell there)."""
        window = [(t, st) for t, st in list(self._timeline) if t0 <= t <= t1 and "VmRSS" in st]
        return max(window, key=lambda x: x[1]["VmRSS"]) if window else (t0, {})


def run_worker(script: Path, spec: dict, timeout_s: float = 1800, env: dict[str, str] | None = None) -> dict:
    """Run `python script --worker SPEC --result OUT` in a fresh process and return the JSON it wrote
    (`spec["python"]`, when given, is the interpreter: a peer in its own virtual environment).

    A fresh process per trial makes the worker's own peak RSS the memory of that trial alone (no
    allocator cache or import left over from another one). The worker's stderr is shown on failure.
    """
    with tempfile.TemporaryDirectory(prefix="polm-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [spec.get("python") or sys.executable, str(script), "--worker", str(spec_path), "--result", str(out_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **(env or {})})
        if proc.returncode != 0 or not out_path.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
            raise RuntimeError(f"bench worker {spec.get('name', '?')} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out_path.read_text())


def write_worker_result(path: str | Path, result: dict) -> None:
    """Called last in a worker: add its peak RSS and write the result for `run_worker`."""
    result = {**result, "peak_rss_mib": round(peak_rss_mib(), 1)}
    Path(path).write_text(json.dumps(result))


# Environment a worker of the transformers/TRL benches sets where the parent did not: no hub lookups, no
# tokenizer thread pool beside torch's.
HF_WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
HF_WORKER_ENV_NO_TQDM = {**HF_WORKER_ENV, "TQDM_DISABLE": "1"}   # and no progress bars on its stderr


def serve_worker(args: argparse.Namespace, work: Callable[[dict], dict],
                 env_defaults: dict[str, str] | None = None) -> bool:
    """In a worker process (`--worker SPEC --result OUT`, as `run_worker` starts it): set `env_defaults` where
    unset, run `work(spec)` and write what it returns with the process's peak RSS (`write_worker_result`).
    Returns whether this process was a worker; the parent (no --worker) gets False and goes on."""
    if not args.worker:
        return False
    for key, value in (env_defaults or {}).items():
        os.environ.setdefault(key, value)
    write_worker_result(args.result, work(json.loads(Path(args.worker).read_text())))
    return True


# --- the command line and the result file ------------------------------------------------------------

THREADS_HELP = "torch intra-op threads per worker (default: one per core)"
THREADS_HELP_CONTENDED = THREADS_HELP + "; 1 avoids OpenMP stalls when other processes oversubscribe the cores"


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """The hidden `--worker SPEC.json --result OUT.json` a bench is re-run with by `run_worker`."""
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def add_output_args(parser: argparse.ArgumentParser, benchmark: str, threads_help: str | None = THREADS_HELP) -> None:
    """The flags a bench's parser ends with: `--threads` (none when `threads_help` is None), `--out` (default
    `results_path(benchmark, quick)`) and the hidden worker flags."""
    if threads_help is not None:
        parser.add_argument("--threads", type=int, help=threads_help)
    parser.add_argument("--out", type=Path, help=f"default: bench/results/{benchmark}.json (_quick.json with --quick)")
    add_worker_args(parser)


def results_path(benchmark: str, quick: bool, out: str | Path | None = None) -> Path:
    """`out` if given, else bench/results/<benchmark>.json (<benchmark>_quick.json for a --quick run)."""
    return Path(out) if out else RESULTS_DIR / (f"{benchmark}_quick.json" if quick else f"{benchmark}.json")


def write_report(out: Path, report: dict) -> None:
    """Write a bench's report (atomically) and say where, with its `wall_s`."""
    from polm.io import atomic_write_json

    atomic_write_json(out, report)
    print(f"wrote {out} ({report['wall_s']:.0f} s)")


def given(**values: Any) -> dict[str, Any]:
    """The values given on the command line (None and 0 are not): overrides of a Settings' defaults."""
    return {key: value for key, value in values.items() if value}


def with_flags(settings: Any, quick: dict[str, Any] | None = None, **flags: Any) -> Any:
    """A bench's Settings (a dataclass) with the `quick` values (a --quick run) over its own, then the flags
    given on the command line (`given`: None and 0 are not) over both."""
    return dataclasses.replace(settings, **{**(quick or {}), **given(**flags)})


class StepClock:
    """Wall and CPU time (all threads of this process) at the start of every optimizer step and at the end.

    Call `mark()` when a step starts and `finish()` when training ends; `as_dict()` gives each step's
    wall and CPU seconds (step k: from its mark to the next one). CPU seconds are the figure that
    contention from other processes disturbs least; wall seconds are what a user waits for.
    """

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def mark(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def finish(self) -> None:
        self.mark()

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.wall, self.wall[1:])]

    def as_dict(self) -> dict:
        return {"step_wall_s": self.step_seconds(), "step_cpu_s": [b - a for a, b in zip(self.cpu, self.cpu[1:])]}


def synchronize(device: str) -> None:
    """Wait for the queued CUDA kernels (nothing on CPU): a clock read after it counts their time."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def trainer_step_clock(clock: StepClock, on_begin: Callable[[], Any] | None = None,
                       on_end: Callable[[], Any] | None = None, device: str = "cpu"):
    """A transformers `TrainerCallback` that runs `clock` over a peer's `Trainer.train()`: `mark()` when each
    optimizer step begins, `finish()` when training ends (after `synchronize(device)`).

    When training begins it records `rss_at_train_start_mib` (the process's peak RSS so far) and then calls
    `on_begin`; `on_end` is called after the clock has finished.
    """
    from transformers import TrainerCallback

    class StepClockCallback(TrainerCallback):
        rss_at_train_start_mib = 0.0

        def on_train_begin(self, *args, **kwargs):
            self.rss_at_train_start_mib = peak_rss_mib()
            if on_begin is not None:
                on_begin()

        def on_step_begin(self, *args, **kwargs):
            clock.mark()

        def on_train_end(self, *args, **kwargs):
            synchronize(device)
            clock.finish()
            if on_end is not None:
                on_end()

    return StepClockCallback()


# --- the physical limit ------------------------------------------------------------------------------

def matmul_peak_flops(device: str = "cpu", n: int | None = None, repeats: int = 5, dtype: str | None = None) -> dict:
    """Best-of-`repeats` rate of one n×n @ n×n matmul (2n³ FLOPs): fp32 on CPU, bf16 on CUDA (or `dtype`).

    This is the machine's practical ceiling, measured in the same run: the denominator of model
    FLOPs utilisation (MFU). On CPU it is also given per CPU-second (`flops_per_cpu_s`, the rate of
    the cores this process was actually granted), which other processes' load disturbs far less than
    wall time. Default n: 2048 on CPU (~17 GFLOP), 8192 on CUDA.
    """
    import torch

    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 2048)
    dtype = getattr(torch, dtype) if dtype else torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    wall, cpu = float("inf"), float("inf")
    for i in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        started, started_cpu = time.perf_counter(), time.process_time()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        if i > 0:  # the first call pays for allocation and kernel selection
            wall = min(wall, time.perf_counter() - started)
            cpu = min(cpu, time.process_time() - started_cpu)
    flops = 2 * n**3
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "seconds": wall, "flops_per_s": flops / wall,
            "flops_per_cpu_s": None if cuda else flops / cpu}


# --- alternating A/B trials --------------------------------------------------------------------------

def alternation_order(names: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(round, name) in the order trials run: A B, B A, A B, … (each round reversed from the one before,
    so neither side always follows the other, and every side runs once per round)."""
    return [(r, name) for r in range(repeats) for name in (names if r % 2 == 0 else list(names)[::-1])]


def alternate(trials: dict[str, Callable[[], dict]], repeats: int,
              warmups: dict[str, Callable[[], dict]] | None = None,
              log: Callable[[str], None] = print) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Run each warm-up once (its result is not measured), then `repeats` rounds in `alternation_order`.

    A warm-up may be a cheaper call than its trial (fewer steps): it only has to bring code and
    weights into the page cache. Returns ({name: [result of each round]}, {name: warm-up result}).
    """
    warmed = {}
    for name, fn in (warmups or {}).items():
        log(f"warm-up: {name}")
        warmed[name] = fn()
    results: dict[str, list[dict]] = {name: [] for name in trials}
    for r, name in alternation_order(list(trials), repeats):
        log(f"round {r + 1}/{repeats}: {name}")
        results[name].append(trials[name]())
    return results, warmed


def alternate_workers(script: Path, specs: dict[str, dict], repeats: int,
                      warmups: dict[str, dict] | None = None, env: dict[str, str] | None = None,
                      log: Callable[[str], None] = print, timeout_s: float = 1800) -> tuple[dict, dict]:
    """`alternate` over fresh worker processes: each side's spec (and warm-up spec) run by `run_worker`."""
    def runner(spec: dict) -> Callable[[], dict]:
        return lambda: run_worker(script, spec, timeout_s=timeout_s, env=env)

    return alternate({name: runner(spec) for name, spec in specs.items()}, repeats,
                     {name: runner(spec) for name, spec in warmups.items()} if warmups else None, log)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> dict[str, Any]:
    """{"median", "min", "max", "values"} of one figure over repeats (NaN for no values)."""
    vals = [float(v) for v in values]
    nan = float("nan")
    return {"median": median(vals), "min": min(vals) if vals else nan, "max": max(vals) if vals else nan,
            "values": vals}


# --- output ------------------------------------------------------------------------------------------

def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table (markdown-compatible pipes) with columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


# --- worker-side helpers shared by the training benchmarks ----------------------------------------------

def precision_for(device: str) -> str:
    """The precision both sides train in: bf16 autocast on CUDA, fp32 on CPU."""
    return "bf16" if device.startswith("cuda") else "fp32"


def param_counts(model) -> dict:
    """Unique parameters (tied embeddings once) and the trainable ones, plus layers/width for attention FLOPs."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    cfg = model.config
    return {"params": total, "trainable": trainable, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size}


def cuda_peak_mib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def set_threads(threads: int | None) -> None:
    """Intra-op threads for this process (None: torch's default, one per core)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
