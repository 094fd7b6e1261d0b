"""Deployment: ONNX Runtime sessions, the backends (ONNX Runtime, TensorRT), the input contract,
the benchmark worker, power and energy meters, the roofline estimate, budget verdicts, deployed folders."""
