"""A strict stand-in for the ``tensorrt`` module (the Python bindings of 10.3, 10.13 or 11.4), for
machines without it.

It has only the classes, methods, attributes and argument names of the real bindings that the
pipeline is allowed to use, returns what they return (booleans, None on failure, IHostMemory), and
fails on anything else: an unknown attribute raises AttributeError (``__slots__``), a wrong argument
name raises TypeError. Its behaviour follows TensorRT's documentation and reported issues:

- the ONNX parser dequantizes only INT8 (an int32 bias behind a DequantizeLinear fails to parse,
  NVIDIA/TensorRT issues 3360 and 4542) and takes only symmetric int8 Q/DQ (zero points 0);
- the engine inspector reports "N/A due to dynamic shapes" as every format of an engine with dynamic
  input shapes unless an execution context with the input shape set is attached;
- quantized convolutions read INT8 but write fp16, so only their inputs show the precision;
- fp32 convolutions use TF32 kernels unless BuilderFlag.TF32 is cleared;
- a timing cache written on another device is refused by ``set_timing_cache``, after which
  ``get_timing_cache`` returns None;
- the DLA runs layers only with static shapes (min = opt = max), and on 10.x only in a weakly typed
  network with the FP16 flag; otherwise, with GPU fallback, every layer silently goes to the GPU.

``DEVICE`` names the device the builder runs on; tests change it to play another GPU. The version it
plays is ``$STOCHKD_TENSORRT_STANDIN`` (10.13 unless set), and its names are that version's: 11.x has
no FP16, INT8 or BF16 builder flag (networks are strongly typed, ``STRONGLY_TYPED`` is 0 and changes
nothing), and ``tests/stages/deploy/test_tensorrt_api.py`` checks every name here against the real
bindings of each version.
"""

from __future__ import annotations

import enum
import json
import os

import numpy as np

VERSION_VARIABLE = "STOCHKD_TENSORRT_STANDIN"
__version__ = {"10.3": "10.3.0", "10.13": "10.13.3.9", "11.4": "11.4.0.106"}[
    os.environ.get(VERSION_VARIABLE) or "10.13"]
MAJOR = int(__version__.split(".")[0])
DEVICE = "sm87-16sm-62841mib"  # a Jetson AGX Orin 64GB, as the pipeline keys it
NUM_DLA_CORES = 2
calls: list[str] = []  # what was called, in order, for tests that check an order


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4


class Logger(ILogger):
    __slots__ = ("min_severity",)
    Severity = ILogger.Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(ILogger.Severity)

    def __init__(self, min_severity=ILogger.Severity.WARNING):
        self.min_severity = min_severity


if MAJOR >= 11:
    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 0  # the only mode: the flag changes nothing
else:
    class NetworkDefinitionCreationFlag(enum.IntEnum):  # type: ignore[no-redef]
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1


class ProfilingVerbosity(enum.IntEnum):
    LAYER_NAMES_ONLY = 0
    NONE = 1
    DETAILED = 2


if MAJOR >= 11:  # precision comes from the network's types alone
    class BuilderFlag(enum.IntEnum):
        DEBUG = 2
        GPU_FALLBACK = 3
        REFIT = 4
        DISABLE_TIMING_CACHE = 5
        TF32 = 6
else:
    class BuilderFlag(enum.IntEnum):  # type: ignore[no-redef]
        FP16 = 0
        INT8 = 1
        DEBUG = 2
        GPU_FALLBACK = 3
        REFIT = 4
        DISABLE_TIMING_CACHE = 5
        TF32 = 6


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class LayerInformationFormat(enum.IntEnum):
    ONELINE = 0
    JSON = 1


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5


def nptype(trt_type):
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
            DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}[trt_type]


class IHostMemory:
    """Serialized data; supports the buffer protocol in the real bindings (``bytes(memory)``)."""
    __slots__ = ("_data",)

    def __init__(self, data: bytes):
        self._data = data

    def __bytes__(self):
        return self._data

    @property
    def nbytes(self):
        return len(self._data)


class ITensor:
    __slots__ = ("name", "_dtype")

    def __init__(self, name, dtype=DataType.FLOAT):
        self.name, self._dtype = name, dtype

    def _set_dtype(self, dtype):
        self._dtype = dtype

    # Writable in 10.x; 11.x's strongly typed networks take types from the graph alone.
    dtype = property(lambda self: self._dtype, _set_dtype if MAJOR < 11 else None)


class ILayer:
    __slots__ = ("name", "_type")

    def __init__(self, name, kind):
        self.name, self._type = name, kind

    @property
    def type(self):
        return self._type


