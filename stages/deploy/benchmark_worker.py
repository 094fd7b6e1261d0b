"""Measures one artifact in a process of its own, so its peak memory is its own.

Run as ``python -m stages.deploy.benchmark_worker SPEC.json RESULT.json``. The spec names the artifact
(a PyTorch model folder, or an engine and its backend), the test arrays and the timing settings.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def resident_mb() -> float:
    return _status_mb("VmRSS:")


def peak_resident_mb() -> float:
    # VmHWM, not ru_maxrss: on Linux ru_maxrss carries over the parent's peak through fork and exec.
    return _status_mb("VmHWM:")


def import_runtime(spec: dict) -> None:
    """Import the runtime first, so the memory it takes itself is not counted as the model's."""
    import importlib

    if spec["kind"] == "pytorch":
        importlib.import_module("torch")
        importlib.import_module("stages.nets.checkpoint")
    else:
        from stages.deploy.backends import get_backend

        importlib.import_module(get_backend(spec["backend"]).runtime_module)


def load_infer(spec: dict):
    """A function from a batch, in the form the model takes (see stages.deploy.input_contract), to logits."""
    if spec["kind"] == "pytorch":
        import torch

        from stages.nets.checkpoint import load_model

        torch.set_num_threads(spec["threads"])
        device = torch.device(spec.get("device", "cpu"))
        model = load_model(Path(spec["model_folder"])).to(device=device, memory_format=torch.channels_last)

        def infer(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
                return model(x).cpu().numpy()  # the copy back waits for the GPU

        infer.device = device.type
        if device.type == "cuda":
            infer.device_memory_mb = lambda: torch.cuda.max_memory_allocated() / (1 << 20)
        return infer
    from stages.deploy.backends import get_backend

    target = _namespace(spec["target"])
    return get_backend(spec["backend"]).load(Path(spec["engine_path"]), target)


def _namespace(value):
    """A target's settings as attributes, nested sections included (``target.tensorrt.dla_core``),
    without importing the profile schema into the measuring process."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    return value


class MachineLoad:
    """The CPU time other processes spent while a measurement ran, as a share of the machine's
    cores (from /proc/stat, less this process's own time): a latency measured next to a busy
    neighbour measures the neighbour too. ``share`` is None where /proc/stat cannot be read.

    /proc/stat counts in clock ticks (10 ms on most kernels), each CPU's count landing a tick either
    side of the truth, so a window of a few milliseconds would read a tick of rounding as hundreds of
    per cent of the cores. ``share`` counts only what lies beyond one tick per CPU this process may
    run on, and one for its own clock: what other processes certainly took.

    On a GPU (``device`` cuda), ``gpu_share`` is what other processes used of its streaming
    multiprocessors meanwhile: NVML's per-process utilisation samples taken since the start, the
    mean of each other process's, summed. None where NVML gives no such samples."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def __enter__(self) -> "MachineLoad":
        self.start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        # NVML stamps its samples in microseconds of the wall clock.
        self.gpu_since = int(time.time() * 1e6)
        self.share: float | None = None
        self.gpu_share: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        busy, own, wall = _busy_seconds(), _own_seconds(), time.perf_counter()
        if self.device == "cuda":
            self.gpu_share = other_gpu_share(self.gpu_since)
        if busy is None or self.start[0] is None:
            return
        import os

        rounding = (len(os.sched_getaffinity(0)) + 1) / os.sysconf("SC_CLK_TCK")
        others = max(0.0, (busy - self.start[0]) - (own - self.start[1]) - rounding)
        self.share = others / max(1e-9, (wall - self.start[2]) * (os.cpu_count() or 1))


def other_gpu_share(since_us: int) -> float | None:
    """The streaming-multiprocessor share other processes used on GPU 0 since ``since_us``."""
    import os

    from stages.deploy.power import nvml_handle

    nvml = nvml_handle()
    if nvml is None:
        return None
    pynvml, handle = nvml
    try:
        samples = pynvml.nvmlDeviceGetProcessUtilization(handle, since_us)
    except pynvml.NVMLError_NotFound:
        return 0.0  # no process was sampled busy since then
    except pynvml.NVMLError:
        return None  # not supported on this GPU or driver
    by_process: dict[int, list[int]] = {}
    for sample in samples:
        if sample.pid != os.getpid() and sample.timeStamp > since_us:
            by_process.setdefault(sample.pid, []).append(sample.smUtil)
    return sum(sum(values) / len(values) for values in by_process.values()) / 100.0


def _busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (not idle, not waiting for I/O)."""
    import os

    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    import os

    times = os.times()
    return times.user + times.system


def time_batches(infer, images: np.ndarray, batch_sizes, warmup: int, iterations: int) -> list[dict]:
    from stages.deploy.power import EnergyMeter

    rows = []
    for batch_size in batch_sizes:
        reps = -(-batch_size // len(images))
        batch = np.ascontiguousarray(np.concatenate([images] * reps)[:batch_size])
        for _ in range(warmup):
            infer(batch)
        stages_ms = getattr(infer, "timings", None)
        if stages_ms is not None:
            stages_ms.clear()
        times = np.empty(iterations)
        device = getattr(infer, "device", "cpu")
        with EnergyMeter(device) as meter, MachineLoad(device) as load:
            for i in range(iterations):
                start = time.perf_counter()
                infer(batch)
                times[i] = time.perf_counter() - start
        ms = times * 1e3
        extra = {}
        if stages_ms:
            # CUDA events for the copies and the GPU compute, host time for the enqueue: medians over
            # the timed runs.
            for name, column in zip(("h2d", "compute", "d2h", "enqueue"), np.array(stages_ms).T):
                extra[f"{name}_p50_ms"] = float(np.median(column))
        if load.share is not None:
            extra["other_cpu_share"] = load.share
        if load.gpu_share is not None:
            extra["other_gpu_share"] = load.gpu_share
        if meter.joules is not None:
            extra["energy_mj_per_image"] = 1e3 * meter.joules / (iterations * batch_size)
            extra["energy_source"] = meter.source
        rows.append({**extra,
            "batch_size": batch_size,
            "latency_p50_ms": float(np.percentile(ms, 50)),
            "latency_p90_ms": float(np.percentile(ms, 90)),
            "latency_p99_ms": float(np.percentile(ms, 99)),
            "latency_mean_ms": float(ms.mean()),
            "latency_std_ms": float(ms.std()),
            "throughput_images_per_s": float(batch_size / times.mean()),
        })
    return rows


def batched_logits(infer, images: np.ndarray, eval_batch_size: int) -> np.ndarray:
    """``infer`` over all ``images`` in batches. An engine with fixed optimization profiles (TensorRT)
    runs in batches it was built for; a last batch below its smallest is padded, and the padding's
    outputs dropped."""
    from stages.deploy.backends.tensorrt_settings import evaluation_batch

    step, low = evaluation_batch(getattr(infer, "batch_ranges", None) or [(1, eval_batch_size)], eval_batch_size)
    logits = []
    for start in range(0, len(images), step):
        chunk = np.ascontiguousarray(images[start:start + step])
        padded = np.concatenate([chunk, np.zeros((low - len(chunk), *chunk.shape[1:]), chunk.dtype)]) \
            if len(chunk) < low else chunk
        logits.append(np.asarray(infer(padded))[:len(chunk)])
    return np.concatenate(logits)


def predicted_classes(infer, images: np.ndarray, eval_batch_size: int) -> np.ndarray:
    """The class ``infer`` predicts for each image."""
    return batched_logits(infer, images, eval_batch_size).argmax(1)


def measure(spec: dict) -> dict:
    if spec.get("cpu_affinity"):
        import os

        os.sched_setaffinity(0, spec["cpu_affinity"])
    images = np.load(spec["test_images"], mmap_mode="r")
    labels = np.load(spec["test_labels"])
    timing_images = np.array(images[: max(spec["batch_sizes"])])
    import_runtime(spec)
    before = resident_mb()
    infer = load_infer(spec)
    loaded = resident_mb()
    latency = time_batches(infer, timing_images, spec["batch_sizes"], spec["warmup"], spec["iterations"])
    peak = peak_resident_mb()
    accuracy = float((predicted_classes(infer, images, spec["eval_batch_size"]) == labels).mean())
    device_memory = getattr(infer, "device_memory_mb", None)
    return {"latency": latency, "test_accuracy": accuracy, "threads": spec["threads"],
            "model_load_mb": loaded - before, "peak_memory_mb": peak - before, "peak_rss_mb": peak,
            "device": spec.get("device") or getattr(infer, "device", "cpu"),
            "device_memory_mb": device_memory() if device_memory else None}


def main(argv: list[str]) -> int:
    spec_path, result_path = (Path(a) for a in argv)
    result = measure(json.loads(spec_path.read_text()))
    result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
