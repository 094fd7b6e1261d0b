"""training.compile_scope: the whole network compiled as one graph against each block compiled on its
own, from a cold start (no compile cache); prints compile time, graphs compiled and steady-state
images/s side by side, measured in one run.

    python bench/compile_scope.py                                   # on a GPU: inside the captured step
    python bench/compile_scope.py --archs resnet20 resnet110 --batch 32 --steps 4   # a CPU run

Each row trains a fresh network with stochastic depth (p_n 0.5, blocks dropped by masks) for one
epoch of ``--steps`` batches of synthetic 32x32 images: first eagerly (on a GPU: the captured step
without compile), then with ``training.compile`` and each scope, every compile run starting from
nothing (Dynamo reset, Inductor's caches off). "first step s" is the pipeline's own figure: the time to
the end of the first step, which holds the compilation (on a GPU, the eager steps and the capture
too). Images/s are the steady state after it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import CLASSES, synthetic_data  # noqa: E402

from stages.common.config import Augmentation, TrainingConfig  # noqa: E402
from stages.nets.architectures import build_model  # noqa: E402
from stages.training.loop import DeviceData, train  # noqa: E402

SCOPES = ("network", "blocks")


def cold_run(arch: str, data: DeviceData, batch: int, capture: bool, scope: str | None):
    """One epoch of a fresh ``arch``, compiled with ``scope`` (None: not compiled); its TrainResult
    and the number of graphs Dynamo compiled."""
    import torch._dynamo
    import torch._inductor.config
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = build_model(arch, CLASSES, 3, p_last=0.5)
    recipe = TrainingConfig(epochs=1, batch_size=batch, lr=0.05, lr_schedule="cosine", drop_execution="mask",
                            capture_step=capture or None, compile=scope is not None or None,
                            compile_scope=scope)
    with torch._inductor.config.patch(force_disable_caches=True):
        result = train(model, data, recipe, augmentation=Augmentation(crop_padding=4, horizontal_flip=True), seed=0)
    return result, int(counters["stats"]["unique_graphs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", default=["resnet20", "resnet56", "resnet110"])
    parser.add_argument("--scopes", nargs="+", choices=SCOPES, default=list(SCOPES),
                        help="the scopes to compile with, in this order (the first one compiled is cut first "
                             "by a time limit)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="batches in the epoch each row trains")
    args = parser.parse_args()
    device = torch.device(args.device)
    capture = device.type == "cuda"
    data = DeviceData(synthetic_data(args.batch * args.steps), device)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if capture else
                               f" ({torch.get_num_threads()} threads)")
          + f", torch {torch.__version__}, batch {args.batch}, {args.steps} steps, "
          + ("inside the captured step" if capture else "eager steps (no CUDA graphs on a CPU)"), flush=True)
    print(f"{'network':10s} {'compiled':>9s} {'graphs':>7s} {'first step s':>13s} {'images/s':>9s} "
          f"{'/ uncompiled':>13s}", flush=True)
    for arch in args.archs:
        base, _ = cold_run(arch, data, args.batch, capture, None)
        print(f"{arch:10s} {'no':>9s} {0:7d} {base.first_step_s:13.1f} {base.images_per_second:9.0f} "
              f"{1.0:13.2f}", flush=True)
        for scope in args.scopes:
            try:
                result, graphs = cold_run(arch, data, args.batch, capture, scope)
            except Exception as exc:  # one failing scope must not cost the other's figures
                print(f"{arch:10s} {scope:>9s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                      flush=True)
                continue
            print(f"{arch:10s} {scope:>9s} {graphs:7d} {result.first_step_s:13.1f} {result.images_per_second:9.0f} "
                  f"{result.images_per_second / base.images_per_second:13.2f}", flush=True)


if __name__ == "__main__":
    main()
