# Sourced by the one-call GPU scripts in bench/: what a bare device machine needs before they run.

# Python packages the machine lacks (pydantic and what it needs), carried as wheels in .whl/ or
# $DEVICE_WHEELS (default .whl/device/, where bash bench/gpu_window.sh prepare downloads them), are
# installed into /tmp/site, which stays on the machine until it is given back: a later call that
# carries no wheels finds them there. Either way the project's imports are checked before anything
# runs, and a call without them stops at once with one line.
install_carried_wheels() {
  local imports="import pydantic, typer, rich, yaml, torch, pipeline.cli"
  # A script that a checked one started (gpu_window.sh 2 runs gpu_paper_row.sh) inherits the checked
  # PYTHONPATH: checking again would spend a few seconds of the window importing torch.
  if [ -n "${STOCHKD_IMPORTS_CHECKED+set}" ] && [ "$STOCHKD_IMPORTS_CHECKED" = "${PYTHONPATH:-}" ]; then
    return 0
  fi
  [ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  # Nothing to install where the project already imports (wheels an earlier call installed, a machine
  # that has pydantic, this one).
  if ! python3 -c "$imports" 2>/dev/null; then
    local wheels
    wheels=($(ls .whl/*.whl "${DEVICE_WHEELS:-.whl/device}"/*.whl 2>/dev/null))
    if [ "${#wheels[@]}" -gt 0 ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${wheels[@]}" || { echo "gpu_env: the wheels in .whl/ did not install into /tmp/site" >&2; return 1; }
      case ":${PYTHONPATH:-}:" in *:/tmp/site:*) ;; *) export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} ;; esac
    fi
  fi
  python3 -c "$imports" 2>/dev/null || {
    echo "gpu_env: the project cannot import here ($(python3 -c "$imports" 2>&1 | tail -1)); carry .whl (see bench/gpu_env.sh)" >&2
    return 1
  }
  export STOCHKD_IMPORTS_CHECKED=${PYTHONPATH:-}
}

# The parts of bench/carry_npz.py that calls carried (.data/c100x), copied to $CARRIED_PARTS (default
# /tmp/c100x), outside the checkout: there they stay until the machine is given back, whatever becomes
# of the checkout's ignored files between calls.
CARRIED_PARTS=${CARRIED_PARTS:-/tmp/c100x}
keep_carried_parts() {
  if [ -d .data/c100x ]; then
    mkdir -p "$CARRIED_PARTS" && cp -pR .data/c100x/. "$CARRIED_PARTS"/
  fi
}

# What has arrived so far: each part in $CARRIED_PARTS whole or still to come, and whether Python has
# lzma (bench/carry_npz.py check), after keeping this call's parts there. Printed to standard output.
check_carried_parts() {
  keep_carried_parts
  python3 bench/carry_npz.py check "$CARRIED_PARTS" 2>&1
}

# CIFAR-100 at $CIFAR100_NPZ (default /tmp/cifar100.npz), made there if absent: unpacked from the two
# parts of bench/carry_npz.py (manifest.json, part-00.xz, part-01.xz; carried in two calls), or else
# joined from the four parts of ../shared/datasets/README.md (.data/c100/part-*.npz with .data/chunk.py;
# three calls). Sets DATA to its path.
join_cifar100() {
  DATA=${CIFAR100_NPZ:-/tmp/cifar100.npz}
  if [ ! -f "$DATA" ]; then
    keep_carried_parts
    if [ -f "$CARRIED_PARTS/manifest.json" ]; then
      python3 bench/carry_npz.py unpack "$CARRIED_PARTS" "$DATA"
    else
      python3 .data/chunk.py join .data/c100 "$DATA"
    fi
  fi
}

# The machine a result came from: GPU, driver and clock, torch and CUDA, cores, and whether MPS's
# control program is there (for --mps). Printed to standard output.
describe_machine() {
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
                torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU visible')"
    echo "cpus $(nproc)"
    command -v nvidia-cuda-mps-control || echo "nvidia-cuda-mps-control: absent"
  } 2>&1
}
