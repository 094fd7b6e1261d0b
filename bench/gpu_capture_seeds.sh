#!/usr/bin/env bash
# On a GPU machine, once CIFAR-100 is there: ResNet-20 for 30 epochs, eager and captured, seeds 0-2
# (bench/capture_seeds.py), the six trainings side by side under MPS: about 3 to 4 minutes of H200 time
# (an estimate from results/gpu_captured_step.md and results/gpu_sharing.md; one after another, about 7).
# CIFAR-100 comes from $CIFAR100_NPZ, or is made from the parts carried with the calls before (see
# join_cifar100 in bench/gpu_env.sh). Wheels in .whl/ are installed into /tmp/site
# first (see bench/gpu_captured.sh). Output goes to $OUT (default /tmp/gpu-seeds).
#   bash bench/gpu_capture_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
OUT=${OUT:-/tmp/gpu-seeds}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
install_carried_wheels || exit 1
join_cifar100
python3 bench/capture_seeds.py --data "$DATA" --side-by-side 2>&1 | tee "$OUT/capture_seeds.txt"
