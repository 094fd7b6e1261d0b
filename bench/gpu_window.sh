#!/usr/bin/env bash
# One GPU window (15 minutes of device time, the machine's start included) spent on a paper row: the
# row continues from its last bundle and leaves the next one. The plan says, before anything starts,
# which calls, what each carries (at most 64 MiB a call, measured) and how long each may run; it
# fits the window with about two minutes to spare and leaves the rest to training.
#
# Here, before the window (once: prepare; then before every window: plan):
#   bash bench/gpu_window.sh prepare          # CIFAR-100 in two parts (~4 min) and the wheels the device lacks
#   bash bench/gpu_window.sh plan             # prints the calls: for each, its timeout_s, carry and command
# On the device, one call right after another (a machine goes back 30 s after a call ends):
#   bash bench/gpu_window.sh 0                # only when the plan says so: pieces of a large bundle
#   bash bench/gpu_window.sh 1                # keeps the first data part; GPU tests and benches (BENCH=0: none)
#   BUDGET_S=N bash bench/gpu_window.sh 2     # joins data and bundle, trains the row N s, bundles it back
# Here, after the window:
#   bash bench/gpu_window.sh fetch DIR [DIR1] # DIR: call 2's files, DIR1: call 1's; the row's next
#                                             # bundle in rows/NAME/row.tar, its progress in results/rows/NAME.md
#
# PROFILE (default profiles/paper/table2_resnet110_resnet20.yaml) names the row. Call 2 trains it in
# lockstep (--lockstep: the two teachers in one captured step, then the five students) when call 1's
# GPU test of a captured lockstep row passed, else with --jobs 3 (bench/gpu_paper_row.sh). Each part
# on the device has its own limit (timeout -k), so a slow one leaves the others their time.
set -uo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-profiles/paper/table2_resnet110_resnet20.yaml}
ROW=$(basename "$PROFILE" .yaml)
# Where the device keeps what calls bring (outside the checkout) and what call 2 makes: /tmp there.
export WINDOW_TMP=${WINDOW_TMP:-/tmp}
CARRIED_ROW="$WINDOW_TMP/row-carry/$ROW"   # the bundle's pieces, as calls bring them
ROWS=${ROWS:-rows}                       # here: each row's bundle and pieces (bench/window_plan.py)
export DEVICE_WHEELS=${DEVICE_WHEELS:-.whl/device}  # the wheels the device lacks, which call 1 carries
mode=${1:-}

keep_row_pieces() {
  mkdir -p "$CARRIED_ROW"
  if [ -d "$ROWS/$ROW/carry" ]; then cp -p "$ROWS/$ROW/carry/"* "$CARRIED_ROW"/ 2>/dev/null; fi
  echo "bundle pieces here so far: $(cd "$CARRIED_ROW" && ls | tr '\n' ' ')"
}

device_setup() {
  source bench/gpu_env.sh
  OUT=${OUT:-"$WINDOW_TMP/gpu-window"}
  mkdir -p "$OUT" "$WINDOW_TMP/window"
  export PYTHONUNBUFFERED=1
  install_carried_wheels || exit 1
}

case "$mode" in
  prepare)
    if [ ! -f .data/c100x/part-01.xz ]; then
      python bench/carry_npz.py pack ../shared/datasets/cifar100.npz .data/c100x || exit 1
    fi
    # pydantic and what it needs that the device's image lacks (KINDS.md lists what it has), for its Python 3.12.
    mkdir -p "$DEVICE_WHEELS"
    wanted=$(python -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in
             ('pydantic', 'pydantic-core', 'annotated-types', 'typing-inspection')))")
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DEVICE_WHEELS" $wanted || exit 1
    ls -l "$DEVICE_WHEELS" .data/c100x
    ;;
  plan)
    flags=()
    [ "${BENCH:-1}" = 0 ] && flags+=(--no-bench)
    [ "${CIFAR100:-1}" = 0 ] && flags+=(--no-cifar100)
    python bench/window_plan.py plan "$PROFILE" "${flags[@]}"
    ;;
  0)
    device_setup
    keep_row_pieces | tee "$OUT/pieces.txt"
    ;;
  1)
    device_setup
    describe_machine | tee "$OUT/machine.txt"
    { [ "${CIFAR100:-1}" = 0 ] || check_carried_parts; keep_row_pieces; } | tee "$OUT/parts.txt"
    if [ "${BENCH:-1}" = 1 ]; then
      # The captured lockstep row against its tasks captured alone; if it passed (not skipped), call 2
      # trains in lockstep.
      timeout -k 5 40 python3 -m pytest -q -p no:cacheprovider -rs tests/stages/test_lockstep.py -k captured_row \
        2>&1 | tee "$OUT/gpu_tests.txt"
      grep -q "1 passed" "$OUT/gpu_tests.txt" && touch "$WINDOW_TMP/window/lockstep_ok"
      timeout -k 5 40 python3 -m pytest -q -p no:cacheprovider -rs tests/stages/training/test_cuda_graph_step.py \
        2>&1 | tee -a "$OUT/gpu_tests.txt"
      timeout -k 5 45 python3 bench/frozen_teacher.py --device cuda --teacher resnet110 --capture --steps 50 \
        2>&1 | tee "$OUT/frozen_teacher.txt"
      # The row's students one at a time, in lockstep, and five processes at once, alone and under MPS.
      timeout -k 5 105 python3 bench/lockstep_row.py --device cuda --teacher resnet110 --student resnet20 \
        --images 6400 --capture --repeats 1 2>&1 | tee "$OUT/lockstep_row.txt"
    fi
    ;;
  2)
    device_setup
    { [ "${CIFAR100:-1}" = 0 ] || check_carried_parts; keep_row_pieces; } | tee "$OUT/parts.txt"
    if [ -f "$CARRIED_ROW/bundle.sha256" ]; then
      # piece-1 came with call 1, piece-2 with this one, piece-0 (if any) with call 0: joined in that order.
      pieces=()
      for name in piece-1 piece-2 piece-0; do
        [ -f "$CARRIED_ROW/$name" ] && pieces+=("$CARRIED_ROW/$name")
      done
      cat "${pieces[@]}" > "$WINDOW_TMP/window/row.tar"
      (cd "$WINDOW_TMP/window" && sha256sum -c "$CARRIED_ROW/bundle.sha256") | tee -a "$OUT/parts.txt" || {
        echo "gpu_window: the bundle's pieces do not join into the bundle the plan cut (see parts.txt)" >&2; exit 1; }
      export ROW_BUNDLE="$WINDOW_TMP/window/row.tar"
    fi
    if [ -z "${LOCKSTEP:-}" ]; then
      LOCKSTEP=0
      [ -f "$WINDOW_TMP/window/lockstep_ok" ] && LOCKSTEP=1
    fi
    echo "call 2: the row $ROW for BUDGET_S=${BUDGET_S:?set it to the figure the plan printed} s, LOCKSTEP=$LOCKSTEP" \
      | tee "$OUT/plan.txt"
    OUT="$OUT" PROFILE="$PROFILE" LOCKSTEP=$LOCKSTEP bash bench/gpu_paper_row.sh
    ;;
  fetch)
    python bench/window_plan.py fetch "$PROFILE" "${@:2}"
    ;;
  *)
    echo "usage: bash bench/gpu_window.sh prepare|plan|0|1|2|fetch (see the top of this file)" >&2
    exit 2
    ;;
esac
