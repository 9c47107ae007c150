"""bench/compress_vs_peers.py's own logic: the mask agreement by hand, a missing peer venv said in words,
and a worker run under another interpreter (`spec["python"]`)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import compress_vs_peers as cvp  # noqa: E402


def test_mask_agreement_counts_entries_both_zero_or_both_kept(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    w = "model.layers.0.mlp.up_proj.weight"
    save_file({w: torch.tensor([[0.0, 1.0], [2.0, 0.0]]), "model.norm.weight": torch.zeros(2)}, a / "model.safetensors")
    save_file({w: torch.tensor([[0.0, 3.0], [0.0, 4.0]]), "model.norm.weight": torch.ones(2)}, b / "model.safetensors")
    # zero patterns [[1,0],[0,1]] vs [[1,0],[1,0]]: 2 of 4 agree; the norm is not a decoder Linear
    assert cvp.mask_agreement(a, b) == {"mask_agreement": 0.5, "weights_compared": 4}


def test_a_missing_peer_interpreter_is_reported_not_raised(tmp_path):
    python, why = cvp.llmc_status(str(tmp_path / "nope" / "python"))
    assert python is None and "no interpreter at" in why and cvp.LLMC_VERSION in why


def test_run_worker_uses_the_spec_interpreter(tmp_path):
    script = tmp_path / "w.py"
    script.write_text("import json, sys\nopen(sys.argv[4], 'w').write(json.dumps({'exe': sys.executable}))\n")
    assert common.run_worker(script, {"python": sys.executable})["exe"] == sys.executable