class INetworkDefinition:
    __slots__ = ("_flags", "_inputs", "_layers", "_precision", "_parsed")

    def __init__(self, flags):
        self._flags, self._inputs, self._layers, self._precision, self._parsed = flags, [], [], None, False

    @property
    def flags(self):
        return self._flags

    @property
    def num_layers(self):
        return len(self._layers)

    @property
    def num_inputs(self):
        return len(self._inputs)

    def get_layer(self, index):
        return self._layers[index]

    def get_input(self, index):
        return self._inputs[index]


class ParserError:
    __slots__ = ("_desc",)

    def __init__(self, desc):
        self._desc = desc

    def desc(self):
        return self._desc

    def __str__(self):
        return self._desc


class OnnxParser:
    __slots__ = ("_network", "_errors")

    def __init__(self, network, logger):
        if not isinstance(network, INetworkDefinition) or not isinstance(logger, Logger):
            raise TypeError("OnnxParser(network: INetworkDefinition, logger: ILogger)")
        self._network, self._errors = network, []

    @property
    def num_errors(self):
        return len(self._errors)

    def get_error(self, index):
        return self._errors[index]

    def parse(self, model, path=None):
        import onnx
        from onnx import TensorProto, numpy_helper

        if not isinstance(model, (bytes, bytearray)):
            raise TypeError("parse(model: buffer, path: str = None)")
        graph = onnx.load_from_string(bytes(model)).graph
        inits = {i.name: i for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in inits \
                    and inits[node.input[0]].data_type not in (TensorProto.INT8,):
                self._errors.append(ParserError(
                    f"In node {node.name} (parseGraph): INVALID_NODE: Assertion failed: ... DequantizeLinear "
                    f"input of type {TensorProto.DataType.Name(inits[node.input[0]].data_type)} is not supported"))
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                zero = inits.get(node.input[2])
                if zero is not None and (zero.data_type != TensorProto.INT8 or numpy_helper.to_array(zero).any()):
                    self._errors.append(ParserError(f"In node {node.name}: TensorRT supports only symmetric int8 "
                                                    f"quantization (zero point of type int8 and value 0)"))
        raw = [i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.UINT8]
        for node in graph.node:
            if any(name in node.input for name in raw) and node.op_type != "Cast":
                # TensorRT takes a uint8 network input only straight into a cast to float.
                self._errors.append(ParserError(f"In node {node.name} ({node.op_type}): UINT8 input must be "
                                                f"consumed by a Cast layer"))
        if self._errors:
            return False
        network = self._network
        network._inputs = [ITensor(i.name, DataType.UINT8 if i.name in raw else DataType.FLOAT)
                           for i in graph.input if i.name not in inits]
        network._layers = [ILayer(n.name or n.op_type, n.op_type) for n in graph.node
                           if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
        if any(n.op_type == "QuantizeLinear" for n in graph.node):
            network._precision = "int8"
        elif any(i.data_type == TensorProto.FLOAT16 for i in graph.initializer):
            network._precision = "fp16"
        else:
            network._precision = "fp32"
        network._parsed = True
        return True


class IOptimizationProfile:
    __slots__ = ("_shapes",)

    def __init__(self):
        self._shapes = {}

    def set_shape(self, input, min, opt, max):  # noqa: A002 - the bindings' argument names
        if not (len(min) == len(opt) == len(max)) or not all(a <= b <= c for a, b, c in zip(min, opt, max)):
            raise ValueError("min <= opt <= max must hold in every dimension")
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    __slots__ = ("_device", "_entries")

    def __init__(self, device, entries):
        self._device, self._entries = device, entries

    def serialize(self):
        return IHostMemory(json.dumps({"device": self._device, "version": __version__,
                                       "entries": self._entries}).encode())

    def combine(self, input_cache, ignore_mismatch):
        if input_cache._device != self._device and not ignore_mismatch:
            return False
        self._entries += input_cache._entries
        return True

    def reset(self):
        self._entries = 0
        return True


class IBuilderConfig:
    __slots__ = ("_pools", "builder_optimization_level", "profiling_verbosity", "_flags", "_profiles",
                 "default_device_type", "DLA_core", "_timing_cache")

    def __init__(self):
        self._pools, self.builder_optimization_level = {}, 3
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self._flags = {BuilderFlag.TF32}  # on by default, as in TensorRT
        self._profiles, self.default_device_type, self.DLA_core, self._timing_cache = [], DeviceType.GPU, -1, None

    def set_memory_pool_limit(self, pool, pool_size):
        self._pools[MemoryPoolType(pool)] = int(pool_size)

    def set_flag(self, flag):
        self._flags.add(BuilderFlag(flag))

    def clear_flag(self, flag):
        self._flags.discard(BuilderFlag(flag))

    def get_flag(self, flag):
        return BuilderFlag(flag) in self._flags

    def add_optimization_profile(self, profile):
        if not isinstance(profile, IOptimizationProfile) or not profile._shapes:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self):
        return len(self._profiles)

    def create_timing_cache(self, serialized_timing_cache):
        if not serialized_timing_cache:
            return ITimingCache(DEVICE, 0)
        stored = json.loads(bytes(serialized_timing_cache))
        return ITimingCache(stored["device"], stored["entries"])

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache._device != DEVICE and not ignore_mismatch:
            self._timing_cache = None
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self):
        return self._timing_cache

    def can_run_on_DLA(self, layer):  # noqa: N802 - the bindings' name
        return layer.type in ("Conv", "Relu", "Add", "BatchNormalization", "GlobalAveragePool", "Gemm")


