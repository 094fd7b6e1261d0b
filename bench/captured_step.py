"""The training step captured whole (a CUDA graph of forward, loss, backward and optimizer step;
torch.compile) against eager steps, for the networks of the paper's rows; prints images/s and ratios
measured side by side in one run. Each figure is printed as soon as it is measured.

    python bench/captured_step.py                         # on a GPU: the networks below, K = 1 and 4
    python bench/captured_step.py --archs resnet20 --k 1 --steps 5   # a quick CPU check that it runs
    python bench/captured_step.py --archs resnet110 --k --rows "pipeline graph+compile" "plain graph"
                                                          # one row and what it is compared with

Rows per network (trained with stochastic depth, p_n 0.5, batch 128, synthetic 32x32 images, bf16
autocast on a GPU):
- pipeline skip: the pipeline's eager step, blocks skipped on the host (the default);
- pipeline mask: eager, blocks multiplied by masks drawn on the device;
- pipeline graph: training.capture_step (the whole step replayed from one CUDA graph), masks;
- graph, cudnn benchmark: the pipeline graph with cuDNN timing its algorithms per shape first;
- pipeline graph, no aug: the same without crops and flips (what the augmentation costs);
- pipeline graph+compile: the same with training.compile (default mode) inside the graph;
- graph+compile blocks: the same, compiled block by block (training.compile_scope: blocks), which
  compiles a handful of graphs shared between blocks whatever the depth (bench/compile_scope.py
  times the compilation);
- pipeline compiled: training.compile with compile_mode reduce-overhead (torch.compile's own CUDA
  graphs, optimizer step outside them), masks;
- plain eager / plain graph / plain compiled: the minimal loop of bench/train_throughput.py, eager,
  recorded as one CUDA graph the documented way, and compiled with reduce-overhead; same masks.
Then a distill step (a ResNet-56 teacher, or --teacher; a ResNet-20 student) per K: eager skip, graph,
graph+compile.
On a CPU there are no CUDA graphs: the graph rows are left out and compile uses its default mode.

Goals: the captured pipeline step >= 2x the eager pipeline for ResNet-20 on an H100 or
H200, and >= 1.0x the plain captured loop. Compilation time is left out (a warm-up run compiles first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import (CLASSES, pipeline_images_per_s, reference_images_per_s,  # noqa: E402
                              synthetic_data)

from stages.common.config import DistillConfig  # noqa: E402
from stages.nets.architectures import build_model  # noqa: E402
from stages.distill import distillation_loss  # noqa: E402
from stages.nets.stochastic_depth import use_drop_execution  # noqa: E402


COLUMNS = ["pipeline skip", "pipeline mask", "pipeline graph", "graph, cudnn benchmark", "pipeline graph, no aug",
           "pipeline graph+compile", "graph+compile blocks", "pipeline compiled", "plain eager", "plain graph",
           "plain compiled"]


def with_cudnn_benchmark(run):
    """``run()`` with cuDNN timing its algorithms for each convolution's shape first (the warm-up
    steps before capture do that), which the pipeline leaves off."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        return run()
    finally:
        torch.backends.cudnn.benchmark = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="*", default=["resnet20", "resnet110", "resnet56", "wrn16_2"],
                        help="networks trained alone (--archs alone: none, only the distill rows)")
    parser.add_argument("--k", type=int, nargs="*", default=[1, 4],
                        help="teacher samples of the distill rows (--k alone: no distill rows)")
    parser.add_argument("--teacher", default="resnet56",
                        help="the distill rows' teacher (default resnet56; Table II's is resnet110)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--rows", nargs="+", choices=COLUMNS, metavar="ROW",
                        help=f"measure only these rows (default: all); one of: {', '.join(COLUMNS)}")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    mode = "reduce-overhead" if gpu else "default"
    data = synthetic_data(args.batch * args.steps)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if gpu else
                               f" ({torch.get_num_threads()} threads)")
          + f", torch {torch.__version__}, batch {args.batch}, {args.steps} timed steps, compile mode {mode}",
          flush=True)

    def fresh(arch: str, execution: str = "skip", p_last: float = 0.5):
        torch.manual_seed(0)
        return use_drop_execution(build_model(arch, CLASSES, 3, p_last), execution)

    def measure(table: dict, name: str, label: str, run) -> None:
        if args.rows and label not in args.rows:
            return
        try:
            table[label] = run()
            print(f"  {name:24s} {label:22s} {table[label]:9.0f} images/s", flush=True)
        except Exception as exc:  # one failing variant must not cost the others' figures
            table[label] = float("nan")
            print(f"  {name:24s} {label:22s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                  flush=True)
        finally:
            torch._dynamo.reset()

    graph = {"drop_execution": "mask", "capture_step": True}
    rows = {}
    for arch in args.archs:
        table = rows[arch] = {}
        measure(table, arch, "pipeline skip",
                lambda: pipeline_images_per_s(fresh(arch), data, device, args.batch, args.steps))
        measure(table, arch, "pipeline mask", lambda: pipeline_images_per_s(
            fresh(arch, "mask"), data, device, args.batch, args.steps, drop_execution="mask"))
        measure(table, arch, "plain eager",
                lambda: reference_images_per_s(fresh(arch), data, device, args.batch, args.steps))
        if gpu:
            measure(table, arch, "pipeline graph", lambda: pipeline_images_per_s(
                fresh(arch, "mask"), data, device, args.batch, args.steps, **graph))
            measure(table, arch, "graph, cudnn benchmark", lambda: with_cudnn_benchmark(
                lambda: pipeline_images_per_s(fresh(arch, "mask"), data, device, args.batch, args.steps, **graph)))
            measure(table, arch, "pipeline graph, no aug", lambda: pipeline_images_per_s(
                fresh(arch, "mask"), data, device, args.batch, args.steps, augment=False, **graph))
            measure(table, arch, "plain graph", lambda: reference_images_per_s(
                fresh(arch, "mask"), data, device, args.batch, args.steps, graph=True))
        if not args.no_compile:
            if gpu:
                measure(table, arch, "pipeline graph+compile", lambda: pipeline_images_per_s(
                    fresh(arch, "mask"), data, device, args.batch, args.steps, compile=True, **graph))
                measure(table, arch, "graph+compile blocks", lambda: pipeline_images_per_s(
                    fresh(arch, "mask"), data, device, args.batch, args.steps, compile=True,
                    compile_scope="blocks", **graph))
            measure(table, arch, "pipeline compiled", lambda: pipeline_images_per_s(
                fresh(arch, "mask"), data, device, args.batch, args.steps, compile=True, compile_mode=mode,
                drop_execution="mask"))
            measure(table, arch, "plain compiled", lambda: reference_images_per_s(
                fresh(arch, "mask"), data, device, args.batch, args.steps, compile_mode=mode))

    for k in args.k:
        name = f"distill {args.teacher.removeprefix('resnet')}->20 K={k}"
        table = rows[name] = {}
        teacher = fresh(args.teacher, "mask").to(device=device, memory_format=torch.channels_last).eval()
        config = DistillConfig(teacher_samples=k, p_last=0.5)
        measure(table, name, "pipeline skip", lambda: pipeline_images_per_s(
            fresh("resnet20", p_last=1.0), data, device, args.batch, args.steps,
            distillation_loss(use_drop_execution(teacher, "skip"), config)))
        if gpu:
            use_drop_execution(teacher, "mask")
            measure(table, name, "pipeline graph", lambda: pipeline_images_per_s(
                fresh("resnet20", p_last=1.0), data, device, args.batch, args.steps,
                distillation_loss(teacher, config), **graph))
            if not args.no_compile:
                measure(table, name, "pipeline graph+compile", lambda: pipeline_images_per_s(
                    fresh("resnet20", p_last=1.0), data, device, args.batch, args.steps,
                    distillation_loss(teacher, config), compile=True, **graph))

    columns = [c for c in COLUMNS if not args.rows or c in args.rows]
    captured_columns = ["pipeline graph", "graph, cudnn benchmark", "pipeline graph+compile",
                        "graph+compile blocks", "pipeline compiled"]
    print(f"\n{'images/s':24s}" + "".join(f"{c:>24s}" for c in columns)
          + f"{'best captured / skip':>22s}{'/ plain graph':>15s}")
    for name, table in rows.items():
        # Rows measured and not failed (nan): a nan first would make max() return nan.
        captured = max((table[c] for c in captured_columns if c in table and table[c] == table[c]),
                       default=float("nan"))
        cells = "".join(f"{table[c]:24.0f}" if c in table else f"{'-':>24s}" for c in columns)
        plain = table.get("plain graph", float("nan"))
        skip = table.get("pipeline skip", float("nan"))
        print(f"{name:24s}{cells}{captured / skip:22.2f}{captured / plain:15.2f}", flush=True)


if __name__ == "__main__":
    main()
