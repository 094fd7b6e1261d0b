"""A Table II row's students trained in lockstep (``--lockstep``) against the same five trained one at
a time, measured side by side in one process; prints each way's wall time, the row's images/s (every
image counted once per model) and the ratio.

    python bench/lockstep_row.py                                     # CPU: ResNet-20 teachers, ResNet-8 students
    python bench/lockstep_row.py --device cuda --teacher resnet110 --student resnet20 --images 12800 --capture

The row: the student alone, KD and stochastic KD (p_n 0.5, one sub-network per batch) from a
stochastic-depth teacher, and KD and stochastic KD from a plain one, on random images (the time of a
step does not depend on what the images show), one epoch of the paper's recipe (batch 128, SGD at
LR 0.1), untrained teachers. In lockstep, one teacher pass a step serves each reading's KD and
stochastic KD, as the pipeline's rows do (on a GPU, one forward of 2 B rows). The two ways alternate, ``--repeats`` times each, so that a machine
that slows down or speeds up during the run weighs on both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common.config import Augmentation, DistillConfig, TrainingConfig  # noqa: E402
from stages.distill import distillation_loss  # noqa: E402
from stages.nets.checkpoint import ModelSpec, save_model  # noqa: E402
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


STUDENTS = 5  # the student alone, and KD and stochastic KD from each reading
KD, STOCHASTIC_KD = DistillConfig(p_last=1.0, teacher_samples=1), DistillConfig(p_last=0.5, teacher_samples=1)


def row_losses(teachers: dict[str, Path], device: torch.device, shared: bool) -> dict[str, object]:
    """Each student's loss: none for the student alone, KD and stochastic KD from each reading. With
    ``shared``, as the row trains in lockstep: one teacher pass a step serves each reading's stochastic
    KD and KD (stochastic KD first: it runs the pass); else a teacher of each kind, as alone."""
    losses = {"student": cross_entropy_loss}
    for reading, folder in teachers.items():
        prefix = "" if reading == "stochastic_depth" else "plain_"
        sampled = teaching_teacher(folder, 0.5, "batch", "trained", device, inputs=(MEAN, STD))
        if shared:
            teacher = SharedTeacher(sampled, STOCHASTIC_KD.teacher_samples, groups=False)
            losses[prefix + "stochastic_kd"] = distillation_loss(teacher.sampled, STOCHASTIC_KD)
            losses[prefix + "kd"] = distillation_loss(teacher.deterministic, KD)
        else:
            plain = teaching_teacher(folder, 1.0, "batch", "trained", device, inputs=(MEAN, STD))
            losses[prefix + "kd"] = distillation_loss(plain, KD)
            losses[prefix + "stochastic_kd"] = distillation_loss(sampled, STOCHASTIC_KD)
    return losses


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


AUGMENTATION = Augmentation(crop_padding=4, horizontal_flip=True)


def main() -> None:
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
    recipe = TrainingConfig(epochs=1, batch_size=args.batch, lr=0.1, eval_each_epoch=False, capture_step=args.capture)
    data = DeviceData(random_images(args.images, args.size), device)
    with tempfile.TemporaryDirectory() as folder:
        teachers = saved_teachers(args.teacher, args.size, Path(folder))
        in_lockstep(args, data, recipe, teachers, device)  # warm-up: first-call costs, caches, allocator
        times = {"one at a time": [], "in lockstep": []}
        for repeat in range(args.repeats):
            ways = [("one at a time", one_at_a_time), ("in lockstep", in_lockstep)]
            for name, way in ways if repeat % 2 == 0 else ways[::-1]:
                times[name].append(way(args, data, recipe, teachers, device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{STUDENTS} students ({args.student}) of a row, teachers {args.teacher}, {args.images} images of "
          f"{args.size} px, batch {args.batch}, on {name} ({torch.get_num_threads()} threads)"
          f"{', steps captured' if args.capture else ''}, best of {args.repeats}:")
    best = {name: min(spent) for name, spent in times.items()}
    for name, spent in best.items():
        print(f"  {name:14} {spent:8.2f} s   {STUDENTS * args.images / spent:9.0f} images/s   "
              f"(each run: {', '.join(f'{s:.2f}' for s in times[name])} s)")
    print(f"  lockstep / one at a time: {best['one at a time'] / best['in lockstep']:.2f}x the row's images/s")


if __name__ == "__main__":
    main()
