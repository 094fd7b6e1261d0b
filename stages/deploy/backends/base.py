"""The interface every inference backend implements."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

Infer = Callable[[np.ndarray], np.ndarray]


class Backend(Protocol):
    name: str
    engine_suffix: str
    runtime_module: str  # imported before a benchmark's memory baseline is read

    def unavailable_reason(self, target: Any) -> str | None:
        """None when this machine can build and run engines for ``target``, else why not."""

    def build(self, onnx_path: Path, engine_path: Path, precision: str, target: Any, *,
              batch_sizes: tuple[int, ...], image_shape: tuple[int, int, int], shared: Path | None) -> dict[str, Any]:
        """Build the deployable engine for one precision; returns what was built (recorded), with
        ``compute_precision``: what its heavy layers really compute in. ``batch_sizes`` are those
        the engine must run; ``shared`` a folder for tuning data kept across builds."""

    def load(self, engine_path: Path, target: Any) -> Infer:
        """A function from a float32 (N, C, H, W) batch to logits."""
