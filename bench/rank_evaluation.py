"""Evaluation under torchrun: the ranks measuring the test split together (each its slice, hits
added up, as the training stages now do) against every rank measuring all of it. Two gloo processes
on this machine, one thread each (torchrun's default per process); both ways in the same run, each
rank's wall time printed, and the ratio.

    python bench/rank_evaluation.py                      # ResNet-20, 10,000 images of 32x32x3
    python bench/rank_evaluation.py --arch resnet56 --images 5000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.nets.architectures import build_model  # noqa: E402
from stages.training.evaluation import accuracy, predict, split_accuracy  # noqa: E402

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def rank_main(rank: int, port: int, arch: str, images: int, rounds: int, folder: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = build_model(arch, 100, 3, 1.0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 100, images)
    cpu = torch.device("cpu")
    best = {"every rank, all images": float("inf"), "ranks together, a slice each": float("inf")}
    figures = {}
    for _ in range(rounds):
        for way in best:
            dist.barrier()
            started = time.perf_counter()
            if way.startswith("every"):
                figures[way] = accuracy(predict(model, x, MEAN, STD, cpu), y)
            else:
                figures[way] = split_accuracy(model, x, y, MEAN, STD, cpu)
            dist.barrier()  # a way ends when both ranks have its figure
            best[way] = min(best[way], time.perf_counter() - started)
    Path(folder, f"rank-{rank}.json").write_text(json.dumps([best, figures]))
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # past the teardown in which a spawned gloo process now and then aborts (SIGABRT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each way is kept")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(rank_main, args=(port, args.arch, args.images, args.rounds, folder), nprocs=2)
        results = [json.loads(Path(folder, f"rank-{r}.json").read_text()) for r in (0, 1)]
    print(f"{args.arch}, {args.images:,} images, 2 gloo processes with 1 thread each, best of {args.rounds} rounds, "
          f"torch {torch.__version__}")
    print(f"{'evaluation':32} {'wall s':>8} {'top-1':>8}")
    for way in results[0][0]:
        seconds = max(r[0][way] for r in results)
        print(f"{way:32} {seconds:8.2f} {results[0][1][way]:8.4f}")
    every, together = (max(r[0][w] for r in results) for w in results[0][0])
    print(f"ratio (every rank / together): {every / together:.2f}x; the same top-1: "
          f"{results[0][1]['every rank, all images'] == results[0][1]['ranks together, a slice each']}")


if __name__ == "__main__":
    main()
