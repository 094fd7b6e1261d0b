#!/usr/bin/env bash
# A window's plan for a paper row is bench/gpu_window.sh (plan, calls 1 and 2, fetch). These three calls
# together need more than one 15-minute window (about 15 minutes of calls beside the machine's start):
# run at most two of them in one.
#
# Calls on a GPU machine that has 15 minutes for everything and carries at most 64 MiB per call:
# CIFAR-100 travels in two parts beside work that does not need it, and what needs it runs once the
# second part is there. A warm machine is given back 30 s after a call ends, so each call follows the
# last at once.
#
#   bash bench/gpu_session.sh 1   # carry .whl .data/c100x/manifest.json .data/c100x/part-00.xz  about 6 min
#   bash bench/gpu_session.sh 2   # carry .data/c100x/part-01.xz                                   about 4 min
#   bash bench/gpu_session.sh 3   # carry nothing (if time is left)                                about 5 min
#   bash bench/gpu_session.sh nodata  # carry .whl: one call of about 8 min, no CIFAR-100
#
# The parts are made here once: python bench/carry_npz.py pack ../shared/datasets/cifar100.npz .data/c100x
# (two parts of 51.8 MB; 3 min 40 s on 2 cores). Wheels in .whl/: see bench/gpu_env.sh.
# 1: keeps part-00 outside the checkout (check_carried_parts in bench/gpu_env.sh) and checks that it
#    arrived whole and that Python has lzma (so a failing unpack is known a call early); the capture
#    tests on the GPU; the captured step of ResNet-20 and ResNet-110 without compile (the step that
#    adds 15 kernels instead of 28, against the plain captured loop); then ResNet-110 with compile
#    inside the graph from a cold start, block by block first (bench/compile_scope.py: 66 s against
#    188 s for the whole network on this project's 2-core CPU; on a GPU not measured yet, where the
#    whole network's compilation did not end within a minute).
# 2: unpacks CIFAR-100, then eager against captured top-1 over three seeds, side by side under MPS
#    (bench/gpu_capture_seeds.sh); THEN=row grows the Table II row instead (bench/gpu_paper_row.sh,
#    BUDGET_S seconds).
# 3: the quickstart's tasks under the scheduler's --mps (bench/gpu_pipeline_check.py --mps); Table II's
#    distill step (ResNet-110 teacher, K = 1 and 4), which the row's estimate only assumes; the captured
#    step of ResNet-56, WRN-16-2 and a distill step with K = 4 at 200 timed steps (measured so far at 50
#    steps, with the capture inside the timed window).
# nodata (what the 2026-11-27 session ran, results/gpu_captured_step.md and results/gpu_sharing.md): the
#    capture tests, the captured step of ResNet-20 and ResNet-110 without compile, the pipeline's
#    commands on the GPU (bench/gpu_pipeline_check.py) and the sharing bench.
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
install_carried_wheels || exit 1
case "$1" in
  1)
    describe_machine | tee "$OUT/machine.txt"
    check_carried_parts | tee "$OUT/parts.txt"
    timeout -k 5 60 python3 -m pytest -q -s -p no:cacheprovider -rs tests/stages/training/test_cuda_graph_step.py \
      2>&1 | tee "$OUT/capture_tests.txt"
    timeout -k 5 90 python3 bench/captured_step.py --archs resnet20 resnet110 --k 1 --steps 200 --no-compile 2>&1 \
      | tee "$OUT/captured_step.txt"
    timeout -k 5 200 python3 bench/compile_scope.py --archs resnet110 --scopes blocks network 2>&1 \
      | tee "$OUT/compile_scope_resnet110.txt"
    ;;
  2)
    check_carried_parts | tee "$OUT/parts.txt"
    if [ "${THEN:-seeds}" = row ]; then
      OUT="$OUT" bash bench/gpu_paper_row.sh
    else
      OUT="$OUT" timeout 450 bash bench/gpu_capture_seeds.sh
    fi
    ;;
  3)
    timeout -k 5 80 python3 bench/gpu_pipeline_check.py --only quickstart --mps 2>&1 | tee "$OUT/pipeline_check_mps.txt"
    timeout -k 5 100 python3 bench/captured_step.py --archs --k 1 4 --teacher resnet110 --steps 200 --no-compile 2>&1 \
      | tee "$OUT/captured_step_table2_distill.txt"
    timeout -k 5 110 python3 bench/captured_step.py --archs resnet56 wrn16_2 --k 4 --steps 200 --no-compile 2>&1 \
      | tee "$OUT/captured_step_more.txt"
    ;;
  nodata)
    # Measured on an H200: tests 20 s, captured step 74 s, pipeline check 47 s + 78 s, sharing about
    # 100 s + 60 s. -k ends a part that ignores SIGTERM (a compile worker did).
    describe_machine | tee "$OUT/machine.txt"
    timeout -k 5 60 python3 -m pytest -q -s -p no:cacheprovider -rs tests/stages/training/test_cuda_graph_step.py \
      2>&1 | tee "$OUT/capture_tests.txt"
    timeout -k 5 90 python3 bench/captured_step.py --archs resnet20 resnet110 --k 1 --steps 200 --no-compile 2>&1 \
      | tee "$OUT/captured_step.txt"
    timeout -k 5 150 python3 bench/gpu_pipeline_check.py 2>&1 | tee "$OUT/pipeline_check.txt"
    timeout -k 5 170 python3 bench/gpu_sharing.py 2>&1 | tee "$OUT/gpu_sharing.txt"
    ;;
esac
