"""A deployed model as a folder of its own: the engine (or ONNX model) for its target, ``deploy.json``
with its input contract, runtime, accuracy and latency, and ``model-card.md`` for people. ``predict``
reads only this folder: it runs where the folder and this package are, with no artifact store."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from stages.common.checksums import first_mismatch
from stages.common.errors import ArtifactError, DataError
from stages.deploy.input_contract import takes_raw_pixels
from stages.training.image_folders import IMAGE_SUFFIXES, as_8_bit

DEPLOY_FILE = "deploy.json"
CARD_FILE = "model-card.md"


def read_package(folder: Path) -> dict[str, Any]:
    try:
        package = json.loads((folder / DEPLOY_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{folder}: not a deployed model folder ({DEPLOY_FILE} missing or unreadable); make one "
                            f"with stochkd-pipeline deploy PROFILE -o {folder}") from exc
    problem = _malformed(package)
    if problem:
        raise ArtifactError(f"{folder / DEPLOY_FILE}: {problem} (edited by hand, or not written by deploy); deploy "
                            f"the model again with stochkd-pipeline deploy PROFILE -o {folder}")
    if not (folder / package["file"]).is_file():
        raise ArtifactError(f"{folder / package['file']}: the deployed model file is missing; deploy again")
    # A folder copied to a board by hand can arrive cut short; say so rather than let the runtime fail
    # on a damaged model. Folders deployed before the checksums were recorded have none to check.
    mismatch = first_mismatch(folder, package.get("files", {}))
    if mismatch:
        raise ArtifactError(f"{folder / mismatch[0]}: {mismatch[1].removeprefix('is ')} against {DEPLOY_FILE} "
                            f"(a copy cut short or changed); copy the folder again, or deploy it again")
    return package


def _malformed(package: Any) -> str | None:
    """What in a decoded deploy.json predict cannot use, or None: the keys it reads before it loads
    the model, so a damaged file is named rather than failing as a KeyError inside predict."""
    if not isinstance(package, dict):
        return "not a JSON object"
    for key, kind in (("file", str), ("backend", str), ("target", dict), ("input_contract", dict)):
        if not isinstance(package.get(key), kind):
            return f"{key!r} is missing or not a {'string' if kind is str else 'JSON object'}"
    files = package.get("files", {})
    if not (isinstance(files, dict) and all(isinstance(r, dict) and isinstance(r.get("bytes"), int)
                                            and isinstance(r.get("sha256"), str) for r in files.values())):
        return "'files' is not an object of each file's bytes and sha256"
    contract = package["input_contract"]
    shape = contract.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:])):
        return "input_contract.input_shape is missing or not four dimensions"
    if not isinstance(contract.get("class_names"), list):
        return "input_contract.class_names is missing or not a list"
    if not takes_raw_pixels(contract) and not all(isinstance(contract.get(k), list) for k in ("mean", "std")):
        return "input_contract.mean or std is missing or not a list"
    return None


def image_files(paths: list[Path]) -> list[Path]:
    """The images named, a folder standing for the images in it (sorted)."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such image or folder")
    if not files:
        raise DataError(f"{', '.join(map(str, paths))}: no images ({', '.join(IMAGE_SUFFIXES)}) there")
    return files


