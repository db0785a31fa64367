#!/usr/bin/env bash
# Device call for issue #5 (fourth session): Nsight Compute profiles of the fused kernels
# on the H100, one autotuned call each (bench_fused.py --profile), full section set, CSV.
#   bash benchmarks/run_issue5_d.sh "$OUT"
set -uo pipefail
OUT=${1:?output folder}
export PYTHONPATH=$PWD/src
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}"; [ -n "$NCU" ] || exit 3
for spec in bert-base-ffn1:fp16:0.5 bert-base-ffn2:fp16:0.5 vgg16-conv:fp16:0.5; do
  f=$OUT/ncu-${spec//:/_}.csv
  timeout 170 "$NCU" --nvtx --nvtx-include "profile/" --set full --csv --page details \
    python3 benchmarks/kernels/bench_fused.py --profile "$spec" > "$f" 2> "$f.err"
  echo "$spec rc $?"; grep -E '"(Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per Thread)"' "$f" | cut -d, -f13-16 | head -8
done
