#!/usr/bin/env bash
# GPU micro-benchmarks -> moesim-cases/1 files: ./validation/run_gpu.sh OUTDIR
#
# Needs only python with torch (CUDA build) on the GPU machine: no moesim, pydantic or simpy.
# Runs validation/bench.py's GPU tables (bf16 and fp8 GEMM, bf16 grouped GEMM with routed
# per-expert counts, MoE block forward and forward+backward at DeepSeek-V3 / Mixtral / Qwen3 /
# OLMoE / Qwen2 dims) on GPU 0, calibration set then evaluation set, and writes
# OUTDIR/<hardware>-calib.json and OUTDIR/<hardware>-eval.json (hardware = h200-sxm on an H200).
# Every suite is wrapped in try/except (failures are listed in the file's description), the file
# is rewritten after every suite, and a time budget skips what is left: the whole run stays
# under 6 minutes (hard stop by `timeout` at 330 s).
set -uo pipefail
OUT="${1:?usage: validation/run_gpu.sh OUTDIR}"
PY="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-240}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" \
    > "$OUT/torch-version.txt" 2>&1 || true
HW_ARGS=()
if [ -n "${HARDWARE:-}" ]; then HW_ARGS=(--hardware "$HARDWARE"); fi
timeout 330 "$PY" -m validation.bench --device cuda --suite all --out "$OUT" --budget-s "$BUDGET_S" \
    "${HW_ARGS[@]}" 2>&1 | tee "$OUT/bench-log.txt"
rc=${PIPESTATUS[0]}
ls -l "$OUT"
exit "$rc"