def load_image(path: Path, size: int, channels: int, resize: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """uint8 (size, size, channels) pixels of an image file, converted and resized where needed, and
    notes saying what was done. ``resize`` (the contract's): as evaluation saw its images, the centred
    square at the stored side, then its central crop_pct resized to ``size``; without it, the whole
    image resized (as data.image_size reads files)."""
    from PIL import Image, UnidentifiedImageError

    from stages.training.image_view import EvaluationView, centre_square

    notes = []
    try:
        with Image.open(path) as image:
            image.load()
            image, scaled = as_8_bit(image)
            if scaled:
                notes.append("scaled from 16 to 8 bits per pixel")
            mode = "L" if channels == 1 else "RGB"
            if image.mode != mode:
                notes.append(f"converted from {image.mode} to {mode}")
                image = image.convert(mode)
            if resize is not None:
                view = EvaluationView(size, resize["crop_pct"], resize["interpolation"])
                evaluated = view.of_image(centre_square(image, resize["stored_side"], view.interpolation))
                if evaluated is not image:
                    notes.append(f"centre {view.crop_pct:g} of its {min(image.size)}-pixel square resized to "
                                 f"{size}x{size} ({view.interpolation}), as evaluated")
                image = evaluated
            elif image.size != (size, size):
                notes.append(f"resized from {image.size[0]}x{image.size[1]} to {size}x{size}")
                image = image.resize((size, size), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read it as an image ({exc})") from exc
    return pixels.reshape(size, size, channels), notes


def preprocess(pixels: np.ndarray, contract: dict[str, Any]) -> np.ndarray:
    """uint8 (N, H, W, C) pixels as the model takes them: as they are, for a model that normalizes
    them in its graph; else float32 NCHW, normalized per its contract."""
    if takes_raw_pixels(contract):
        return np.ascontiguousarray(pixels)
    mean = np.asarray(contract["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(contract["std"], np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - mean) / std)


def load_runtime(folder: Path, package: dict[str, Any]):
    """The deployed model, run by its own backend: a function from a float32 batch to logits."""
    from stages.deploy.backends import get_backend

    target = json.loads(json.dumps(package["target"]), object_hook=lambda d: SimpleNamespace(**d))
    backend = get_backend(package["backend"])
    missing = backend.unavailable_reason(target)
    if missing:
        raise ArtifactError(f"{folder}: this model runs on {package['backend']}, which cannot run here ({missing})")
    return backend.load(folder / package["file"], target)


def predict(folder: Path, paths: list[Path], top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image."""
    from stages.deploy.benchmark_worker import batched_logits

    package = read_package(folder)
    contract = package["input_contract"]
    shape = contract["input_shape"][1:]
    size, channels = (shape[0], shape[2]) if takes_raw_pixels(contract) else (shape[1], shape[0])
    files = image_files(paths)
    loaded = [load_image(path, size, channels, contract.get("resize")) for path in files]
    infer = load_runtime(folder, package)
    scores = batched_logits(infer, preprocess(np.stack([pixels for pixels, _ in loaded]), contract), 256)
    scores = scores.astype(np.float32)
    probabilities = np.exp(scores - scores.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    names = contract["class_names"]
    results = []
    for path, (_, notes), row in zip(files, loaded, probabilities):
        best = top_classes(row, top_k)
        results.append({"image": str(path), "top": [{"class": names[i], "index": int(i),
                                                     "probability": float(row[i])} for i in best],
                        **({"notes": notes} if notes else {})})
    return results


def top_classes(probabilities: np.ndarray, k: int) -> np.ndarray:
    """The k most probable classes, best first. Tied classes (an int8 model's logits take few values)
    keep their order, so the first is the benchmark's argmax: an unstable sort orders them by the
    machine's sorting kernel, and the same image could be scored one class there and another here."""
    return np.argsort(-probabilities, kind="stable")[:k]


def model_card(package: dict[str, Any]) -> str:
    """The model card: what it is, how it was made, what it scores, how fast it runs, how to feed it."""
    contract = package["input_contract"]
    lines = [f"# {package['label']} ({package['arch']}), {package['precision']} on {package['target_name']}", "",
             f"Deployed by stochkd-pipeline from profile `{package['profile']}`. {package['why']}", "",
             "## What it is", "",
             f"- Network: {package['arch']}, {len(contract['class_names'])} classes, input "
             f"{'x'.join(str(d) for d in contract['input_shape'][1:])} ({contract['input_layout']}).",
             f"- Method: {package['method']}.",
             f"- Training: {package['training']}.",
             f"- Runtime: {package['backend']} ({package['file']}), computing in {package['compute_precision']}"
             + (f"; measured on a stand-in for {package['stand_in_for']}" if package.get("stand_in_for") else "") + ".",
             "", "## What it scores", "",
             f"- Top-1 on the test split at {package['precision']}: {100 * package['test_accuracy']:.2f} %"
             + (f" ({package['drop_from_fp32_points']:+.2f} points against fp32)."
                if package.get("drop_from_fp32_points") is not None else "."), "",
             "| batch | p50 ms | p99 ms | images/s | peak memory MB |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['batch_size']} | {r['latency_p50_ms']:.3f} | {r['latency_p99_ms']:.3f} | "
              f"{r['throughput_images_per_s']:.0f} | {r['peak_memory_mb']:.1f} |" for r in package["latency"]]
    lines += ["", f"Measured on {package['machine']}.", "", "## How to feed it", "",
              f"- Input `{package['input_name']}`: {contract['input_dtype']} {contract['input_layout']}, "
              f"{contract['preprocessing']}.",
              f"- mean {contract['mean']}, std {contract['std']} (as it was trained"
              + ("; the graph applies them itself)." if takes_raw_pixels(contract) else ")."),
              *([f"- Images: the centred square, its central {contract['resize']['crop_pct']:g} resized to "
                 f"{contract['input_shape'][1 if takes_raw_pixels(contract) else 2]} pixels "
                 f"({contract['resize']['interpolation']}), as the test images were evaluated; predict does it."]
                if contract.get("resize") else []),
              f"- Output: {contract['output']}.", "- `stochkd-pipeline predict {this folder} IMAGE...` runs it.",
              "", "## Versions", "", *[f"- {k} {v}" for k, v in sorted(package["versions"].items())], ""]
    return "\n".join(lines)
