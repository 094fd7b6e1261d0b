"""What TensorRT will be fed, checked on the ONNX graph before any builder sees it: an INT8 model
for TensorRT must be explicit symmetric int8 Q/DQ that its ONNX parser takes and its fusions expect.
Plain ONNX, so it runs (and is tested) on machines without TensorRT."""

from __future__ import annotations

from pathlib import Path


def tensorrt_input_problems(model_path: Path) -> list[str]:
    """uint8 graph inputs that feed anything but a Cast: TensorRT takes uint8 only as a network input
    cast to float at once; no other layer, not even a transpose, accepts it (TensorRT issue 3985)."""
    import onnx
    from onnx import TensorProto

    graph = onnx.load(str(model_path), load_external_data=False).graph
    problems = []
    for tensor in graph.input:
        if tensor.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        for node in graph.node:
            if tensor.name in node.input and node.op_type != "Cast":
                problems.append(f"uint8 input {tensor.name} feeds {node.op_type} node {node.name} (TensorRT needs "
                                f"it cast to float first)")
    return problems


def tensorrt_int8_problems(model_path: Path) -> list[str]:
    """Every way the Q/DQ graph at ``model_path`` departs from what TensorRT takes; empty if none."""
    import onnx
    from onnx import TensorProto, numpy_helper

    graph = onnx.load(str(model_path)).graph
    inits = {i.name: i for i in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = {}
    for consumer in graph.node:
        for name in consumer.input:
            consumers.setdefault(name, []).append(consumer)
    problems = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        data = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and data is not None and data.data_type != TensorProto.INT8:
            problems.append(f"{node.name}: dequantizes {TensorProto.DataType.Name(data.data_type)} data "
                            f"(TensorRT's parser dequantizes only int8; keep biases in float)")
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zero is not None and (zero.data_type != TensorProto.INT8 or numpy_helper.to_array(zero).any()):
            problems.append(f"{node.name}: zero point is not int8 0 (TensorRT takes symmetric int8 only)")
        scale = inits.get(node.input[1])
        if data is not None and scale is not None and numpy_helper.to_array(scale).size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            expected = output_channel_axis(node, consumers, len(data.dims))
            if expected is not None and axis % len(data.dims) != expected:
                problems.append(f"{node.name}: per-channel weight scales on axis {axis}, not {expected} (output "
                                f"channels)")
    for output in graph.output:
        producer = producers.get(output.name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            problems.append(f"output {output.name} is quantized (the logits should stay float)")
    for node in graph.node:
        if node.op_type != "Add":
            continue
        variable = [i for i in node.input if i not in inits]
        # TensorRT fuses a residual Add into the convolution before it when the other (skip) input is
        # quantized; ONNX Runtime's quantizer quantizes both inputs, Model Optimizer the skip only. A
        # transformer's residual Adds follow linear layers, which that fusion does not concern.
        kinds = [producers[i].op_type if i in producers else None for i in variable]
        after_convolution = any(kind in ("Conv", "BatchNormalization") for kind in kinds)
        if len(variable) == 2 and after_convolution and "DequantizeLinear" not in kinds:
            problems.append(f"{node.name}: residual Add with no Q/DQ on its skip input (TensorRT cannot fuse it "
                            f"into the convolution in int8)")
    return problems


def output_channel_axis(node, consumers: dict[str, list], rank: int) -> int | None:
    """The axis of a weight's output channels, read from the layer its Q/DQ pair feeds: 0 for a
    convolution's (out, in, kh, kw) and a Gemm's transposed (out, in); the last for a MatMul's (in, out)
    weights, as a transformer's linear layers export. None where the layer is not one of those."""
    seen = node
    while seen.op_type in ("QuantizeLinear", "DequantizeLinear"):
        following = consumers.get(seen.output[0], [])
        if len(following) != 1:
            return None
        seen = following[0]
    if seen.op_type == "Conv":
        return 0
    if seen.op_type == "ConvTranspose":
        return 1
    if seen.op_type == "MatMul":
        return rank - 1
    if seen.op_type == "Gemm":
        transposed = next((a.i for a in seen.attribute if a.name == "transB"), 0)
        return 0 if transposed else 1
    return None
