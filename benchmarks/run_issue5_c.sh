#!/usr/bin/env bash
# Device call for issue #5 (fourth session): where whole-model time goes (breakdown.py,
# NCHW and channels-last), then the characterization's model rows for group with the
# fused backends (fp16, no layers: those are in characterize-fp16/).
#   bash benchmarks/run_issue5_c.sh "$OUT" [model ...]   (models for the characterization)
set -uo pipefail
OUT=${1:?output folder}; shift
ROOT=$PWD
export PYTHONPATH=$ROOT/src
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv | tee "$OUT/device.txt"
cd "$ROOT/benchmarks/compact"
OUT=$OUT timeout 190 python3 breakdown.py --cases 0,2 > "$OUT/breakdown.log" 2>&1
OUT=$OUT timeout 130 python3 breakdown.py --cases 2 --channels-last > "$OUT/breakdown-cl.log" 2>&1
cd "$ROOT"
grep -h "^|\|^kept" "$OUT/breakdown.log" "$OUT/breakdown-cl.log"
# results.json is written row by row: a run cut short by the timeout keeps its rows
timeout 255 python3 - "$OUT/char-models" "$@" > "$OUT/char.log" 2>&1 <<'PY'
import sys
from dataclasses import replace
from spruce.bench.characterize import characterize, get_preset
p = replace(get_preset("gpu"), backends=("dense", "groupwise", "groupwise_fused"))
characterize(p, sys.argv[1], dtype="fp16", models=sys.argv[2:] or ["resnet18", "vit", "vgg16"],
             patterns=["group"], layers=False, progress=False)
PY
echo "characterize rc $?"; tail -3 "$OUT/char.log"
