"""Top-1 of the eager and the captured training step over several seeds: does replaying the step from
a CUDA graph (training.capture_step, masks drawn on the device) train as well as the eager step
(blocks skipped on the host)? Trains the same network with the same recipe both ways for each seed
and prints test top-1 per seed, mean ± std (n - 1), and the time each took.

    python bench/capture_seeds.py --data /tmp/cifar100.npz            # on a GPU: ResNet-20, 30 epochs, seeds 0-2
    python bench/capture_seeds.py --data digits --epochs 1 --seeds 0  # a quick CPU check that it runs

The recipe is the paper's CIFAR-100 one shortened to --epochs, its milestones scaled (60/120/180 of
200), with one warm-up epoch, pad-4 crops and flips, batch 128, and the network trained with
stochastic depth at --p-last. On a CPU capture_step is ignored, so both rows train the same way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common.config import Augmentation, DataConfig, TrainingConfig  # noqa: E402
from stages.nets.architectures import build_model  # noqa: E402
from stages.training.data import load_dataset  # noqa: E402
from stages.training.evaluation import accuracy, predict  # noqa: E402
from stages.training.loop import DeviceData, select_device, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a CIFAR-100 .npz, or 'digits'")
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--p-last", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    data_cfg = (DataConfig(dataset="digits", augmentation=Augmentation(crop_padding=1)) if args.data == "digits"
                else DataConfig(dataset="cifar100", root=args.data,
                                augmentation=Augmentation(crop_padding=4, horizontal_flip=True)))
    data = load_dataset(data_cfg)
    milestones = tuple(sorted({max(1, round(args.epochs * m / 200)) for m in (60, 120, 180)}))
    base = dict(epochs=args.epochs, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, lr_schedule="step",
                lr_milestones=milestones, lr_gamma=0.1, warmup_epochs=1, eval_each_epoch=False)
    ways = {"eager (skip)": TrainingConfig(**base),
            "captured (mask)": TrainingConfig(**base, capture_step=True)}
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch}, p_n {args.p_last}, {args.epochs} epochs (milestones {list(milestones)}), "
          f"{len(data.y_train)} training images, {name}, torch {torch.__version__}", flush=True)
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    for seed in args.seeds:
        for way, recipe in ways.items():
            torch.manual_seed(seed)
            model = build_model(args.arch, data.num_classes, data.in_channels, args.p_last)
            started = time.perf_counter()
            train(model, DeviceData(data, device), recipe, augmentation=data_cfg.augmentation, seed=seed)
            seconds = time.perf_counter() - started
            top1 = accuracy(predict(model, data.x_test, data.mean, data.std, device), data.y_test)
            results[way].append((top1, seconds))
            print(f"  seed {seed} {way:16s} top-1 {100 * top1:6.2f} %  {seconds:7.1f} s", flush=True)
    print(f"\n{'step':16s} " + " ".join(f"{'seed ' + str(s):>8s}" for s in args.seeds) + "   mean ± std     time")
    for way, runs in results.items():
        scores = [100 * top1 for top1, _ in runs]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"{way:16s} " + " ".join(f"{s:8.2f}" for s in scores)
              + f"   {statistics.mean(scores):.2f} ± {spread:.2f}   {statistics.mean(t for _, t in runs):6.1f} s")


if __name__ == "__main__":
    main()
