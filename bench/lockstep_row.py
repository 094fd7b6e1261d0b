"""A Table II row's students trained in lockstep (``--lockstep``) against the same five trained one at
a time in this process, and five processes training one each at once (as ``--jobs 5``; on a GPU also
under a private MPS daemon, as ``--jobs 5 --mps``); prints each way's wall time, the row's images/s
(every image counted once per model) and its ratio to one at a time.

    python bench/lockstep_row.py                     # CPU: ResNet-20 teachers, ResNet-8 students
    python bench/lockstep_row.py --device cuda --teacher resnet110 --student resnet20 --images 12800 --capture

The row: the student alone, KD and stochastic KD (p_n 0.5, one sub-network per batch) from a
stochastic-depth teacher, and KD and stochastic KD from a plain one, on random images (the time of a
step does not depend on what the images show), one epoch of the paper's recipe (batch 128, SGD at
LR 0.1), untrained teachers, frozen as the pipeline's are (BatchNorm folded; bf16 weights on a GPU).
In lockstep, one teacher pass a step serves each reading's KD and stochastic KD, as the pipeline's
rows do (on a GPU, one forward of 2 B rows). Side by side, each process sets itself up (imports,
data, its teacher, CUDA) before a common start; the time is from that start to the last one's end,
and on a CPU each process gets its share of the cores, as the scheduler gives ``--jobs``. The ways
alternate, ``--repeats`` times each, so that a machine that slows down or speeds up during the run
weighs on all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common.config import Augmentation, DistillConfig, TrainingConfig  # noqa: E402
from stages.distill import distillation_loss  # noqa: E402
from stages.nets.checkpoint import ModelSpec, save_model  # noqa: E402
from stages.nets.frozen import cast_weights  # noqa: E402
from stages.nets.teaching import SharedTeacher, teaching_teacher  # noqa: E402
from stages.training.data import ImageDataset  # noqa: E402
from stages.training.device_data import DeviceData  # noqa: E402
from stages.training.lockstep import Member, train_together  # noqa: E402
from stages.training.loop import cross_entropy_loss, train  # noqa: E402
from stages.training.resume import rng_states  # noqa: E402

CLASSES = 100
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def random_images(images: int, size: int) -> ImageDataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, CLASSES, images)
    return ImageDataset(x, y, x[:256], y[:256], tuple(map(str, range(CLASSES))), MEAN, STD)


def saved_teachers(arch: str, size: int, folder: Path) -> dict[str, Path]:
    """An untrained teacher of each reading: trained with stochastic depth at p_n 0.5, and plain."""
    made = {}
    for reading, p_last in (("stochastic_depth", 0.5), ("plain", 1.0)):
        torch.manual_seed(0)
        spec = ModelSpec(arch, CLASSES, 3, size, p_last, "batch", MEAN, STD, True)
        (folder / reading).mkdir()
        save_model(spec.build(), spec, folder / reading)
        made[reading] = folder / reading
    return made


ROW = ("student", "kd", "stochastic_kd", "plain_kd", "plain_stochastic_kd")  # as row_losses names them
STUDENTS = len(ROW)
KD, STOCHASTIC_KD = DistillConfig(p_last=1.0, teacher_samples=1), DistillConfig(p_last=0.5, teacher_samples=1)


def row_losses(teachers: dict[str, Path], device: torch.device, shared: bool) -> dict[str, object]:
    """Each student's loss: none for the student alone, KD and stochastic KD from each reading. With
    ``shared``, as the row trains in lockstep: one teacher pass a step serves each reading's stochastic
    KD and KD (stochastic KD first: it runs the pass); else a teacher of each kind, as alone."""
    losses = {"student": cross_entropy_loss}
    for reading, folder in teachers.items():
        prefix = "" if reading == "stochastic_depth" else "plain_"
        sampled = frozen(teaching_teacher(folder, 0.5, "batch", "trained", device, inputs=(MEAN, STD)), device)
        if shared:
            teacher = SharedTeacher(sampled, STOCHASTIC_KD.teacher_samples, groups=False)
            losses[prefix + "stochastic_kd"] = distillation_loss(teacher.sampled, STOCHASTIC_KD)
            losses[prefix + "kd"] = distillation_loss(teacher.deterministic, KD)
        else:
            plain = frozen(teaching_teacher(folder, 1.0, "batch", "trained", device, inputs=(MEAN, STD)), device)
            losses[prefix + "kd"] = distillation_loss(plain, KD)
            losses[prefix + "stochastic_kd"] = distillation_loss(sampled, STOCHASTIC_KD)
    return losses


def frozen(teacher: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """As the distill stage has it: on a GPU, its weights cast to bf16 once."""
    return cast_weights(teacher, torch.bfloat16) if device.type == "cuda" else teacher


def student(arch: str, size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ModelSpec(arch, CLASSES, 3, size, 1.0, "batch", MEAN, STD, True).build()


def one_at_a_time(args, data, recipe, teachers, device) -> float:
    losses = row_losses(teachers, device, shared=False)
    started = time.perf_counter()
    for loss in losses.values():
        train(student(args.student, args.size), data, recipe, augmentation=AUGMENTATION, seed=0, loss_fn=loss)
    synchronize(device)
    return time.perf_counter() - started


def in_lockstep(args, data, recipe, teachers, device) -> float:
    losses = row_losses(teachers, device, shared=True)
    members = []
    for name, loss in losses.items():
        model = student(args.student, args.size)
        members.append(Member(name, model, loss, rng_states(device)))
    started = time.perf_counter()
    train_together(members, data, recipe, augmentation=AUGMENTATION, seed=0)
    synchronize(device)
    return time.perf_counter() - started


def side_by_side(args, folder: Path, mps_env: dict[str, str] | None = None) -> float:
    """The row's five students in five processes at once (``mps_env``: under that MPS daemon), timed
    from a common start, after each has set itself up, to the last one's end."""
    from pipeline.mps import client_environment

    scratch = Path(tempfile.mkdtemp(dir=folder))
    go, names = scratch / "go", list(ROW)
    processes = []
    for name in names:
        child = {"name": name, "teachers": str(folder), "go": str(go), "ready": str(scratch / f"{name}.ready"),
                 "out": str(scratch / f"{name}.json"), "args": vars(args), "processes": len(names)}
        processes.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps(child)],
                                          env=client_environment(mps_env) if mps_env else None))
    while not all((scratch / f"{name}.ready").exists() for name in names):
        if any(p.poll() not in (None, 0) for p in processes):
            raise SystemExit("a student's process failed while setting up")
        time.sleep(0.05)
    go.write_text("")
    if any(p.wait() != 0 for p in processes):
        raise SystemExit("a student's process failed")
    runs = [json.loads((scratch / f"{name}.json").read_text()) for name in names]
    return max(r["end"] for r in runs) - min(r["start"] for r in runs)


