"""Entropy calibration's threshold search: ONNX Runtime's own against the pipeline's, on the same
histograms, in one run. Both search the histograms of one calibration pass; the script checks
that they choose the same range for every tensor and prints the time each took.

    python bench/entropy_calibration.py [--arch resnet20] [--images 256] [--bins 2048]

The network has random weights (the search's cost depends on the histograms' sizes, not on
training), fed with random images at 32x32 with three channels, as CIFAR's are.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--bins", type=int, default=2048)
    args = parser.parse_args()

    import numpy as np
    import torch
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from stages.common.hardware import cpu_model
    from stages.deploy.entropy_calibration import use_fast_entropy
    from stages.export import export_onnx
    from stages.nets.architectures import build_model
    from stages.quantize import ArrayReader

    torch.manual_seed(0)
    images = np.random.default_rng(0).standard_normal((args.images, 3, 32, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "model.onnx"
        export_onnx(build_model(args.arch, 100, 3), torch.randn(2, 3, 32, 32), model, opset=18)
        found, seconds = {}, {}
        for search in ("ONNX Runtime", "stochkd-pipeline"):
            calibrator = create_calibrator(model, None, augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                                           calibrate_method=CalibrationMethod.Entropy,
                                           extra_options={"num_bins": args.bins, "num_quantized_bins": 128})
            with contextlib.redirect_stdout(io.StringIO()):
                calibrator.collect_data(ArrayReader("images", images))
                if search == "stochkd-pipeline":
                    use_fast_entropy(calibrator.collector)
                started = time.perf_counter()
                ranges = calibrator.compute_data()
            seconds[search] = time.perf_counter() - started
            found[search] = {name: tuple(float(v) for v in value.range_value) for name, value in ranges.data.items()}
    same = found["ONNX Runtime"] == found["stochkd-pipeline"]
    tensors = len(found["ONNX Runtime"])
    print(f"{args.arch}, {args.images} random images, {args.bins} histogram bins, {tensors} tensors; "
          f"{cpu_model()} ({platform.machine()}), torch {torch.__version__}")
    for search, spent in seconds.items():
        print(f"  {search:17s} {spent:7.2f} s ({spent / tensors:.3f} s a tensor)")
    print(f"  ratio: {seconds['ONNX Runtime'] / seconds['stochkd-pipeline']:.1f}x; "
          f"ranges {'identical for every tensor' if same else 'DIFFER'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
