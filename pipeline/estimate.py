"""What a run will cost, before it runs: an estimated wall time for each task on this machine.

A step of a network costs ``layers x per-layer overhead + images x MACs x per-MAC time``: small
images are dominated by the first term (launches, Python), large ones by the second. Both rates are
measured once per machine and device by a short probe (two networks, a few steps each) and kept in
``<artifacts>/store/shared/estimate/``, with the MAC counts of the networks met so far, so that
``status`` estimates without importing a framework once they are known. Stages that do little
arithmetic (ONNX export, the benchmark's processes) cost fixed times measured on a 2-core CPU.
These are estimates, recorded next to the measured times and compared in the report.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stages.common.errors import ArtifactError, first_line

PROBE_VERSION = 1
EVAL_BATCH = 256
# Fixed costs in seconds, from the quickstart's measured times on this project's 2-core CPU machine
# (estimates elsewhere; the report sets each task's estimate beside its measured time).
EXPORT_S = 2.0          # torch.export and ONNX Runtime's check, per model
WORKER_START_S = 0.7    # a benchmark process importing its runtime
QUANTIZE_S = 0.5        # pre-processing and writing the quantized models
ENGINE_S = 0.2          # per engine, on ONNX Runtime (TensorRT builds take longer: they are not known here)
REPORT_S = 3.0
# Known datasets: (train, test, image size, channels, classes).
DATASETS = {"digits": (1437, 360, 8, 1, 10), "cifar10": (50000, 10000, 32, 3, 10),
            "cifar100": (50000, 10000, 32, 3, 100), "tiny_imagenet": (100000, 10000, 64, 3, 200)}
LONG_ON_A_CPU_S = 3 * 3600


@dataclass
class Probe:
    """Seconds per layer and per MAC of a training step (forward, backward, update) and of inference."""
    device: str
    train_layer_s: float
    train_mac_s: float
    infer_layer_s: float
    infer_mac_s: float
    version: int = PROBE_VERSION
    networks: dict[str, list[int]] = field(default_factory=dict)  # "arch/classes/channels/size" -> [MACs, layers]

    def train_step(self, batch: int, macs: int, layers: int) -> float:
        return layers * self.train_layer_s + batch * macs * self.train_mac_s

    def infer_step(self, batch: int, macs: int, layers: int) -> float:
        return layers * self.infer_layer_s + batch * macs * self.infer_mac_s

    def evaluate(self, images: int, macs: int, layers: int, batch: int = EVAL_BATCH) -> float:
        return math.ceil(images / batch) * self.infer_step(min(batch, images), macs, layers)


def probe_file(root: Path, device: str) -> Path:
    from stages.common.hardware import cpu_model

    name = re.sub(r"[^A-Za-z0-9]+", "-", f"{cpu_model()}-{os.cpu_count()}cores-{device}").strip("-")
    return root / "store" / "shared" / "estimate" / f"probe-{name}.json"


def load_probe(path: Path) -> Probe | None:
    """The cached probe, None where none was measured; a damaged one is an error naming the file."""
    if not path.is_file():
        return None
    try:
        probe = Probe(**json.loads(path.read_text()))
        if probe.version != PROBE_VERSION or min(probe.train_layer_s, probe.train_mac_s,
                                                 probe.infer_layer_s, probe.infer_mac_s) < 0:
            raise ValueError("written by another version, or negative rates")
        return probe
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: unreadable throughput probe ({first_line(exc)[:120]}); delete it and it is "
                            f"measured again") from exc


def save_probe(probe: Probe, path: Path) -> bool:
    """Keep the probe for later runs; False where the artifacts folder cannot take it (unwritable, a
    full disk): the estimate is a convenience, and the run's own writes report such a folder."""
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(asdict(probe), indent=1))
        os.replace(partial, path)
    except OSError:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass
        return False
    return True


def network_key(arch: str, classes: int, channels: int, size: int) -> str:
    return f"{arch}/{classes}/{channels}/{size}"


def count_network(probe: Probe, arch: str, classes: int, channels: int, size: int) -> list[int]:
    """[MACs per image, conv and linear layers] of a network, counted once and kept in the probe."""
    key = network_key(arch, classes, channels, size)
    if key not in probe.networks:
        from stages.nets.architectures import build_model

        probe.networks[key] = network_cost(build_model(arch, classes, channels, image_size=size), channels, size)
    return probe.networks[key]


def network_cost(model, channels: int, size: int) -> list[int]:
    """[MACs per image, conv and linear layers run] of one forward pass, from stages.nets.measure."""
    from stages.nets.measure import layer_costs

    costs = layer_costs(model, (channels, size, size))
    return [sum(layer["macs"] for layer in costs), len(costs)]