def child(spec: dict) -> None:
    """One student of the row in a process of its own: set up, say so, wait for the start, train."""
    args = argparse.Namespace(**spec["args"])
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec["processes"]))
    data = DeviceData(random_images(args.images, args.size), device)
    folder = Path(spec["teachers"])
    teachers = {reading: folder / reading for reading in ("stochastic_depth", "plain")}
    loss = row_losses(teachers, device, shared=False)[spec["name"]]
    recipe = row_recipe(args)
    model = student(args.student, args.size)
    synchronize(device)
    Path(spec["ready"]).write_text("")
    while not Path(spec["go"]).exists():
        time.sleep(0.01)
    start = time.time()
    train(model, data, recipe, augmentation=AUGMENTATION, seed=0, loss_fn=loss)
    synchronize(device)
    Path(spec["out"]).write_text(json.dumps({"start": start, "end": time.time()}))


def row_recipe(args) -> TrainingConfig:
    return TrainingConfig(epochs=1, batch_size=args.batch, lr=0.1, eval_each_epoch=False, capture_step=args.capture)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


AUGMENTATION = Augmentation(crop_padding=4, horizontal_flip=True)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2560, help="one epoch of this many images")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--capture", action="store_true", help="capture each training step as a CUDA graph (GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    recipe = row_recipe(args)
    data = DeviceData(random_images(args.images, args.size), device)
    with tempfile.TemporaryDirectory() as name, ExitStack() as stack:
        folder = Path(name)
        teachers = saved_teachers(args.teacher, args.size, folder)
        ways = {"one at a time": lambda: one_at_a_time(args, data, recipe, teachers, device),
                "in lockstep": lambda: in_lockstep(args, data, recipe, teachers, device),
                "side by side": lambda: side_by_side(args, folder)}
        mps_note = "side by side under MPS: left out on a CPU" if device.type == "cpu" else None
        if device.type == "cuda":
            from pipeline.mps import mps_daemon
            from stages.common.errors import PipelineError

            try:
                env = stack.enter_context(mps_daemon(folder / "mps", folder / "mps-log",
                                                     os.environ.get("CUDA_VISIBLE_DEVICES")))
                ways["side by side, MPS"] = lambda: side_by_side(args, folder, env)
            except PipelineError as exc:
                mps_note = f"side by side under MPS: left out ({exc})"
        ways["in lockstep"]()  # warm-up: first-call costs, caches, allocator
        times = {way: [] for way in ways}
        for repeat in range(args.repeats):
            for way in list(ways) if repeat % 2 == 0 else list(ways)[::-1]:
                times[way].append(ways[way]())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{STUDENTS} students ({args.student}) of a row, teachers {args.teacher}, {args.images} images of "
          f"{args.size} px, batch {args.batch}, on {name} ({torch.get_num_threads()} threads)"
          f"{', steps captured' if args.capture else ''}, best of {args.repeats}:")
    best = {way: min(spent) for way, spent in times.items()}
    for way, spent in best.items():
        print(f"  {way:18} {spent:8.2f} s   {STUDENTS * args.images / spent:9.0f} images/s   "
              f"{best['one at a time'] / spent:5.2f}x   (each run: {', '.join(f'{s:.2f}' for s in times[way])} s)")
    if mps_note:
        print(f"  {mps_note}")


if __name__ == "__main__":
    main()
