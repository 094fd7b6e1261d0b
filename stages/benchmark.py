"""Stage 6: latency, throughput, memory, size and accuracy of everything deployed for one model.

Each artifact (PyTorch fp32 eager, then one engine per precision) is measured in a fresh process
(``stages.deploy.benchmark_worker``) so that peak memory belongs to that artifact alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from stages.common.errors import ArtifactError
from stages.common.hardware import machine, package_versions
from stages.deploy.backends.tensorrt_settings import check_batch_covered, recorded_batch_ranges
from stages.nets.checkpoint import WEIGHTS, load_model, read_spec
from stages.context import StageContext
from stages.training.data import load_dataset
from stages.engine import ENGINES_FILE
from stages.deploy.input_contract import RAW_PIXELS, model_input
from stages.nets.measure import count_parameters, layer_costs
from stages.deploy.power import power_state

RESULTS_FILE = "results.json"
# Other processes' CPU time, as a share of the machine's cores, above which a timing is disturbed.
DISTURBED_SHARE = 0.10


def disturbed_row(row: dict) -> bool:
    """Whether other processes took more than DISTURBED_SHARE of the cores, or of the GPU, while
    this row was timed."""
    return max(row.get("other_cpu_share", 0.0), row.get("other_gpu_share", 0.0)) > DISTURBED_SHARE


def disturbed(result: dict) -> bool:
    return any(disturbed_row(row) for row in result["latency"])


def measured_undisturbed(spec: dict, scratch: Path, label: str) -> dict:
    """One measurement; where another process took the cores while it was timed, once more (marked
    ``rerun``). The rows of a second disturbed one are flagged in the results."""
    result = run_worker(spec, scratch, label)
    if disturbed(result):
        result = {**run_worker(spec, scratch, label), "rerun": True}
    return result


def run_worker(spec: dict, scratch: Path, label: str) -> dict:
    spec_path, result_path = scratch / f"{label}.spec.json", scratch / f"{label}.result.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "stages.deploy.benchmark_worker", str(spec_path), str(result_path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArtifactError(f"benchmark of {label} failed: {tail}")
    return json.loads(result_path.read_text())


def benchmark_model(ctx: StageContext) -> dict:
    cfg, target, data_cfg = ctx.params["benchmark"], ctx.params["target"], ctx.params["data"]
    model_folder = ctx.inputs["model"].model_folder(ctx.params.get("member"))
    engines_input = ctx.inputs["engines"]
    spec = read_spec(model_folder)
    data = load_dataset(data_cfg).with_normalization(spec.mean, spec.std)
    model = load_model(model_folder, spec)
    parameters = count_parameters(model)
    costs = layer_costs(model, (spec.in_channels, spec.image_size, spec.image_size))
    macs = sum(layer["macs"] for layer in costs)
    threads = target.threads or os.cpu_count() or 1
    built = json.loads(engines_input.file(ENGINES_FILE).read_text())
    raw = built.get("input") == RAW_PIXELS
    stand_in = engines_input.metrics.get("missing")
    common = {"batch_sizes": list(cfg.batch_sizes), "warmup": cfg.warmup, "iterations": cfg.iterations,
              "eval_batch_size": cfg.eval_batch_size, "threads": threads,
              "cpu_affinity": list(cfg.cpu_affinity) if cfg.cpu_affinity else None}
    torch_device = "cuda" if target.on_gpu and not stand_in and _cuda_available() else "cpu"
    # The PyTorch reference of a raw-pixel form is the float form's: measured there, not twice.
    candidates = [] if raw else [("pytorch", "fp32", "fp32", {"kind": "pytorch", "model_folder": str(model_folder),
                                                              "device": torch_device}, model_folder / WEIGHTS)]
    for precision, engine in built["engines"].items():
        batch_ranges = recorded_batch_ranges(engine)
        for batch in cfg.batch_sizes if batch_ranges else ():
            check_batch_covered(batch, batch_ranges, str(engines_input.file(engine["file"])))
        candidates.append((built["backend"], precision, engine["compute_precision"], {
            "kind": "engine", "backend": built["backend"], "engine_path": str(engines_input.file(engine["file"])),
            "target": built["target"]}, engines_input.file(engine["file"])))
    rows = []
    with tempfile.TemporaryDirectory() as scratch_name, ctx.progress(
            f"benchmark {ctx.variant}", len(candidates)) as advance:
        scratch = Path(scratch_name)
        # The images in the form the engines take: normalized floats, or raw pixels.
        np.save(scratch / "images.npy", model_input(raw, data, data.x_test))
        np.save(scratch / "labels.npy", data.y_test)
        common.update(test_images=str(scratch / "images.npy"), test_labels=str(scratch / "labels.npy"))
        for runtime, precision, computed_in, worker_spec, file in candidates:
            label = f"{ctx.variant}-{runtime}-{precision}"
            advance(0, f"benchmark {label}")
            result = measured_undisturbed({**common, **worker_spec}, scratch, label)
            for timing in result["latency"]:
                rows.append({
                    "model": ctx.variant, "arch": spec.arch, "runtime": runtime, "precision": precision,
                    "compute_precision": computed_in, **timing, "test_accuracy": result["test_accuracy"],
                    "peak_memory_mb": result["peak_memory_mb"], "peak_rss_mb": result["peak_rss_mb"],
                    **({"device_memory_mb": result["device_memory_mb"]} if result.get("device_memory_mb") else {}),
                    "file_size_bytes": file.stat().st_size, "parameters": parameters, "macs": macs,
                    "threads": threads, "device": result["device"],
                    **({"stand_in_for": target.backend} if stand_in and runtime != "pytorch" else {}),
                    **({"input": RAW_PIXELS} if raw else {}),
                    **({"disturbed": True} if disturbed_row(timing) else {}),
                    **({"rerun_after_disturbance": True} if result.get("rerun") else {})})
            advance(1)
    (ctx.output / RESULTS_FILE).write_text(json.dumps(rows, indent=1))
    return {"rows": rows, "machine": machine(), "versions": package_versions(), "threads": threads,
            "target": target.name, "model_spec": asdict(spec), "layer_costs": costs, "power": power_state(),
            **({"target_backend_missing": stand_in} if stand_in else {})}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
