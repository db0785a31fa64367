#!/usr/bin/env bash
# MiniLM learned-mask runs on a GPU machine with no network: the model files travel in
# .minilm/ (the word-embedding rows no corpus sentence uses are zeroed, so the file gzips
# under the transfer limit; every other tensor is byte-identical; see results.md).
# Pack first (here): PYTHONPATH=src:. python benchmarks/learned_masks/pack_minilm.py; carry .minilm
# Usage: bash benchmarks/learned_masks/device_run.sh OUTDIR "ARGS A" "ARGS B" ...
# The first argument set also runs the baselines; the others run learned masks only.
set -u
out=$1; shift
mkdir -p /tmp/mini "$out"
cp .minilm/*.* /tmp/mini/ && gunzip -c .minilm/gz/model.safetensors.gz > /tmp/mini/model.safetensors
export PYTHONPATH=src:. PYTHONUNBUFFERED=1
i=0
for a in "$@"; do
  extra=""; [ $i -gt 0 ] && extra="--skip-baselines"
  # shellcheck disable=SC2086
  python benchmarks/learned_masks/minilm.py --device cuda --model-dir /tmp/mini --quiet \
    --output "$out" --tag="-run$i" $extra $a 2>&1 | grep -v Warning | tail -8
  i=$((i + 1))
done
