"""NVIDIA Model Optimizer's ONNX PTQ in a process of its own.

Importing ``modelopt.onnx.quantization`` patches ONNX Runtime's calibrators for the whole process
(its ``ort_patching``), which breaks ONNX Runtime's own quantizer afterwards; a separate process
keeps the pipeline's ONNX Runtime as it is. Run as
``python -m stages.deploy.modelopt_quantize SOURCE OUTPUT CALIBRATION.npy METHOD [KEEP_FLOAT_NODE ...]``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys


def main(argv: list[str]) -> int:
    source, output, calibration_file, method, *keep_float = argv
    import numpy as np

    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        print(f"NVIDIA Model Optimizer is not installed here ({exc})", file=sys.stderr)
        return 3
    logging.getLogger("modelopt").setLevel(logging.WARNING)
    # Its progress bars and narration would drown the pipeline's own; errors still reach stderr.
    narration = io.StringIO()
    try:
        with contextlib.redirect_stdout(narration), contextlib.redirect_stderr(narration):
            quantize(onnx_path=source, quantize_mode="int8", calibration_data=np.load(calibration_file),
                     calibration_method=method, calibration_eps=["cpu"],
                     nodes_to_exclude=[f"^{re.escape(name)}$" for name in keep_float] or None,
                     output_path=output, log_level="WARNING")
    except Exception as exc:  # noqa: BLE001 - report whatever the tool raised, in one line
        print(narration.getvalue()[-2000:], file=sys.stderr)
        print(f"Model Optimizer failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
