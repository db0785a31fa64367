#!/usr/bin/env bash
# Device call B for issue #5: GPU tests, then whole-model compaction (bench_compact).
#   bash benchmarks/run_issue5_b.sh "$OUT"
set -uo pipefail
OUT=${1:?output folder}
export PYTHONPATH=src
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv | tee "$OUT/device.txt"
timeout 150 python3 -m pytest -q -m gpu tests/ -n 8 -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
tail -3 "$OUT/gpu_tests.log"
OUT=$OUT timeout 400 python3 benchmarks/compact/bench_compact.py --cases 2,0,1 > "$OUT/compact.log" 2>&1
grep -v "^{" "$OUT/compact.log" | tail -45
