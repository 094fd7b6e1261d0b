#!/usr/bin/env bash
# On a GPU machine, in one call: the training throughput bench, then the shortened CIFAR-100 run
# (ResNet-56 -> ResNet-20, 30 epochs each) with the wall time of each stage. CIFAR-100 comes from
# $CIFAR100_NPZ, or is made from the parts carried with the calls before (see join_cifar100 in
# bench/gpu_env.sh). Output goes to $OUT (default /tmp/gpu-bench).
#   bash bench/gpu_cifar100.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
install_carried_wheels || exit 1
join_cifar100
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 bench/train_throughput.py --device cuda --steps 100 2>&1 | tee "$OUT/bench.txt"
python3 bench/train_throughput.py --device cuda --steps 100 --teacher resnet56 --student resnet20 2>&1 \
  | tee "$OUT/bench_resnet56.txt"
start=$(date +%s)
python3 -m pipeline run profiles/paper/cifar100_resnet56_resnet20_30ep.yaml --until distill --device cuda \
  --artifacts "$OUT/artifacts" --set data.root="$DATA" 2>&1 | tee "$OUT/run.log"
echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