def measure_probe(device: str) -> Probe:
    """Time a few training and inference steps of a small and a large workload; solve for the
    per-layer and per-MAC costs."""
    import time

    import torch
    from torch import nn

    from stages.nets.architectures import build_model

    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(arch: str, channels: int, size: int, batch: int, train: bool) -> tuple[float, int, int]:
        torch.manual_seed(0)
        model = build_model(arch, 10, channels)
        macs, layers = network_cost(model, channels, size)
        model.to(device=dev, memory_format=torch.channels_last)
        x = torch.randn(batch, channels, size, size, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=dev)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            if train:
                model.train()
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                model.eval()
                with torch.inference_mode():
                    model(x)

        for _ in range(2):
            step()
        sync()
        start, steps = time.perf_counter(), 5
        for _ in range(steps):
            step()
        sync()
        return (time.perf_counter() - start) / steps, layers, macs

    def solve(small, large, batch) -> tuple[float, float]:
        # t = layers * a + batch * macs * b, through both points (a, b >= 0).
        (ts, ls, ms), (tl, ll, ml) = small, large
        det = ls * batch * ml - ll * batch * ms
        a = (ts * batch * ml - tl * batch * ms) / det
        b = (ls * tl - ll * ts) / det
        # A busy machine can time the small workload slower than the large one allows for: a rate
        # would come out negative (and the probe unreadable later). The other rate then explains both.
        if a < 0:
            return 0.0, tl / (batch * ml)
        if b < 0:
            return max(ts / ls, tl / ll), 0.0
        return a, b

    train_a, train_b = solve(timed("resnet8", 1, 8, 64, True), timed("resnet20", 3, 32, 64, True), 64)
    infer_a, infer_b = solve(timed("resnet8", 1, 8, EVAL_BATCH, False), timed("resnet20", 3, 32, EVAL_BATCH, False),
                             EVAL_BATCH)
    return Probe(device=dev.type, train_layer_s=train_a, train_mac_s=train_b, infer_layer_s=infer_a,
                 infer_mac_s=infer_b)


def data_shape(cfg) -> tuple[int, int, int, int, int, int] | None:
    """(train, validation, test, image size, channels, classes) of a profile's data, read without
    loading it: known sizes, or the .npz's array headers. None where it cannot be known cheaply."""
    known = DATASETS.get(cfg.dataset)
    root = Path(cfg.root).expanduser() if cfg.root else None
    if root is not None and root.suffix == ".npz" and root.is_file():
        known = _npz_shape(root) or known
    if known is None:
        return None
    train, test, size, channels, classes = known
    if cfg.classes is not None:  # as many images of each kept class as of any (the known datasets are balanced)
        kept = min(cfg.class_count, classes)
        train, test, classes = train * kept // classes, test * kept // classes, kept
    # What the networks compute on: the input size where one is set, else the images as stored.
    size = cfg.input_size or cfg.image_size or size
    validation = cfg.validation_images or 0
    train = min(cfg.train_images or train - validation, train - validation)
    return train, validation, min(cfg.test_images or test, test), size, channels, classes


def _npz_shape(path: Path) -> tuple[int, int, int, int, int] | None:
    """(train, test, height, channels, classes) from the .npz's array headers, no array read."""
    import zipfile

    import numpy as np

    def shape(archive, name: str) -> tuple[int, ...]:
        with archive.open(f"{name}.npy") as member:
            major, _ = np.lib.format.read_magic(member)
            reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            return reader(member)[0]

    try:
        with zipfile.ZipFile(path) as archive:
            train, test = shape(archive, "x_train"), shape(archive, "x_test")
            classes = shape(archive, "class_names")[0] if "class_names.npy" in archive.namelist() else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return train[0], test[0], train[1], train[3], classes or 100


def _training_task(task):
    """The training task a deployment task descends from, and the member (a DML peer) it is."""
    member = task.params.get("member")
    while task.stage not in ("teacher", "distill", "mutual"):
        task = task.needs.get("model") or task.needs.get("onnx") or task.needs.get("teacher")
        if task is None:
            return None, None
        member = member or task.params.get("member")
    return task, member


def _arch_of(task, member: str | None) -> str:
    if task.stage == "teacher":
        return task.params["teacher"].arch
    if task.stage == "distill":
        return task.params["student"].arch
    return task.params["mutual"].peers[int(member[len("peer"):]) - 1] if member else task.params["mutual"].peers[0]


def training_recipe(task):
    """The recipe a task trains by; None for a task that trains nothing (an imported teacher among them)."""
    if task.stage == "teacher" and task.params["teacher"].checkpoint is None:
        return task.params["teacher"].training
    if task.stage == "distill":
        return task.params["student"].training
    if task.stage == "mutual":
        return task.params["mutual"].training
    return None


def compiled_or_captured(tasks, device: str) -> int:
    """How many of the tasks compile their network or, on a GPU, capture their step as a CUDA graph.
    The probe times plain eager steps, so their estimates leave out both the compile time (minutes for
    a deep network) and the faster steps that follow."""
    recipes = [training_recipe(task) for task in tasks]
    return sum(1 for r in recipes if r is not None and (r.compile or (r.capture_step and device == "cuda")))


