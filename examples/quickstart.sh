#!/usr/bin/env bash
# Stages 1 and 2 (cache features, tune tops) on the built-in synthetic dataset: offline, CPU, about two minutes
# on 2 cores. Stage 3 (finetune), export and predict follow in README; `mlkit demo` runs all of them.
# Usage: bash examples/quickstart.sh [WORKDIR]   (default: the repository's own workspace folders)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-.}
data=examples/data/synth
mlkit data synth --task multilabel --n 600 --size 64 --out "$data"
mlkit data split "$data/manifest.csv" --val 0.15 --test 0.15 --seed 0
mlkit data stats "$data/manifest.csv" --no-images --max-labels 10
mlkit cache-features "$data/manifest.csv" --backbone vgg16 --weights none --image-size 64 \
    --pooling avg --workdir "$work"
mlkit tune-top "$work/bottlenecks/synth_all_vgg16_inet_avg.h5" --layers 1,2 --units 64,128 \
    --reg d5 --lr 0.01 --batch 32 --epochs 10 --workdir "$work"
mlkit runs "$work/tuning" --by units --plot "$work/tuning/units.png"
echo "features: $work/bottlenecks/  trials and summary.csv: $work/tuning/  plot: $work/tuning/units.png"
