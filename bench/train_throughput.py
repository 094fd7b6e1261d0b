"""Training and evaluation throughput of the pipeline's own code, each next to a plain PyTorch loop
on the same model, batch and device, measured in the same process; prints images/s and ratios.

    python bench/train_throughput.py                      # CPU, ResNet-20 teacher, ResNet-8 student
    python bench/train_throughput.py --device cuda --steps 100
    python bench/train_throughput.py --teacher resnet56 --student resnet20 --k 1 2 4 8
    python bench/train_throughput.py --compile            # adds torch.compile's cost and steady state
    python bench/train_throughput.py --teacher timm/resnet18 --student timm/mobilenetv3_large_100 --size 224 \
        --batch 32 --steps 5 --k 1 2

Goals: the pipeline's training step at least as fast as the plain loop (ratio >= 1.0); a K-sample
distill step costing no more than its arithmetic predicts (teacher forward MACs x K plus the
student's training MACs, taken as three times its forward MACs).

The reference loops are the minimum a user would write: tensors already on the device and
normalized, channels_last, bf16 autocast on a GPU, cross-entropy (and KD), SGD; no augmentation, no
bookkeeping. The
reference K-sample step runs K separate teacher passes, each a freshly sampled sub-network.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common.config import Augmentation, DistillConfig, TrainingConfig  # noqa: E402
from stages.nets.architectures import build_model  # noqa: E402
from stages.training.data import ImageDataset  # noqa: E402
from stages.distill import distillation_loss  # noqa: E402
from stages.nets.losses import kd_loss  # noqa: E402
from stages.nets.measure import count_macs  # noqa: E402
from stages.nets.stochastic_depth import sampling  # noqa: E402
from stages.training.evaluation import predict  # noqa: E402
from stages.training.loop import DeviceData, train  # noqa: E402

CLASSES = 100


def synthetic_data(images: int, size: int = 32) -> ImageDataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, CLASSES, images)
    return ImageDataset(x, y, x, y, tuple(map(str, range(CLASSES))), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pipeline_images_per_s(model, data: ImageDataset, device, batch: int, steps: int, loss_fn=None,
                          augment: bool = True, **recipe_settings) -> float:
    """The pipeline's ``train`` over ``steps`` batches (pad-4 crops and flips on the device unless not
    ``augment``), after a short warm-up run; ``recipe_settings`` go to its TrainingConfig (compile,
    drop_execution, ...)."""
    kwargs = {"loss_fn": loss_fn} if loss_fn else {}
    device_data = DeviceData(data, device)
    recipe = TrainingConfig(epochs=1, batch_size=batch, lr=0.05, lr_schedule="cosine", **recipe_settings)
    augmentation = Augmentation(crop_padding=4 if augment else 0, horizontal_flip=augment)
    warm = DeviceData(ImageDataset(data.x_train[:batch * 3], data.y_train[:batch * 3], data.x_test,
                                   data.y_test, data.class_names, data.mean, data.std), device)
    train(model, warm, recipe, augmentation=augmentation, seed=0, **kwargs)
    synchronize(device)
    result = train(model, device_data, recipe, augmentation=augmentation, seed=0, **kwargs)
    return result.images_per_second


def compiled_train(model, data: ImageDataset, device, batch: int):
    """One pass of the pipeline's ``train`` with ``training.compile``, compiling from nothing."""
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    # Inductor keeps compiled graphs on disk across processes; a cold start compiles from nothing.
    torch._inductor.config.force_disable_caches = True
    recipe = TrainingConfig(epochs=1, batch_size=batch, lr=0.05, lr_schedule="cosine", compile=True)
    return train(model, DeviceData(data, device), recipe, augmentation=Augmentation(crop_padding=4), seed=0)


