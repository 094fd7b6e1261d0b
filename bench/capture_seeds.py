"""Top-1 of the eager and the captured training step over several seeds: does replaying the step from
a CUDA graph (training.capture_step, masks drawn on the device) train as well as the eager step
(blocks skipped on the host)? Trains the same network with the same recipe both ways for each seed
and prints test top-1 per seed, mean ± std (n - 1), and the time each took.

    python bench/capture_seeds.py --data /tmp/cifar100.npz            # on a GPU: ResNet-20, 30 epochs, seeds 0-2
    python bench/capture_seeds.py --data digits --epochs 1 --seeds 0  # a quick CPU check that it runs

The recipe is the paper's CIFAR-100 one shortened to --epochs, its milestones scaled (60/120/180 of
200), with one warm-up epoch (a one-epoch run has neither milestone nor warm-up), pad-4 crops and
flips, batch 128, and the network trained with stochastic depth at --p-last. On a CPU capture_step is ignored and the second way trains eagerly with
masks, which isolates what differs between skipping a dropped block and masking it: masked, a dropped
block's BatchNorm running statistics still update and SGD still applies weight decay and momentum to its
weights; skipped, neither happens that step.

--side-by-side trains every (seed, way) at once, each in its own process, under a private MPS daemon
where nvidia-cuda-mps-control is there (three trainings under MPS gave 1.6x the images/s of one alone
on an H200, results/gpu_sharing.md): the top-1 figures are those of the same trainings, in less time,
and the times are then those of trainings sharing the GPU, not of one alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common.config import Augmentation, DataConfig, TrainingConfig  # noqa: E402
from stages.nets.architectures import build_model  # noqa: E402
from stages.training.data import load_dataset  # noqa: E402
from stages.training.evaluation import accuracy_on_test  # noqa: E402
from stages.training.loop import DeviceData, select_device, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a CIFAR-100 .npz, or 'digits'")
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--p-last", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--side-by-side", action="store_true",
                        help="train every seed and way at once, each in its own process (under MPS where it can)")
    parser.add_argument("--one", nargs=2, metavar=("SEED", "WAY"), help=argparse.SUPPRESS)  # a side-by-side child
    return parser.parse_args(argv)


def setting(args: argparse.Namespace):
    """The data, its configuration, and the recipe of each way."""
    data_cfg = (DataConfig(dataset="digits", augmentation=Augmentation(crop_padding=1)) if args.data == "digits"
                else DataConfig(dataset="cifar100", root=args.data,
                                augmentation=Augmentation(crop_padding=4, horizontal_flip=True)))
    # A run too short for a milestone or the warm-up (the one-epoch check) goes without them.
    milestones = tuple(sorted({max(1, round(args.epochs * m / 200)) for m in (60, 120, 180)} - {args.epochs}))
    base = dict(epochs=args.epochs, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, lr_schedule="step",
                lr_milestones=milestones, lr_gamma=0.1, warmup_epochs=1 if args.epochs > 1 else None,
                eval_each_epoch=False)
    # Masks named outright: on a GPU the captured step uses them anyway; on a CPU, where nothing is
    # captured, this way then trains eagerly with masks, which isolates skipping against masking.
    ways = {"eager (skip)": TrainingConfig(**base),
            "captured (mask)": TrainingConfig(**base, capture_step=True, drop_execution="mask")}
    return load_dataset(data_cfg), data_cfg, milestones, ways


def train_once(args: argparse.Namespace, data, data_cfg, recipe, seed: int, device) -> tuple[float, float]:
    """Top-1 on the test split and the seconds training took."""
    torch.manual_seed(seed)
    model = build_model(args.arch, data.num_classes, data.in_channels, args.p_last)
    started = time.perf_counter()
    train(model, DeviceData(data, device), recipe, augmentation=data_cfg.augmentation, seed=seed)
    seconds = time.perf_counter() - started
    return accuracy_on_test(model, data, device), seconds


def side_by_side(args: argparse.Namespace, ways: dict) -> dict[str, list[tuple[float, float]]]:
    """Every (seed, way) in a process of its own, all at once; their results in seed order."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from contextlib import ExitStack

    from pipeline.mps import client_environment, mps_daemon
    from stages.common.errors import PipelineError

    passed = [a for a in sys.argv[1:] if a != "--side-by-side"]
    with tempfile.TemporaryDirectory(prefix="seeds-") as scratch, ExitStack() as stack:
        env = None  # this process's
        if args.device != "cpu" and torch.cuda.is_available():
            try:
                env = client_environment(stack.enter_context(mps_daemon(
                    Path(scratch) / "mps", Path(scratch) / "mps-log", os.environ.get("CUDA_VISIBLE_DEVICES"))))
                print("side by side under MPS", flush=True)
            except PipelineError as exc:
                print(f"side by side, taking turns: {exc}", flush=True)
        jobs = {(seed, way): subprocess.Popen([sys.executable, __file__, *passed, "--one", str(seed), way],
                                              stdout=subprocess.PIPE, text=True, env=env)
                for seed in args.seeds for way in ways}
        results: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
        for (seed, way), process in jobs.items():
            out, _ = process.communicate()
            if process.returncode != 0:
                raise SystemExit(f"seed {seed} {way}: exit code {process.returncode}")
            top1, seconds = json.loads(out.strip().splitlines()[-1])
            results[way].append((top1, seconds))
            print(f"  seed {seed} {way:16s} top-1 {100 * top1:6.2f} %  {seconds:7.1f} s", flush=True)
    return results


def main() -> None:
    args = parse_args()
    device = select_device(args.device)
    data, data_cfg, milestones, ways = setting(args)
    if args.one:
        seed, way = int(args.one[0]), args.one[1]
        print(json.dumps(train_once(args, data, data_cfg, ways[way], seed, device)))
        return
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch}, p_n {args.p_last}, {args.epochs} epochs (milestones {list(milestones)}), "
          f"{len(data.y_train)} training images, {name}, torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    if args.side_by_side:
        results = side_by_side(args, ways)
    else:
        results = {way: [] for way in ways}
        for seed in args.seeds:
            for way, recipe in ways.items():
                top1, seconds = train_once(args, data, data_cfg, recipe, seed, device)
                results[way].append((top1, seconds))
                print(f"  seed {seed} {way:16s} top-1 {100 * top1:6.2f} %  {seconds:7.1f} s", flush=True)
    print(f"\n{'step':16s} " + " ".join(f"{'seed ' + str(s):>8s}" for s in args.seeds) + "   mean ± std     time")
    for way, runs in results.items():
        scores = [100 * top1 for top1, _ in runs]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"{way:16s} " + " ".join(f"{s:8.2f}" for s in scores)
              + f"   {statistics.mean(scores):.2f} ± {spread:.2f}   {statistics.mean(t for _, t in runs):6.1f} s")
    print(f"all of it: {time.perf_counter() - started:.1f} s" + (" (side by side)" if args.side_by_side else ""))


if __name__ == "__main__":
    main()
