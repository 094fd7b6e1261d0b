#!/usr/bin/env bash
# On a GPU machine, in one call of at most 480 s (its parts' limits added up; a call may run 600): the
# step-by-step comparison of captured and eager training, the CUDA-graph tests; bench/captured_step.py
# without torch.compile for every network and K; the quickstart's teacher and students, captured and
# eager. COMPILE_ROWS=1 measures the compile rows for ResNet-20 and ResNet-110 in place of the
# quickstart (at most 500 s). Each part has its own time limit (timeout -k: a part that ignores
# SIGTERM is killed 5 s later), so a slow one leaves the others their figures. Output goes to $OUT
# (default /tmp/gpu-captured). Wheels in .whl/ (pydantic and what it needs, where the machine lacks it)
# are installed into /tmp/site first.
#   bash bench/gpu_captured.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
OUT=${OUT:-/tmp/gpu-captured}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
install_carried_wheels || exit 1
describe_machine | tee "$OUT/machine.txt"
timeout -k 5 60 python3 bench/capture_equivalence.py 2>&1 | tee "$OUT/capture_equivalence.txt"
timeout -k 5 120 python3 -m pytest -q -s -p no:cacheprovider -rs tests/stages/training/test_cuda_graph_step.py \
  tests/stages/nets/test_stochastic_depth.py 2>&1 | tee "$OUT/tests.txt"
timeout -k 5 120 python3 bench/captured_step.py --no-compile 2>&1 | tee "$OUT/captured_step_eager_and_graph.txt"
# The quickstart's teacher and students on the GPU, with the whole step captured and eagerly: accuracy
# and wall time per stage of each.
for how in captured eager; do
  [ "${COMPILE_ROWS:-0}" = 1 ] && break
  extra=()
  if [ "$how" = captured ]; then
    for who in teacher student; do
      extra+=(--set "$who.training.capture_step=true" --set "$who.training.drop_execution=mask")
    done
  fi
  start=$(date +%s)
  timeout -k 5 90 python3 -m pipeline run profiles/quickstart.yaml --until distill --device cuda \
    --artifacts "/tmp/quickstart-$how" "${extra[@]}" 2>&1 | tee "$OUT/quickstart_$how.txt"
  echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/quickstart_$how.txt"
  # Every manifest (metrics: accuracy, wall time, images/s, first step) in one file.
  python3 -c "import json, pathlib, sys; print(json.dumps({str(p.parent.relative_to(sys.argv[1])): json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob('*/*/manifest.json'))}, indent=1))" \
    "/tmp/quickstart-$how/store" > "$OUT/quickstart_${how}_manifests.json" 2>&1
done
if [ "${COMPILE_ROWS:-0}" = 1 ]; then
  timeout -k 5 200 python3 bench/captured_step.py --archs resnet20 resnet110 --k 1 2>&1 | tee "$OUT/captured_step_compile.txt"
fi
echo "done"
