"""Shared helpers for polm's side-by-side benchmarks (see BENCHMARKS.md): the machine, fresh-process
workers with their peak memory, the matmul peak for utilisation, and the alternating A/B runner.

A bench script imports this as `common` (running `python bench/x.py` puts bench/ on sys.path) and
re-runs itself as a worker: `python bench/x.py --worker SPEC.json --result OUT.json`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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


def machine_description(device: str = "cpu", packages: Sequence[str] = ("torch", "transformers", "peft")) -> dict:
    """What the numbers were measured on: CPU model, cores, memory, load, GPU name, package versions."""
    import torch

    desc: dict[str, Any] = {
        "cpu": cpu_model(), "cores": usable_cores(), "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": package_versions(packages),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        desc["gpu"] = torch.cuda.get_device_name(0)
        desc["cuda"] = torch.version.cuda
    return desc


# --- one measurement per fresh process ---------------------------------------------------------------

def peak_rss_mib() -> float:
    """Peak resident set size of THIS process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run_worker(script: Path, spec: dict, timeout_s: float = 1800, env: dict[str, str] | None = None) -> dict:
    """Run `python script --worker SPEC --result OUT` in a fresh process and return the JSON it wrote.

    A fresh process per trial makes the worker's own peak RSS the memory of that trial alone (no
    allocator cache or import left over from another one). The worker's stderr is shown on failure.
    """
    with tempfile.TemporaryDirectory(prefix="polm-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, str(script), "--worker", str(spec_path), "--result", str(out_path)]
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


# --- the physical limit ------------------------------------------------------------------------------

def matmul_peak_flops(device: str = "cpu", n: int | None = None, repeats: int = 5) -> dict:
    """Best-of-`repeats` rate of one n×n @ n×n matmul (2n³ FLOPs): fp32 on CPU, bf16 on CUDA.

    This is the machine's practical ceiling, measured in the same run: the denominator of model
    FLOPs utilisation (MFU). On CPU it is also given per CPU-second (`flops_per_cpu_s`, the rate of
    the cores this process was actually granted), which other processes' load disturbs far less than
    wall time. Default n: 2048 on CPU (~17 GFLOP), 8192 on CUDA.
    """
    import torch

    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 2048)
    dtype = torch.bfloat16 if cuda else torch.float32
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

def alternate(trials: dict[str, Callable[[], dict]], repeats: int,
              warmups: dict[str, Callable[[], dict]] | None = None,
              log: Callable[[str], None] = print) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Run each warm-up once (its result is not measured), then `repeats` rounds of A B …, the order of
    the round reversed every other time (A B, B A, A B, …) so neither side always follows the other.

    A warm-up may be a cheaper call than its trial (fewer steps): it only has to bring code and
    weights into the page cache. Returns ({name: [result of each round]}, {name: warm-up result}).
    """
    warmed = {}
    for name, fn in (warmups or {}).items():
        log(f"warm-up: {name}")
        warmed[name] = fn()
    names = list(trials)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            log(f"round {r + 1}/{repeats}: {name}")
            results[name].append(trials[name]())
    return results, warmed


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


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


def write_json_atomic(path: Path, data: dict) -> Path:
    """Write JSON through a temp file + rename, so a killed bench never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


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