def _static(profiles):
    return all(low == high for shapes in profiles for low, _, high in shapes._shapes.values())


class Builder:
    __slots__ = ("_logger",)

    def __init__(self, logger):
        if not isinstance(logger, Logger):
            raise TypeError("Builder(logger: ILogger)")
        self._logger = logger

    @property
    def logger(self):
        return self._logger

    @property
    def num_DLA_cores(self):  # noqa: N802
        return NUM_DLA_CORES

    def create_network(self, flags=0):
        return INetworkDefinition(int(flags))

    def create_builder_config(self):
        return IBuilderConfig()

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        calls.append("build_serialized_network")
        if not network._parsed or not config._profiles:
            return None  # TensorRT logs why and returns None
        strongly_typed = MAJOR >= 11 or network.flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        if strongly_typed and {getattr(BuilderFlag, f, None) for f in ("FP16", "INT8")} & config._flags:
            return None  # precision flags are not allowed in strongly typed networks
        if config._timing_cache is not None:
            config._timing_cache._entries += 1
        # A DLA runs a 10.x network only weakly typed, in the precision a flag asks for (strongly typed
        # networks on the DLA came with 11.x); otherwise, with GPU fallback, every layer goes to the GPU.
        dla_precision = strongly_typed if MAJOR >= 11 else getattr(BuilderFlag, "FP16", None) in config._flags
        on_dla = config.default_device_type == DeviceType.DLA and _static(config._profiles) and bool(dla_precision)
        if config.default_device_type == DeviceType.DLA and not on_dla \
                and BuilderFlag.GPU_FALLBACK not in config._flags:
            return None
        name = network._inputs[0].name
        plan = {"device": DEVICE, "input": name, "input_dtype": int(network._inputs[0].dtype),
                "precision": network._precision,
                "tf32": BuilderFlag.TF32 in config._flags, "dla": on_dla,
                "profiles": [[list(s) for s in p._shapes[name]] for p in config._profiles],
                "layers": [layer.name for layer in network._layers]}
        return IHostMemory(json.dumps(plan).encode())


class Runtime:
    __slots__ = ("_logger", "DLA_core")

    def __init__(self, logger):
        self._logger, self.DLA_core = logger, -1

    @property
    def logger(self):
        return self._logger

    def deserialize_cuda_engine(self, serialized_engine):
        try:
            plan = json.loads(bytes(serialized_engine))
        except (ValueError, UnicodeDecodeError):
            return None  # TensorRT logs the error and returns None
        if plan.get("device") != DEVICE or "profiles" not in plan:
            return None
        return ICudaEngine(plan)


class ICudaEngine:
    __slots__ = ("_plan",)

    def __init__(self, plan):
        self._plan = plan

    @property
    def num_io_tensors(self):
        return 2

    @property
    def num_optimization_profiles(self):
        return len(self._plan["profiles"])

    @property
    def device_memory_size_v2(self):
        return 1 << 20

    def get_tensor_name(self, index):
        return [self._plan["input"], "logits"][index]

    def get_tensor_mode(self, name):
        return {self._plan["input"]: TensorIOMode.INPUT, "logits": TensorIOMode.OUTPUT}.get(name, TensorIOMode.NONE)

    def get_tensor_dtype(self, name):
        if name == self._plan["input"]:
            return DataType(self._plan.get("input_dtype", DataType.FLOAT))
        return DataType.FLOAT

    def get_tensor_profile_shape(self, name, profile_index):
        if name != self._plan["input"]:
            raise RuntimeError("not an input")
        return [list(s) for s in self._plan["profiles"][profile_index]]

    def create_execution_context(self):
        return IExecutionContext(self)

    def create_engine_inspector(self):
        return EngineInspector(self)


