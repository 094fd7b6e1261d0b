#!/usr/bin/env bash
# Three calls on a GPU machine that has 15 minutes for everything and carries at most 64 MiB per call:
# CIFAR-100 travels in parts beside work that does not need it, and what needs it runs last.
#
#   bash bench/gpu_session.sh 1   # carry .whl .data/chunk.py .data/c100/part-00.npz   about 4 min
#   bash bench/gpu_session.sh 2   # carry .data/c100/part-01.npz                         about 3 min
#   bash bench/gpu_session.sh 3   # carry .data/c100/part-02.npz .data/c100/part-03.npz  about 7 min
#   bash bench/gpu_session.sh nodata  # carry .whl: one call of at most 9.5 min, everything but 3
#
# (Parts made as ../shared/datasets/README.md says: chunk.py split ... .data/c100 --max-mb 58.)
# 1: the capture tests on the GPU (KD, AT and DML captured against eager among them), then trainings
#    side by side taking turns and under MPS (bench/gpu_sharing.py).
# 2: the captured step with compile and with cuDNN's algorithm timing, ResNet-20 and ResNet-110.
# 3: joins CIFAR-100, then eager against captured top-1 over three seeds (bench/gpu_capture_seeds.sh);
#    THEN=row grows the Table II row instead (bench/gpu_paper_row.sh, BUDGET_S seconds).
# nodata (for a session that cannot spend three calls on the data): the capture tests, the captured step
#    without compile, the pipeline's commands on the GPU (bench/gpu_pipeline_check.py), the sharing
#    bench, and last the captured step with compile (its rows print as they are measured).
# Each part has its own time limit, so a slow one leaves the others their figures. Output: $OUT.
set -uo pipefail
case "${1:-}" in
  1|2|3|nodata) ;;
  *) echo "usage: bash bench/gpu_session.sh 1|2|3|nodata (see the top of this file)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
install_carried_wheels
case "$1" in
  1)
    describe_machine | tee "$OUT/machine.txt"
    timeout 120 python3 -m pytest -q -s -p no:cacheprovider -rs tests/stages/training/test_cuda_graph_step.py \
      2>&1 | tee "$OUT/capture_tests.txt"
    timeout 150 python3 bench/gpu_sharing.py 2>&1 | tee "$OUT/gpu_sharing.txt"
    ;;
  2)
    timeout 200 python3 bench/captured_step.py --archs resnet20 resnet110 --k 1 --steps 200 2>&1 \
      | tee "$OUT/captured_step_compile_cudnn.txt"
    ;;
  nodata)
    describe_machine | tee "$OUT/machine.txt"
    timeout 110 python3 -m pytest -q -s -p no:cacheprovider -rs tests/stages/training/test_cuda_graph_step.py \
      2>&1 | tee "$OUT/capture_tests.txt"
    timeout 80 python3 bench/captured_step.py --archs resnet20 resnet110 --k 1 --steps 200 --no-compile 2>&1 \
      | tee "$OUT/captured_step.txt"
    timeout 100 python3 bench/gpu_pipeline_check.py 2>&1 | tee "$OUT/pipeline_check.txt"
    timeout 100 python3 bench/gpu_sharing.py 2>&1 | tee "$OUT/gpu_sharing.txt"
    timeout 160 python3 bench/captured_step.py --archs resnet20 resnet110 --k 1 --steps 200 2>&1 \
      | tee "$OUT/captured_step_compile_cudnn.txt"
    ;;
  3)
    ls -l .data/c100 | tee "$OUT/parts.txt"
    if [ "${THEN:-seeds}" = row ]; then
      OUT="$OUT" bash bench/gpu_paper_row.sh
    else
      OUT="$OUT" timeout 450 bash bench/gpu_capture_seeds.sh
    fi
    ;;
esac