def task_seconds(task, probe: Probe, shape, count) -> float | None:
    """The estimated wall time of one task; ``count(arch)`` gives [MACs, layers] of a network on this
    data. None for a task whose network cannot be told."""
    train, validation, test, _, _, _ = shape
    evaluated = test + validation
    params, stage = task.params, task.stage
    if stage == "report":
        return REPORT_S
    if stage == "teacher" and params["teacher"].checkpoint is not None:
        return probe.evaluate(evaluated, *count(params["teacher"].arch))
    if stage in ("teacher", "distill"):
        cfg = params["teacher" if stage == "teacher" else "student"]
        recipe = cfg.training
        macs, layers = count(cfg.arch)
        per_step = probe.train_step(recipe.batch_size, macs, layers)
        if "teacher" in task.needs:
            teacher_macs, teacher_layers = count(task.needs["teacher"].params["teacher"].arch)
            per_step += params["distill"].teacher_samples * probe.infer_step(recipe.batch_size, teacher_macs,
                                                                             teacher_layers)
        evaluations = (recipe.epochs if recipe.eval_each_epoch is not False else 0) + 1
        if stage == "teacher" and cfg.p_last < 1:
            evaluations += 8  # the sampled sub-networks
        return (recipe.epochs * math.ceil(train / recipe.batch_size) * per_step
                + evaluations * probe.evaluate(evaluated, macs, layers))
    if stage == "mutual":
        cfg = params["mutual"]
        total = 0.0
        for arch in cfg.peers:
            macs, layers = count(arch)
            total += cfg.training.epochs * math.ceil(train / cfg.training.batch_size) * probe.train_step(
                cfg.training.batch_size, macs, layers) + 2 * probe.evaluate(evaluated, macs, layers)
        return total
    trained, member = _training_task(task)
    if trained is None:
        return None
    macs, layers = count(_arch_of(trained, member))
    passes = probe.evaluate(test, macs, layers)
    if stage == "analyze":
        images = min(params["images"], test)
        return (layers // 2 + params["samples"] + 1) * probe.evaluate(images, macs, layers)
    if stage == "export":
        return EXPORT_S + 2 * passes
    if stage == "quantize":
        return QUANTIZE_S + (1 + len(params["quantize"].precisions)) * passes
    if stage == "engine":
        gated = params.get("max_accuracy_drop") is not None
        return ENGINE_S * (1 + len(params["precisions"])) + (2 * passes if gated else 0.0)
    if stage == "benchmark":
        cfg = params["benchmark"]
        timing = (cfg.warmup + cfg.iterations) * sum(probe.infer_step(b, macs, layers) for b in cfg.batch_sizes)
        return 4 * (WORKER_START_S + timing + passes)  # PyTorch and three engines, as most profiles deploy
    return None


def estimate_plan(tasks, probe: Probe, data_cfg) -> dict[str, float | None]:
    """Seconds per task id (None where unknown). Counting a network not yet in the probe imports
    PyTorch; ``status`` passes only what is known (see ``known_only``)."""
    shape = data_shape(data_cfg)
    if shape is None:
        return {task.id: None for task in tasks}
    _, _, _, size, channels, classes = shape

    def count(arch: str) -> list[int]:
        return count_network(probe, arch, classes, channels, size)

    return {task.id: task_seconds(task, probe, shape, count) for task in tasks}


def known_only(tasks, probe: Probe, data_cfg) -> dict[str, float | None]:
    """``estimate_plan`` from the cached counts alone, without importing a framework: None for tasks
    whose networks were never counted on this machine."""
    shape = data_shape(data_cfg)
    if shape is None:
        return {task.id: None for task in tasks}
    _, _, _, size, channels, classes = shape

    class Unknown(Exception):
        pass

    def count(arch: str) -> list[int]:
        key = network_key(arch, classes, channels, size)
        if key not in probe.networks:
            raise Unknown
        return probe.networks[key]

    estimates = {}
    for task in tasks:
        try:
            estimates[task.id] = task_seconds(task, probe, shape, count)
        except Unknown:
            estimates[task.id] = None
    return estimates


def side_by_side_seconds(tasks, estimates: dict[str, float | None], jobs: int, alone) -> float | None:
    """The wall time of ``tasks`` (those to run) when the scheduler runs up to ``jobs`` of them at a
    time, each as long as its estimate alone, as on a GPU of its own: the scheduler's order replayed.
    A task starts once the tasks it needs among ``tasks`` are done; ``alone(task)`` runs with nothing
    beside it; a task with the key of one already done comes from the cache. None where an estimate
    is unknown."""
    if any(estimates.get(t.id) is None for t in tasks):
        return None
    to_run = {(t.stage, t.key) for t in tasks}
    waiting, running, done, now = list(tasks), [], set(), 0.0
    while waiting or running:
        for task in list(waiting):
            if any((n.stage, n.key) in to_run - done for n in task.needs.values()):
                continue
            if (task.stage, task.key) in done:
                waiting.remove(task)
                continue
            if any((r.stage, r.key) == (task.stage, task.key) for _, r in running):
                continue
            if len(running) >= jobs or (running and (alone(task) or any(alone(r) for _, r in running))):
                continue
            waiting.remove(task)
            running.append((now + estimates[task.id], task))
            if alone(task):
                break
        if not running:  # nothing can start: needs outside the plan
            return None
        now, finished = running.pop(min(range(len(running)), key=lambda i: running[i][0]))
        done.add((finished.stage, finished.key))
    return now


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
