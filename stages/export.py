"""Stage 3: export a trained network to ONNX with a dynamic batch axis, and check the export."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from typing import Iterator

import numpy as np
import torch

from stages.common.errors import ArtifactError, PipelineError, first_line
from stages.nets.checkpoint import SPEC, load_model, read_spec
from stages.context import StageContext
from stages.training.data import load_dataset
from stages.deploy.input_contract import contract, model_input, write_contract
from stages.deploy.onnx_runtime import make_session, run_batched
from stages.training.evaluation import accuracy

ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
RANDOM_OPS = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli",
              "Multinomial", "Dropout"}


EXPORTER_LOGGERS = ("torch.onnx", "onnxscript")


@contextlib.contextmanager
def held_exporter_logs() -> Iterator[list[logging.LogRecord]]:
    """The exporter's and its version converter's log records, held back from the terminal while it
    runs: a conversion it cannot do logs a whole traceback, which the stage turns into one line."""
    records: list[logging.LogRecord] = []
    holder = logging.Handler()
    holder.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]  # torch.onnx has a stderr handler
    for logger in loggers:
        logger.handlers, logger.propagate = [holder], False
    try:
        yield records
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path, opset: int) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter narrates its progress on stdout; the stage reports its own result instead.
    with contextlib.redirect_stdout(io.StringIO()), held_exporter_logs() as records:
        torch.onnx.export(model.eval(), (example,), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: batch}},
                          opset_version=opset, dynamo=True, external_data=False)
    # Below the opset it implements (18 in torch 2.x) the exporter converts, and where it cannot (no
    # Pad below 18, which the zero-padding shortcuts use) it keeps its own opset and only logs it.
    written = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                    if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        failures = [first_line(r.exc_info[1]).rsplit("failed: ", 1)[-1] for r in records if r.exc_info]
        reason = f": {failures[-1]}" if failures else ""
        raise PipelineError(f"export.opset = {opset}: PyTorch's ONNX exporter wrote opset {written} instead (it could "
                            f"not convert this network to {opset}{reason}); set export.opset to {written}, or "
                            f"another opset it converts to")
    for record in records:  # a clean export's warnings, shown as they would have been
        logging.getLogger(record.name).handle(record)


class RawPixels(torch.nn.Module):
    """A network that takes uint8 (N, H, W, C) pixels: the layout change, the cast and the
    normalization become the graph's first operators, which an engine builder can fuse."""

    def __init__(self, network: torch.nn.Module, mean, std) -> None:
        super().__init__()
        self.network = network
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply and one subtraction.
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # named as the exporter's dynamic_shapes name it
        # Cast first: TensorRT takes a uint8 input only straight into a cast to float.
        return self.network(x.float().permute(0, 3, 1, 2) * self.scale - self.shift)


def read_pixels_through_the_cast(path) -> None:
    """Rewire every other reader of a uint8 graph input (the exporter's Shape for the batch size) to
    the Cast's float output, which has the same shape: TensorRT takes a uint8 input only straight
    into a cast to float (stages.deploy.backends.tensorrt_graph.tensorrt_input_problems)."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path))
    graph = model.graph
    for tensor in graph.input:
        if tensor.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        cast = next((n for n in graph.node if n.op_type == "Cast" and tensor.name in n.input), None)
        if cast is None:
            continue  # nothing to read through; tensorrt_input_problems names the readers
        for node in graph.node:
            if node is not cast:
                node.input[:] = [cast.output[0] if name == tensor.name else name for name in node.input]
    onnx.save(model, str(path))


def export_model(ctx: StageContext) -> dict:
    import onnx

    cfg, data_cfg = ctx.params["export"], ctx.params["data"]
    source = ctx.inputs["model"].model_folder(ctx.params.get("member"))
    spec = read_spec(source)
    model = load_model(source, spec)
    data = load_dataset(data_cfg).with_normalization(spec.mean, spec.std)
    path = ctx.output / ONNX_FILE
    raw = cfg.preprocess == "graph"
    exported = RawPixels(model, spec.mean, spec.std) if raw else model
    export_onnx(exported, torch.from_numpy(model_input(raw, data, data.x_test[:2])), path, cfg.opset)
    if raw:
        read_pixels_through_the_cast(path)
    shutil.copy(source / SPEC, ctx.output / SPEC)
    write_contract(path, contract(spec, data.class_names, {"trained": ctx.inputs["model"].path.name,
                                                           **({"member": ctx.params["member"]}
                                                              if ctx.params.get("member") else {})},
                                  raw_pixels=raw, view=data.view, stored_side=data.stored_side))

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    random_ops = sorted({n.op_type for n in graph.graph.node} & RANDOM_OPS)
    if random_ops:
        raise ArtifactError(f"{path}: the exported graph holds random operations {random_ops}; "
                            f"the network must export in evaluation mode")
    images = data.normalized(data.x_test)
    onnx_logits = run_batched(make_session(path), model_input(raw, data, data.x_test))
    with torch.inference_mode():
        torch_logits = torch.cat([model(torch.from_numpy(chunk)) for chunk in np.array_split(
            images, max(1, len(images) // 256))]).numpy()
    max_abs_diff = float(np.abs(onnx_logits - torch_logits).max())
    agreement = float((onnx_logits.argmax(1) == torch_logits.argmax(1)).mean())
    # Float error grows with the logits' size: the tolerance holds for logits up to 1 in size and
    # scales with them beyond, so a network with huge logits is not called unfaithful for rounding.
    scale = max(1.0, float(np.abs(torch_logits).max()))
    if max_abs_diff > cfg.tolerance * scale:
        raise ArtifactError(f"{path}: ONNX Runtime differs from PyTorch by {max_abs_diff:.2e} on logits up to "
                            f"{scale:.2e} in size (export.tolerance = {cfg.tolerance}, relative beyond 1); the "
                            f"export is not faithful")
    return {
        "opset": cfg.opset,
        "size_bytes": path.stat().st_size,
        "max_abs_diff": max_abs_diff,
        "max_abs_logit": scale,
        "top1_agreement": agreement,
        "onnx_test_accuracy": accuracy(onnx_logits, data.y_test),
        "pytorch_test_accuracy": accuracy(torch_logits, data.y_test),
        "checker": "passed",
        "operators": sorted({n.op_type for n in graph.graph.node}),
        "input": "uint8 NHWC pixels" if raw else "float32 NCHW, normalized",
    }
