"""INT8 accuracy of trained models by quantizer and calibration method, scored on the full test set
with ONNX Runtime on this CPU (what the quantize stage's gate uses; TensorRT itself is not needed to
score a Q/DQ graph). It chooses the defaults for TensorRT targets by measurement.

    python bench/int8_for_tensorrt.py --data ../shared/datasets/cifar100.npz \\
        --model artifacts/store/teacher/<key> [--model ...] [--calibration-images 1024]

Each model is exported to ONNX, quantized by every combination below from the same class-balanced
training images, and every INT8 graph is checked for what TensorRT's parser and fusions need.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

VARIANTS = [  # (label, int8 tool, flavour, calibration method)
    ("ONNX Runtime, CPU flavour u8s8, minmax", "onnxruntime", "u8s8", "minmax"),
    ("ONNX Runtime, s8s8, minmax", "onnxruntime", "s8s8", "minmax"),
    ("ONNX Runtime, s8s8, entropy (2048 bins)", "onnxruntime", "s8s8", "entropy"),
    ("ONNX Runtime, s8s8, percentile 99.999", "onnxruntime", "s8s8", "percentile"),
    ("Model Optimizer, max", "modelopt", "s8s8", "minmax"),
    ("Model Optimizer, entropy", "modelopt", "s8s8", "entropy"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-100 .npz")
    parser.add_argument("--dataset", default="cifar100")
    parser.add_argument("--model", action="append", required=True, help="a trained model's folder")
    parser.add_argument("--calibration-images", type=int, default=1024)
    args = parser.parse_args()

    import torch

    from stages.common.config import DataConfig, QuantizeConfig
    from stages.deploy.backends.tensorrt_graph import tensorrt_int8_problems
    from stages.nets.checkpoint import load_model, read_spec
    from stages.training.data import balanced_subset, load_dataset
    from stages.export import export_onnx
    from stages.deploy.onnx_runtime import make_session, run_batched
    from stages.quantize import quantize_int8

    data = load_dataset(DataConfig(dataset=args.dataset, root=args.data))
    test_images, labels = data.normalized(data.x_test), data.y_test
    chosen = balanced_subset(data.y_train, args.calibration_images, data.num_classes)
    calibration = data.normalized(data.x_train[chosen])

    def accuracy(path: Path) -> float:
        return float((run_batched(make_session(path), test_images).argmax(1) == labels).mean())

    print(f"machine: {platform.node()} ({platform.processor() or platform.machine()}); test images: {len(labels)}; "
          f"calibration images: {len(chosen)} (class-balanced, seed 0)\n")
    print("| model | quantizer | test accuracy % | vs fp32 (points) | TensorRT graph problems | quantize s |")
    print("|---|---|---|---|---|---|")
    for folder in map(Path, args.model):
        spec = read_spec(folder)
        with tempfile.TemporaryDirectory() as scratch_name:
            scratch = Path(scratch_name)
            source = scratch / "fp32.onnx"
            export_onnx(load_model(folder, spec), torch.randn(2, spec.in_channels, spec.image_size, spec.image_size),
                        source, 18)
            fp32 = accuracy(source)
            name = f"{spec.arch} {folder.name[:8]}"
            print(f"| {name} | fp32 | {100 * fp32:.2f} | | | |", flush=True)
            for label, tool, flavour, method in VARIANTS:
                target = scratch / f"{tool}-{flavour}-{method}.onnx"
                start = time.perf_counter()
                quantize_int8(source, target, calibration, QuantizeConfig(int8_tool=tool, calibration_method=method),
                              flavour)
                took = time.perf_counter() - start
                int8 = accuracy(target)
                problems = len(tensorrt_int8_problems(target))
                print(f"| {name} | {label} | {100 * int8:.2f} | {100 * (int8 - fp32):+.2f} | {problems} | {took:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
