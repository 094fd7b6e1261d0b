#!/usr/bin/env bash
# On a GPU machine, in one call: grow a paper row by at most $BUDGET_S seconds of training, starting
# from the bundle an earlier call brought back, and bring back a new bundle with everything the row
# has so far (finished tasks and the checkpoints of unfinished ones).
#
#   bash bench/gpu_paper_row.sh                      # Table II, ResNet-110 -> ResNet-20, 200 epochs
#
# In:  CIFAR-100 (see bench/gpu_env.sh), and, from an earlier call, the bundle: ROW_BUNDLE (a joined
#      tar, as bench/gpu_window.sh 2 makes it), else its parts in .data/row/row.tar.part-* (carried
#      with the call).
# Out: $OUT (default /tmp/gpu-row): row.tar.part-00, -01, ... (15 MiB each: what a call brings back
#      per file), status.json (every task of the row: cached, or how far its checkpoint is), run.log
#      and machine.txt. Join the parts with `cat row.tar.part-* > row.tar` and unbundle that.
#
# Settings (environment): PROFILE, UNTIL (default distill), JOBS (default 3: both teachers and the
# student alone at once), LOCKSTEP (1: each row of a stage's models in one process and one captured
# step, --lockstep, instead of --jobs), BUDGET_S (default 420), DEVICE (default cuda), CIFAR100 (default 1; 0 for a
# profile that does not read it, as the CPU check of this script does with tests/profiles/tiny.yaml),
# EXTRA_ARGS (more options for run, status and bundle, such as --set KEY=VALUE), MPS (1: the tasks
# share the GPU through --mps; three trainings under MPS gave 1.6x the images/s of one alone on an H200,
# results/gpu_sharing.md, but the scheduler's --mps has not run on a GPU yet: default 0 until
# bench/gpu_pipeline_check.py --mps has passed there).
# The run gets SIGTERM when the budget is spent: each training stops between two steps with its
# checkpoint saved, and the bundle is made after it.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
OUT=${OUT:-/tmp/gpu-row}
PROFILE=${PROFILE:-profiles/paper/table2_resnet110_resnet20.yaml}
UNTIL=${UNTIL:-distill}
JOBS=${JOBS:-3}
BUDGET_S=${BUDGET_S:-420}
DEVICE=${DEVICE:-cuda}
WINDOW_TMP=${WINDOW_TMP:-/tmp}
ARTIFACTS=${ARTIFACTS:-"$WINDOW_TMP/row-artifacts"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
install_carried_wheels || exit 1
read -r -a settings <<< "${EXTRA_ARGS:-}"  # e.g. "--set teacher.training.epochs=50 --set teacher.training.lr_milestones=[15,30,45]"
if [ "${CIFAR100:-1}" = 1 ]; then
  join_cifar100 || exit 1
  settings+=(--set "data.root=$DATA")
fi
describe_machine > "$OUT/machine.txt"
stochkd() { python3 -m pipeline "$@" --artifacts "$ARTIFACTS"; }

if [ -n "${ROW_BUNDLE:-}" ]; then
  stochkd unbundle "$ROW_BUNDLE" 2>&1 | tee "$OUT/run.log" || exit 1
elif ls .data/row/row.tar.part-* >/dev/null 2>&1; then
  cat .data/row/row.tar.part-* > "$WINDOW_TMP/row-in.tar"
  stochkd unbundle "$WINDOW_TMP/row-in.tar" 2>&1 | tee "$OUT/run.log" || exit 1
fi
start=$(date +%s)
# timeout signals the whole process group: the scheduler and every task it started.
how=(--jobs "$JOBS")
[ "${MPS:-0}" = 1 ] && how+=(--mps)
[ "${LOCKSTEP:-0}" = 1 ] && how=(--lockstep)
echo "run: $PROFILE --until $UNTIL ${how[*]} for at most $BUDGET_S s" | tee -a "$OUT/run.log"
timeout -s TERM -k 120 "$BUDGET_S" python3 -m pipeline run "$PROFILE" --until "$UNTIL" "${how[@]}" \
  --device "$DEVICE" --artifacts "$ARTIFACTS" "${settings[@]}" 2>&1 | tee -a "$OUT/run.log"
code=${PIPESTATUS[0]}
echo "run: exit $code after $(( $(date +%s) - start )) s (124 or 143: the budget ran out, progress saved)" \
  | tee -a "$OUT/run.log"

stochkd status "$PROFILE" --json "${settings[@]}" > "$OUT/status.json"
rm -f "$WINDOW_TMP/row.tar"
stochkd bundle "$PROFILE" --until "$UNTIL" -o "$WINDOW_TMP/row.tar" "${settings[@]}" 2>&1 | tee -a "$OUT/run.log"
# At most 8 files, 16 MiB each and 64 MiB together come back from a call; four are taken above.
rm -f "$OUT"/row.tar.part-*
# No bundle when nothing finished or got as far as a checkpoint (bundle refuses an empty one).
[ -f "$WINDOW_TMP/row.tar" ] && split -b 15M -d -a 2 "$WINDOW_TMP/row.tar" "$OUT/row.tar.part-"
parts=$(ls "$OUT"/row.tar.part-* 2>/dev/null | wc -l)
if [ "$parts" -gt 4 ]; then
  echo "the bundle needs $parts parts of 15 MiB, more than a call brings back beside the other files" \
    | tee -a "$OUT/run.log"
  exit 1
fi
python3 - "$OUT/status.json" <<'EOF' | tee -a "$OUT/run.log"
import json, sys
for task in json.load(open(sys.argv[1]))["tasks"]:
    point = task["checkpoint"]
    state = task["state"] + (f", {point['done']:.0%} done at {point['images_per_second'] or 0:,.0f} images/s"
                             if point else "")
    print(f"{task['task']:32} {task['key']}  {state}  {task['headline'] or ''}")
EOF
