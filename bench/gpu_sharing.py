"""Several trainings side by side on one GPU, as ``--jobs`` runs them: their total images/s when the
GPU takes turns between the processes, and under a private MPS daemon (``--mps``, pipeline/mps.py),
next to one training alone, measured in one run.

    python bench/gpu_sharing.py                                    # on a GPU
    python bench/gpu_sharing.py --device cpu --archs resnet20 --tasks 2 --steps 5   # a CPU check

Each training is the pipeline's ``train`` with ``training.capture_step`` (on a GPU), a stochastic
network at p_n 0.5, batch 128, synthetic 32x32 images with crops and flips. Each process warms up
(capture included) and then waits, so that the timed windows start together. "Total" is all images
over the span from the first start to the last end, which also holds each process's own start of
training (three eager steps and the capture); "sum of steady" adds each process's rate after its
first replay, as the pipeline reports it, and "per task" lists those rates. Without
nvidia-cuda-mps-control, or on a CPU, the MPS rows are left out and say why.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(arch: str, steps: int, batch: int, device_name: str, go: Path, ready: Path, out: Path) -> None:
    """One training: warm up, say so, wait for the word, then train ``steps`` batches timed."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    import torch

    from train_throughput import synthetic_data
    from stages.common.config import Augmentation, TrainingConfig
    from stages.nets.architectures import build_model
    from stages.training.loop import DeviceData, train

    device = torch.device(device_name)
    gpu = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(arch, 100, 3, p_last=0.5)
    recipe = TrainingConfig(epochs=1, batch_size=batch, lr=0.05, lr_schedule="cosine", capture_step=gpu or None)
    augmentation = Augmentation(crop_padding=4, horizontal_flip=True)
    train(model, DeviceData(synthetic_data(batch * 4), device), recipe, augmentation=augmentation, seed=0)
    data = DeviceData(synthetic_data(batch * steps), device)
    if gpu:
        torch.cuda.synchronize()
    ready.write_text("")
    while not go.exists():
        time.sleep(0.01)
    start = time.time()
    result = train(model, data, recipe, augmentation=augmentation, seed=1)
    if gpu:
        torch.cuda.synchronize()
    out.write_text(json.dumps({"start": start, "end": time.time(), "images": batch * steps,
                               "steady": result.images_per_second}))


def side_by_side(arch: str, tasks: int, steps: int, batch: int, device: str, env: dict[str, str],
                 scratch: Path) -> dict:
    """``tasks`` trainings at once; their total images/s and each one's own. ``env``: the MPS
    daemon's, or empty for trainings that take turns."""
    from pipeline.mps import client_environment

    folder = Path(tempfile.mkdtemp(dir=scratch))
    go = folder / "go"
    processes = []
    for number in range(tasks):
        arguments = [sys.executable, __file__, "--child", arch, str(steps), str(batch), device, str(go),
                     str(folder / f"ready-{number}"), str(folder / f"out-{number}.json")]
        processes.append(subprocess.Popen(arguments, env=client_environment(env) if env else None))
    while not all((folder / f"ready-{n}").exists() for n in range(tasks)):
        if any(p.poll() not in (None, 0) for p in processes):
            raise SystemExit(f"a training process failed ({arch}, {tasks} at once)")
        time.sleep(0.05)
    go.write_text("")
    for process in processes:
        if process.wait() != 0:
            raise SystemExit(f"a training process failed ({arch}, {tasks} at once)")
    runs = [json.loads((folder / f"out-{n}.json").read_text()) for n in range(tasks)]
    span = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return {"total": sum(r["images"] for r in runs) / span, "steady": sum(r["steady"] for r in runs),
            "each": [r["steady"] for r in runs]}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        arch, steps, batch, device, go, ready, out = sys.argv[2:]
        try:
            child(arch, int(steps), int(batch), device, Path(go), Path(ready), Path(out))
        except KeyboardInterrupt as exc:  # a time limit's SIGTERM: training stopped, nothing to report
            raise SystemExit(128 + getattr(exc, "signum", 2)) from None
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--archs", nargs="+", default=["resnet20", "resnet110"])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="batches per training (default: 1000 for "
                        "ResNet-20, 300 for deeper networks; about 3 s alone on an H200)")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.mps import mps_daemon
    from stages.common.errors import PipelineError

    with tempfile.TemporaryDirectory(prefix="gpu-sharing-") as scratch_name:
        scratch = Path(scratch_name)
        print("| network | how | trainings | total images/s | sum of steady | per task | total / one alone |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for arch in args.archs:
            steps = args.steps or (1000 if arch == "resnet20" else 300)
            alone = side_by_side(arch, 1, steps, args.batch, args.device, {}, scratch)
            rows = [("alone", 1, alone)]
            rows.append(("taking turns", args.tasks,
                         side_by_side(arch, args.tasks, steps, args.batch, args.device, {}, scratch)))
            mps_note = None
            if args.device == "cpu":
                mps_note = "MPS: left out on a CPU"
            else:
                try:
                    with mps_daemon(scratch / "mps", scratch / "mps-log",
                                    os.environ.get("CUDA_VISIBLE_DEVICES")) as env:
                        rows.append(("MPS", args.tasks,
                                     side_by_side(arch, args.tasks, steps, args.batch, args.device, env, scratch)))
                except PipelineError as exc:
                    mps_note = f"MPS: left out ({exc})"
            for how, tasks, measured in rows:
                each = ", ".join(f"{v:,.0f}" for v in measured["each"])
                print(f"| {arch} | {how} | {tasks} | {measured['total']:,.0f} | {measured['steady']:,.0f} | "
                      f"{each} | "
                      f"{measured['total'] / alone['total']:.2f}x |", flush=True)
            if mps_note:
                print(mps_note, flush=True)


if __name__ == "__main__":
    main()