class IExecutionContext:
    __slots__ = ("_engine", "_profile", "_shape", "_addresses")

    def __init__(self, engine):
        self._engine, self._profile, self._shape, self._addresses = engine, 0, None, {}

    @property
    def engine(self):
        return self._engine

    @property
    def active_optimization_profile(self):
        return self._profile

    def set_optimization_profile_async(self, profile_index, stream_handle):
        if not isinstance(stream_handle, int) or not 0 <= profile_index < self.engine.num_optimization_profiles:
            return False
        self._profile, self._shape = profile_index, None
        return True

    def set_input_shape(self, name, shape):
        low, _, high = self.engine._plan["profiles"][self._profile]
        if name != self.engine._plan["input"] or len(shape) != len(low) \
                or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
        self._shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if self._shape is None:
            return (-1, 10)
        return (self._shape[0], 10) if name == "logits" else self._shape

    def set_tensor_address(self, name, memory):
        if self.engine.get_tensor_mode(name) == TensorIOMode.NONE or not isinstance(memory, int):
            return False
        self._addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle):
        return self._shape is not None and len(self._addresses) == 2 and isinstance(stream_handle, int)


class EngineInspector:
    __slots__ = ("_engine", "execution_context")

    def __init__(self, engine):
        self._engine, self.execution_context = engine, None

    def get_engine_information(self, format):  # noqa: A002
        if LayerInformationFormat(format) != LayerInformationFormat.JSON:
            raise NotImplementedError("the stand-in writes JSON only")
        plan = self._engine._plan
        context = self.execution_context
        shapes_known = context is not None and context._shape is not None
        return json.dumps({"Layers": engine_layers(plan, shapes_known, __version__), "Bindings": [plan["input"],
                                                                                                  "logits"]})


def _tensor(name, text, version):
    """One tensor of the inspector's JSON: TensorRT 10 writes "Format/Datatype", 11 splits it."""
    if version.startswith("10."):
        return {"Name": name, "Location": "Device", "Format/Datatype": text}
    kind = text.split(" format")[0].split()[-1] if "format" in text else text
    return {"Name": name, "Location": "Device", "DataType": kind, "Format": text}


def engine_layers(plan, shapes_known, version):
    """The inspector's layers for a stand-in plan, as TensorRT lays out a ResNet's engine."""
    def fmt(text):
        return text if shapes_known else "N/A due to dynamic shapes"

    kind = plan["precision"]
    conv_in = {"int8": "Channel major INT8 format where channel % 32 == 0",
               "fp16": "Channel major FP16 format where channel % 8 == 0", "fp32": "Row major linear FP32"}[kind]
    # Quantized convolutions dequantize into their fp16 output: the output is not the precision.
    conv_out = {"int8": "Channel major FP16 format where channel % 8 == 0",
                "fp16": "Channel major FP16 format where channel % 8 == 0", "fp32": "Row major linear FP32"}[kind]
    tactic = {"int8": "sm87_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32",
              "fp16": "sm87_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc_tilesize64x64x64",
              "fp32": ("sm87_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nhwc" if plan["tf32"] else
                       "sm87_xmma_fprop_implicit_gemm_f32f32_f32f32_f32_nhwckrsc_nchw")}[kind]
    if plan["dla"]:
        return [{"Name": f"{plan['input']} to nvm", "LayerType": "Reformat",
                 "Inputs": [_tensor(plan["input"], fmt("Row major linear FP32"), version)],
                 "Outputs": [_tensor("nvm_in", fmt("Channel major FP16 format where channel % 16 == 0"), version)]},
                {"Name": "{ForeignNode[" + plan["layers"][0] + "..." + plan["layers"][-1] + "]}",
                 "LayerType": "DLA", "Inputs": [_tensor("nvm_in", fmt("Channel major FP16 format"), version)],
                 "Outputs": [_tensor("nvm_out", fmt("Channel major FP16 format"), version)]},
                {"Name": "logits from nvm", "LayerType": "Reformat",
                 "Inputs": [_tensor("nvm_out", fmt("Channel major FP16 format"), version)],
                 "Outputs": [_tensor("logits", fmt("Row major linear FP32"), version)]}]
    layers = [{"Name": "Reformatting CopyNode for Input Tensor 0", "LayerType": "Reformat",
               "Inputs": [_tensor(plan["input"], fmt("Row major linear FP32"), version)],
               "Outputs": [_tensor("reformatted", fmt(conv_in), version)]}]
    convs = [n for n in plan["layers"] if "Conv" in n]
    for name in convs:
        layers.append({"Name": name, "LayerType": "CaskConvolution", "ParameterType": "Convolution",
                       "Inputs": [_tensor(f"{name}_in", fmt(conv_in), version)],
                       "Outputs": [_tensor(f"{name}_out", fmt(conv_out), version)], "TacticName": tactic})
    layers.append({"Name": "fc", "LayerType": "CaskGemm", "ParameterType": "Gemm",
                   "Inputs": [_tensor("pooled", fmt(conv_out if kind == "fp16" else "Row major linear FP32"),
                                      version)],
                   "Outputs": [_tensor("logits", fmt("Row major linear FP32"), version)],
                   "TacticName": "sm87_xmma_gemm_f32f32_f32f32_f32_nn_n" if kind != "fp16" else
                   "sm87_xmma_gemm_f16f16_f16f16_f16_nn_n"})
    return layers
