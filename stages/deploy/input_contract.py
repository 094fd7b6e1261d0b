"""The input contract of an exported model, written into the ONNX file itself (``metadata_props``),
so that a client holding only the file feeds it what it was trained on: the layout and dtype it
takes, the image size, the normalization constants it was trained with, how an image is resized to it, the class
names, and which artifacts it came from. ``model.json`` beside it keeps the same and more."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "stochkd."


# The two forms a model can take its images in: normalized float (N, C, H, W), the network's own
# input; or raw pixels, uint8 (N, H, W, C), normalized inside the graph (export.preprocess: graph).
RAW_PIXELS = "uint8"
# The deployment tasks (export to benchmark) of a model's raw-pixel form are named MODEL_uint8.
RAW_PIXELS_SUFFIX = "_" + RAW_PIXELS


def contract(spec, class_names, sources: dict[str, str], raw_pixels: bool = False, view=None,
             stored_side: int | None = None) -> dict[str, str]:
    """The metadata entries for a model of ``spec`` (all strings, as ONNX stores them). ``view`` (an
    EvaluationView): how an image file is brought to the input size, as evaluation did it."""
    size, channels = spec.image_size, spec.in_channels
    if raw_pixels:
        form = {"input_layout": "NHWC", "input_dtype": RAW_PIXELS,
                "input_shape": json.dumps(["batch", size, size, channels]),
                "preprocessing": "none: raw pixels 0-255, RGB order for 3 channels; the graph computes "
                                 "(pixel / 255 - mean) / std per channel itself"}
    else:
        form = {"input_layout": "NCHW", "input_dtype": "float32",
                "input_shape": json.dumps(["batch", channels, size, size]),
                "preprocessing": "x = (pixel / 255 - mean) / std, per channel, RGB order for 3 channels"}
    return {
        **{f"{PREFIX}{key}": value for key, value in form.items()},
        f"{PREFIX}mean": json.dumps(list(spec.mean)),
        f"{PREFIX}std": json.dumps(list(spec.std)),
        f"{PREFIX}class_names": json.dumps(list(class_names)),
        f"{PREFIX}output": "logits (apply softmax for probabilities)",
        f"{PREFIX}arch": spec.arch,
        f"{PREFIX}sources": json.dumps(sources),
        **({f"{PREFIX}resize": json.dumps(view.entries(stored_side))} if view is not None else {}),
    }


def write_contract(path: Path, entries: dict[str, str]) -> None:
    """Set ``entries`` in the model's metadata, replacing earlier values of the same keys."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def read_contract(path: Path) -> dict[str, Any]:
    """The contract of a model, values decoded: what a client needs to feed it."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    raw = {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
    decoded = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value) if value[:1] in "[{" else value
        except ValueError:
            decoded[key] = value
    return decoded


def copy_contract(source: Path, target: Path, **extra: str) -> None:
    """A derived model (quantized, fp16) carries its source's contract, plus ``extra``."""
    import onnx

    entries = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props
               if p.key.startswith(PREFIX)}
    entries.update({f"{PREFIX}{k}": v for k, v in extra.items()})
    write_contract(target, entries)


def takes_raw_pixels(entries: dict[str, Any]) -> bool:
    """Whether a model with this (decoded) contract takes uint8 (N, H, W, C) pixels."""
    return entries.get("input_dtype") == RAW_PIXELS


def model_input(raw_pixels: bool, data, images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) ``images`` of ``data`` in the form a model takes them."""
    return np.ascontiguousarray(images) if raw_pixels else data.normalized(images)


def per_image_shape(raw_pixels: bool, spec) -> tuple[int, int, int]:
    """The input shape of one image, without the batch axis."""
    size, channels = spec.image_size, spec.in_channels
    return (size, size, channels) if raw_pixels else (channels, size, size)
