#!/usr/bin/env bash
# Device call A for issue #5: GPU tests, the gather probe, whole-model compaction.
#   bash benchmarks/run_issue5_a.sh "$OUT"
set -uo pipefail
OUT=${1:?output folder}
export PYTHONPATH=src
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a "$OUT/device.txt"
timeout 200 python3 -m pytest -q -m gpu tests/ -n 8 -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
tail -3 "$OUT/gpu_tests.log"
timeout 120 python3 benchmarks/kernels/gather_probe.py --out "$OUT" > "$OUT/gather.log" 2>&1
tail -17 "$OUT/gather.log"
OUT=$OUT timeout 240 python3 benchmarks/compact/bench_compact.py --cases 2,0,1 > "$OUT/compact.log" 2>&1
grep -v "^{" "$OUT/compact.log" | tail -45
