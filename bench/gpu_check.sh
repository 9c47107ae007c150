#!/usr/bin/env bash
# Every GPU check of polm in one call, sized for a 10-minute device command (docs/performance.md, "GPU").
#   bash bench/gpu_check.sh            # results under $OUT (or bench/results/gpu/) and a summary on stdout
# Each step is time-boxed so one slow step cannot eat the others' time; a failed step is reported and the
# next one runs. Needs the repository's venv (make install) with a CUDA build of torch on the device.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

step() {   # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    echo "ok    $name ($((SECONDS - t0)) s)"
  else
    echo "FAIL  $name (exit $?, $((SECONDS - t0)) s): $(tail -n 3 "$OUT/$name.log" | tr '\n' ' ')"
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"

step sft_vs_trl  120 $PY bench/sft_vs_trl.py  --quick --device cuda --out "$OUT/sft_vs_trl_cuda.json"
step dpo_vs_trl  120 $PY bench/dpo_vs_trl.py  --quick --device cuda --out "$OUT/dpo_vs_trl_cuda.json"
step grpo_vs_trl 150 $PY bench/grpo_vs_trl.py --quick --device cuda --out "$OUT/grpo_vs_trl_cuda.json"
step eval_vs_lmeval 90 $PY bench/eval_vs_lmeval.py --limit 50 --repeats 1 --device cuda
step distill_vs_trl 90 $PY bench/distill_vs_trl.py --quick --device cuda --out "$OUT/distill_vs_trl_cuda.json"
echo "results in $OUT"
