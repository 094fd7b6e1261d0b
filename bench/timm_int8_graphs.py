"""timm networks exported and quantized for TensorRT by Model Optimizer, checked as the TensorRT
backend checks a graph before its builder sees it; prints each network's problems (none expected)
and how closely its INT8 logits follow fp32 on random images.

    python bench/timm_int8_graphs.py                      # five common edge networks at 64 px
    python bench/timm_int8_graphs.py --size 224 resnet50 vit_small_patch16_224

Random weights and images: this checks graphs, not accuracy (the pipeline measures that on test data).
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

from stages.common.config import QuantizeConfig  # noqa: E402
from stages.deploy.backends.tensorrt_graph import tensorrt_int8_problems  # noqa: E402
from stages.deploy.onnx_runtime import make_session, run_batched  # noqa: E402
from stages.export import export_onnx  # noqa: E402
from stages.nets.architectures import build_model  # noqa: E402
from stages.quantize import quantize_int8  # noqa: E402

NETWORKS = ("mobilenetv3_large_100", "efficientnet_b0", "resnet18", "convnext_atto", "mobilenetv4_conv_small")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("networks", nargs="*", default=NETWORKS)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    print(f"{'network':28s} {'problems':>8s} {'int8/fp32 logit correlation':>28s} {'seconds':>8s}")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        for name in args.networks:
            started = time.perf_counter()
            torch.manual_seed(0)
            model = build_model(f"timm/{name}", 100, 3, p_last=0.8, image_size=args.size).eval()
            fp32, int8 = scratch / f"{name}.onnx", scratch / f"{name}.int8.onnx"
            export_onnx(model, torch.randn(2, 3, args.size, args.size), fp32, 18)
            images = np.random.default_rng(0).standard_normal((32, 3, args.size, args.size)).astype(np.float32)
            quantize_int8(fp32, int8, images, QuantizeConfig(int8_tool="modelopt"), "s8s8")
            problems = tensorrt_int8_problems(int8)
            a, b = run_batched(make_session(fp32), images), run_batched(make_session(int8), images)
            correlation = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
            print(f"{name:28s} {len(problems):8d} {correlation:28.3f} {time.perf_counter() - started:8.0f}")
            for problem in problems[:5]:
                print(f"    {problem}")


if __name__ == "__main__":
    main()
