"""A roofline estimate of a network's latency on a target that is not at hand.

Each convolution and linear layer is bounded by the target's published peak arithmetic throughput
or by its memory bandwidth, whichever is slower; the estimate is the sum over layers. It assumes
every layer runs at peak and moves its weights and activations once, and ignores kernel launches,
fusion and caches: a lower bound on latency, and an estimate, never a measurement.
"""

from __future__ import annotations

from typing import Any

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


def estimate_latency_ms(costs: list[dict[str, Any]], batch_size: int, precision: str, hardware: dict[str, Any]
                        ) -> dict[str, Any] | None:
    """The roofline latency of one batch, or None when the target publishes no peak for ``precision``."""
    peak_tops = hardware["peak_tops"].get(precision)
    if peak_tops is None:
        return None
    width = BYTES_PER_ELEMENT[precision]
    bandwidth = hardware["memory_bandwidth_gbs"] * 1e9
    total_s = compute_bound_s = 0.0
    for layer in costs:
        compute_s = 2 * layer["macs"] * batch_size / (peak_tops * 1e12)
        memory_s = (layer["weights"] + batch_size * (layer["inputs"] + layer["outputs"])) * width / bandwidth
        total_s += max(compute_s, memory_s)
        compute_bound_s += compute_s if compute_s >= memory_s else 0.0
    return {"latency_ms": 1e3 * total_s, "images_per_s": batch_size / total_s if total_s else float("inf"),
            "compute_bound_share": compute_bound_s / total_s if total_s else 0.0}