def reference_images_per_s(model, data: ImageDataset, device, batch: int, steps: int, teacher=None,
                           k: int = 0, compile_mode: str | None = None, graph: bool = False) -> float:
    """A plain loop: forward, loss, backward, SGD step; with a teacher, K separate sampled passes.
    ``compile_mode`` compiles the model as the pipeline's training.compile_mode does; ``graph``
    records the whole step as one CUDA graph (PyTorch's documented recipe) and replays it."""
    model.to(device=device, memory_format=torch.channels_last).train()
    net = torch.compile(model, mode=compile_mode) if compile_mode else model
    lr = torch.tensor(0.05, device=device) if graph else 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4,
                                fused=True if graph else None)
    x = torch.from_numpy(data.x_train).to(device).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(data.y_train).to(device)

    def step(i: int) -> None:
        whole_step(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])

    def whole_step(xb, yb) -> None:
        # bf16 autocast on a GPU, as the pipeline trains there; its weight cache is off while recording.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda",
                            cache_enabled=not graph):
            out = net(xb)
            if teacher is None:
                loss = F.cross_entropy(out, yb)
            else:
                with sampling(teacher):
                    teacher_logits = torch.stack([teacher(xb) for _ in range(k)])
                loss = kd_loss(out.float(), teacher_logits.float(), yb, 4.0, 0.9, "individual")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if graph:
        static_x, static_y = x[:batch].clone(), y[:batch].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                whole_step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        recorded = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(recorded):
            whole_step(static_x, static_y)

        def step(i: int) -> None:  # noqa: F811 (the replayed step replaces the eager one)
            static_x.copy_(x[i * batch:(i + 1) * batch])
            static_y.copy_(y[i * batch:(i + 1) * batch])
            recorded.replay()

    batches = len(y) // batch
    if batches == 0:
        raise ValueError(f"{len(y)} training images make no batch of {batch}")
    # Warm-up wraps round too: past the last batch a slice is empty, and an empty batch is no
    # training step (compiled, its convolution backward fails Inductor's stride check on a CPU).
    for i in range(3):
        step(i % batches)
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i % batches)
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def eval_images_per_s(model, data: ImageDataset, device) -> tuple[float, float]:
    """The pipeline's ``predict`` and a plain loop, both from uint8 (N, H, W, C) test images to
    logits on the host, timed alternately three times each (best of three)."""
    model.to(device=device, memory_format=torch.channels_last).eval()

    def plain() -> None:
        with torch.no_grad():
            for i in range(0, len(data.x_test), 256):
                x = torch.from_numpy(data.x_test[i:i + 256]).to(device).permute(0, 3, 1, 2)
                x = x.float().div(255).sub(0.5).div(0.25).contiguous(memory_format=torch.channels_last)
                model(x).cpu()

    def ours() -> None:
        predict(model, data.x_test, data.mean, data.std, device)

    best = {ours: 0.0, plain: 0.0}
    for _ in range(3):
        for run in (ours, plain):
            start = time.perf_counter()
            run()
            synchronize(device)
            best[run] = max(best[run], len(data.x_test) / (time.perf_counter() - start))
    return best[ours], best[plain]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="image size (timm networks: e.g. 224)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--compile", action="store_true",
                        help="also train each network with training.compile: compile time and steady state")
    parser.add_argument("--rounds", type=int, default=3,
                        help="pipeline and plain loop alternate this many times; the best of each counts")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = synthetic_data(args.batch * args.steps, args.size)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                               f" ({torch.get_num_threads()} threads)")
          + f", torch {torch.__version__}, batch {args.batch}, {args.steps} timed steps, best of {args.rounds} "
          f"alternating rounds, synthetic {args.size}x{args.size} images")

    def fresh(arch: str, p_last: float = 1.0):
        torch.manual_seed(0)
        return build_model(arch, CLASSES, 3, p_last, image_size=args.size)

    def best_of(ours, plain) -> tuple[float, float]:
        # Alternating the two and keeping each one's best leaves out bursts of load from elsewhere.
        best = [0.0, 0.0]
        for _ in range(args.rounds):
            best = [max(best[0], ours()), max(best[1], plain())]
        return best[0], best[1]

    rows = []
    for arch in (args.teacher, args.student):
        rows.append((f"train step, {arch}", *best_of(
            lambda: pipeline_images_per_s(fresh(arch), data, device, args.batch, args.steps),
            lambda: reference_images_per_s(fresh(arch), data, device, args.batch, args.steps))))
    teacher = fresh(args.teacher, 0.5).to(device=device, memory_format=torch.channels_last).eval()
    for k in args.k:
        loss = distillation_loss(teacher, DistillConfig(teacher_samples=k, p_last=0.5))
        rows.append((f"distill step, K={k}", *best_of(
            lambda: pipeline_images_per_s(fresh(args.student), data, device, args.batch, args.steps, loss),
            lambda: reference_images_per_s(fresh(args.student), data, device, args.batch, args.steps, teacher, k))))
    ours, plain = eval_images_per_s(fresh(args.student), data, device)
    rows.append((f"evaluation, {args.student}", ours, plain))

    print(f"\n{'measurement':32s} {'pipeline img/s':>15s} {'plain loop img/s':>17s} {'ratio':>7s}")
    for name, ours, plain in rows:
        print(f"{name:32s} {ours:15.0f} {plain:17.0f} {ours / plain:7.2f}")

    if args.compile:
        print("\ntraining.compile: the first step (compilation included) apart from the steady state")
        print(f"{'network':12s} {'first step s':>13s} {'compiled img/s':>15s} {'eager img/s':>12s} {'ratio':>7s}")
        for arch in (args.teacher, args.student):
            compiled = compiled_train(fresh(arch), data, device, args.batch)
            eager = next(ours for name, ours, _ in rows if name == f"train step, {arch}")
            print(f"{arch:12s} {compiled.first_step_s:13.1f} {compiled.images_per_second:15.0f} {eager:12.0f} "
                  f"{compiled.images_per_second / eager:7.2f}")

    teacher_macs = count_macs(fresh(args.teacher), (3, args.size, args.size))
    student_macs = count_macs(fresh(args.student), (3, args.size, args.size))
    alone = next(ours for name, ours, _ in rows if name == f"train step, {args.student}")
    print(f"\nK-sample distill step time against the student's own step, measured and from the arithmetic"
          f"\n(teacher forward {teacher_macs / 1e6:.1f} MMACs x K + student training 3 x {student_macs / 1e6:.1f} MMACs):")
    print(f"{'K':>3s} {'measured':>9s} {'arithmetic':>11s} {'measured / arithmetic':>22s}")
    for name, ours, _ in rows:
        if name.startswith("distill step"):
            k = int(name.split("=")[1])
            measured = alone / ours
            predicted = (3 * student_macs + k * teacher_macs) / (3 * student_macs)
            print(f"{k:3d} {measured:8.2f}x {predicted:10.2f}x {measured / predicted:22.2f}")


if __name__ == "__main__":
    main()
