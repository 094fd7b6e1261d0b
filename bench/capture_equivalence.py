"""Step by step, how far a training run whose full batches replay a CUDA graph (training.capture_step)
drifts from the same run stepped eagerly: after every step, the largest difference of the weights and
of the BatchNorm statistics, for a run without drops and one with masked stochastic blocks. The first
rows are the eager warm-up steps, then the capture, then replays; the last batch is smaller and runs
eagerly. An eager run against itself gives the floor (cuDNN deterministic, fp32).

    python bench/capture_equivalence.py            # needs a CUDA GPU
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.nets.architectures import build_model  # noqa: E402
from stages.training.cuda_graph_step import CapturedStep, lr_on_device  # noqa: E402
from stages.nets.stochastic_depth import use_drop_execution  # noqa: E402
from stages.training.loop import joint_update  # noqa: E402
from stages.training.run_state import zero_momentum_buffers  # noqa: E402


def batches(device, sizes):
    generator = torch.Generator().manual_seed(1)
    out = []
    for n in sizes:
        x = torch.randn(n, 3, 16, 16, generator=generator).to(device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (n,), generator=generator).to(device)
        out.append((x, y))
    return out


def trajectory(initial, data, device, captured: bool):
    """The state after every step, from ``initial`` (a model) and the same random stream."""
    model = copy.deepcopy(initial).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, fused=True)
    zero_momentum_buffers(optimizer)
    update = joint_update(lambda logits, images, labels: F.cross_entropy(logits, labels))
    def eager_step(images, labels):
        return update(model, optimizer, images, labels, False)

    step = CapturedStep(eager_step, optimizer, device) if captured else eager_step
    if not captured:
        lr_on_device(optimizer, device)  # the same LR arithmetic as the graph's
    torch.manual_seed(7)
    states = []
    for images, labels in data:
        step(images, labels)
        torch.cuda.synchronize(device)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return states


def largest(a: dict, b: dict, buffers: bool) -> tuple[float, str]:
    worst, name = 0.0, "-"
    for key in a:
        if ("running" in key or "num_batches" in key) != buffers:
            continue
        d = float((a[key].double() - b[key].double()).abs().max())
        if d > worst:
            worst, name = d, key
    return worst, name


def main() -> None:
    device = torch.device("cuda")
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fp32, cuDNN deterministic")
    data = batches(device, [16] * 8 + [8] + [16] * 3)
    for p_last in (1.0, 0.5):
        torch.manual_seed(0)
        initial = use_drop_execution(build_model("resnet8", 10, 3, p_last, "batch"), "mask")
        eager = trajectory(initial, data, device, captured=False)
        again = trajectory(initial, data, device, captured=False)
        graph = trajectory(initial, data, device, captured=True)
        print(f"\np_last {p_last}: step, how it ran, |captured - eager| weights (worst tensor), BatchNorm "
              f"statistics, |eager - eager| weights")
        for i, (e, a, g) in enumerate(zip(eager, again, graph)):
            how = "eager (warm-up)" if i < 3 else "capture + replay" if i == 3 else (
                "eager (other size)" if data[i][0].shape[0] != 16 else "replay")
            w, wname = largest(g, e, buffers=False)
            b, bname = largest(g, e, buffers=True)
            print(f"{i + 1:3d} {how:20s} {w:10.3g} ({wname}) {b:10.3g} ({bname}) {largest(a, e, False)[0]:10.3g}")


if __name__ == "__main__":
    main()
