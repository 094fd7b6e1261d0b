"""The training step captured whole (torch.compile, CUDA graphs on a GPU) against eager steps, for
the networks of the paper's rows; prints images/s and ratios measured side by side in one run.

    python bench/captured_step.py                         # on a GPU: the networks below, K = 1 and 4
    python bench/captured_step.py --archs resnet20 --k 1 --steps 5   # a quick CPU check that it runs

Rows per network (trained with stochastic depth, p_n 0.5, batch 128, synthetic 32x32 images):
- pipeline, skip: the pipeline's eager step, blocks skipped on the host (the default);
- pipeline, mask: eager, blocks multiplied by masks drawn on the device;
- pipeline, captured: training.compile with compile_mode reduce-overhead on a GPU (default mode on a
  CPU, where there are no CUDA graphs) and drop_execution mask;
- plain eager and plain captured: the minimal loop of bench/train_throughput.py, eager and compiled
  the same way, with the same masks.
Then a distill step (ResNet-56 teacher, ResNet-20 student) per K, eager and captured.

Goals (issue 13): captured >= 2x the eager pipeline for ResNet-20 on an H100 or H200, and >= 1.0x the
plain captured loop. Compilation time is left out (a warm-up run compiles first).
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

from pipeline.config import DistillConfig  # noqa: E402
from stages.architectures import build_model  # noqa: E402
from stages.distill import distillation_loss  # noqa: E402
from stages.stochastic_depth import use_drop_execution  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", default=["resnet20", "resnet56", "resnet110", "wrn16_2"])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    data = synthetic_data(args.batch * args.steps)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                               f" ({torch.get_num_threads()} threads)")
          + f", torch {torch.__version__}, batch {args.batch}, {args.steps} timed steps, compile mode {mode}")

    def fresh(arch: str, execution: str = "skip", p_last: float = 0.5):
        torch.manual_seed(0)
        return use_drop_execution(build_model(arch, CLASSES, 3, p_last), execution)

    captured = {"compile": True, "compile_mode": mode, "drop_execution": "mask"}
    print(f"\n{'network':10s} {'pipeline skip':>14s} {'pipeline mask':>14s} {'pipeline captured':>18s} "
          f"{'plain eager':>12s} {'plain captured':>15s} {'captured/skip':>14s} {'captured/plain':>15s}")
    for arch in args.archs:
        skip = pipeline_images_per_s(fresh(arch), data, device, args.batch, args.steps)
        mask = pipeline_images_per_s(fresh(arch, "mask"), data, device, args.batch, args.steps, drop_execution="mask")
        ours = pipeline_images_per_s(fresh(arch, "mask"), data, device, args.batch, args.steps, **captured)
        plain = reference_images_per_s(fresh(arch), data, device, args.batch, args.steps)
        plain_captured = reference_images_per_s(fresh(arch, "mask"), data, device, args.batch, args.steps,
                                                compile_mode=mode)
        torch._dynamo.reset()
        print(f"{arch:10s} {skip:14.0f} {mask:14.0f} {ours:18.0f} {plain:12.0f} {plain_captured:15.0f} "
              f"{ours / skip:14.2f} {ours / plain_captured:15.2f}", flush=True)

    print(f"\n{'distill step':22s} {'eager skip':>11s} {'captured':>9s} {'ratio':>6s}")
    for k in args.k:
        teacher = fresh("resnet56", "mask").to(device=device, memory_format=torch.channels_last).eval()
        loss = distillation_loss(teacher, DistillConfig(teacher_samples=k, p_last=0.5))
        eager = pipeline_images_per_s(fresh("resnet20", p_last=1.0), data, device, args.batch, args.steps,
                                      distillation_loss(use_drop_execution(teacher, "skip"),
                                                        DistillConfig(teacher_samples=k, p_last=0.5)))
        use_drop_execution(teacher, "mask")
        ours = pipeline_images_per_s(fresh("resnet20", p_last=1.0), data, device, args.batch, args.steps, loss,
                                     **captured)
        torch._dynamo.reset()
        print(f"{'ResNet-56 -> 20, K=' + str(k):22s} {eager:11.0f} {ours:9.0f} {ours / eager:6.2f}", flush=True)


if __name__ == "__main__":
    main()
