"""A teacher's pass per training step as the lockstep row runs it, frozen (BatchNorm folded into the
convolutions; on a GPU, weights cast to bfloat16 once) against the same teacher unfolded, and one
shared pass for its deterministic and sampled students against two passes; measured side by side
in one process, alternating, and printed as ms per step and ratios.

    python bench/frozen_teacher.py                                   # CPU: ResNet-56, batch 128, 32 px
    python bench/frozen_teacher.py --device cuda --teacher resnet110 --capture

Random weights and images (the time of a pass does not depend on them); BatchNorm statistics are
those of a freshly built network, which folding treats like any other. ``--capture`` times each
way's pass recorded as one CUDA graph and replayed, as inside a captured training step.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.nets.architectures import build_model  # noqa: E402
from stages.nets.frozen import cast_weights, fold_batchnorm  # noqa: E402
from stages.nets.stochastic_depth import (deterministic_and_sampled, sample_with_groups,  # noqa: E402
                                          use_drop_execution)


def teachers(args, device: torch.device) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """Unfolded and frozen, each as the row builds it without sharing: the teacher sampled at p_n 0.5,
    and the same weights built without stochastic blocks for the deterministic student."""
    torch.manual_seed(0)
    sampled = build_model(args.teacher, 100, 3, p_last=0.5).eval()
    plain = build_model(args.teacher, 100, 3, p_last=1.0).eval()
    plain.load_state_dict(sampled.state_dict())
    probe = torch.randn(2, 3, args.size, args.size)
    made = {"unfolded": (sampled, plain)}
    frozen = copy.deepcopy(sampled), copy.deepcopy(plain)
    folded = [fold_batchnorm(model, probe) for model in frozen][0]
    if device.type == "cuda":
        for model in frozen:
            cast_weights(model, torch.bfloat16)
    made[f"frozen ({folded} BatchNorm folded)"] = frozen
    execution = "mask" if args.capture else "skip"
    return {name: tuple(use_drop_execution(model.to(device=device, memory_format=torch.channels_last), execution)
                        for model in pair) for name, pair in made.items()}


def passes(sampled: torch.nn.Module, plain: torch.nn.Module, k: int) -> dict[str, Callable[[torch.Tensor], object]]:
    return {"two teachers' passes (deterministic, K sampled)":
            lambda x: (sample_with_groups(plain, x, 1, groups=False), sample_with_groups(sampled, x, k, groups=False)),
            "one shared pass": lambda x: deterministic_and_sampled(sampled, x, k, groups=False)}


def timed(step: Callable[[torch.Tensor], object], x: torch.Tensor, steps: int, capture: bool) -> float:
    """Milliseconds per call of ``step``, after warm-up; with ``capture``, of its CUDA graph's replay."""
    for _ in range(3):
        step(x)
    run = lambda: step(x)  # noqa: E731
    if capture:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(x)
        run = graph.replay
    synchronize(x.device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize(x.device)
    return (time.perf_counter() - started) / steps * 1000


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--k", type=int, default=1, help="sub-networks per step for the sampled student")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--capture", action="store_true", help="time CUDA-graph replays (GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    ways = {(teacher_name, pass_name): step for teacher_name, pair in teachers(args, device).items()
            for pass_name, step in passes(*pair, args.k).items()}
    times: dict[tuple[str, str], list[float]] = {way: [] for way in ways}
    for repeat in range(args.repeats):
        order = list(ways) if repeat % 2 == 0 else list(ways)[::-1]
        for way in order:
            times[way].append(timed(ways[way], x, args.steps, args.capture))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.teacher} teacher, batch {args.batch} at {args.size} px, K = {args.k}, on {name}"
          f"{', CUDA-graph replays' if args.capture else ''}; best of {args.repeats} x {args.steps} steps, ms per step:")
    best = {way: min(spent) for way, spent in times.items()}
    for (teacher_name, pass_name), spent in best.items():
        print(f"  {teacher_name:28} {pass_name:48} {spent:8.2f}")
    baseline = best[next(iter(best))]
    for way, spent in best.items():
        print(f"  {' / '.join(way)}: {baseline / spent:.2f}x the speed of the unfolded teachers' two passes")


if __name__ == "__main__":
    main()
