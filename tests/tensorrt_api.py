"""The shape of a ``tensorrt`` module's API, as JSON: for the real bindings (pybind11) and for the
stand-in (plain Python) alike, so the two can be compared name by name.

    python tests/tensorrt_api.py NAME...        # describe these names of the importable ``tensorrt``
    python tests/tensorrt_api.py --standin      # describe every TensorRT name the stand-in defines

A name is ``Class``, ``Class.member`` or a module-level function or attribute. Each is described as
one of: ``class``; ``enum`` with its members' values; ``method`` with the keyword names of each of its
signatures (a pybind11 function lists its overloads in its docstring); ``property`` with ``rw`` or
``ro``; ``function``; ``attribute``; or ``missing``. Run in a subprocess: importing the real bindings
loads (dummy) TensorRT libraries that must not stay in the test process.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import sys
import types

DUMMY_LIBRARY = """
#include <stddef.h>
void* createInferBuilder_INTERNAL(void* logger, int version) { return NULL; }
void* createInferRuntime_INTERNAL(void* logger, int version) { return NULL; }
void* createInferRefitter_INTERNAL(void* engine, void* logger, int version) { return NULL; }
void* getPluginRegistry(void) { return NULL; }
void* getBuilderPluginRegistry(int kind) { return NULL; }
int initLibNvInferPlugins(void* logger, const char* ns) { return 0; }
void* createNvOnnxParser_INTERNAL(void* network, void* logger, int version) { return NULL; }
void* createNvOnnxParserRefitter_INTERNAL(void* refitter, void* logger, int version) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
"""


def bindings_environment(wheel, major: str, folder, compiler: str) -> dict[str, str]:
    """PYTHONPATH and LD_LIBRARY_PATH under which ``import tensorrt`` is the real bindings in
    ``wheel``, laid out as NVIDIA's ``tensorrt`` pip package re-exports them, over stand-in
    libraries of TensorRT ``major`` whose factories return NULL (as where CUDA cannot start)."""
    import subprocess
    import zipfile
    from pathlib import Path

    folder = Path(folder)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(folder / "site")
    (folder / "site" / "tensorrt").mkdir(exist_ok=True)
    (folder / "site" / "tensorrt" / "__init__.py").write_text(
        "from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__\n")
    (folder / "dummy.c").write_text(DUMMY_LIBRARY)
    for library in ("nvinfer", "nvinfer_plugin", "nvonnxparser"):
        name = f"lib{library}.so.{major}"
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / name), f"-Wl,-soname,{name}",
                        str(folder / "dummy.c")], check=True, capture_output=True)
    return {"PYTHONPATH": str(folder / "site"), "LD_LIBRARY_PATH": str(folder)}


# What the stand-in defines only to be driven by tests: not TensorRT's.
STANDIN_ONLY = {"DEVICE", "NUM_DLA_CORES", "calls", "engine_layers", "MAJOR", "VERSION_VARIABLE"}
SIGNATURE = re.compile(r"^\s*(?:\d+\.\s*)?(\w+)\((.*?)\)\s*->", re.M)


def pybind_parameters(function) -> list[list[str]]:
    """The keyword names of each signature a pybind11 function's docstring gives, ``self`` left out;
    a name with a default value ends in "?"."""
    signatures = []
    for _, arguments in SIGNATURE.findall(getattr(function, "__doc__", "") or ""):
        parts = [a.strip() for a in re.split(r",\s*(?![^\[\(]*[\]\)])", arguments) if a.strip()]
        names = [p.split(":")[0].split("=")[0].strip() + ("?" if "=" in p else "") for p in parts]
        signatures.append([n for n in names if n not in ("self", "*args", "**kwargs")])
    return signatures


def python_parameters(function) -> list[list[str]]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return []
    return [[n + ("?" if p.default is not p.empty else "") for n, p in parameters.items()
             if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]]


def called_as(arguments: list[str], signature: list[str]) -> bool:
    """Whether a call passing ``arguments`` (names, in order) fits ``signature`` (names, "?" marking
    those with defaults): they are its first parameters, and every parameter after them has a default."""
    names = [n.rstrip("?") for n in signature]
    return names[:len(arguments)] == [a.rstrip("?") for a in arguments] and all(
        n.endswith("?") for n in signature[len(arguments):])


def is_enum(value) -> bool:
    return isinstance(value, type) and (issubclass(value, enum.Enum) or hasattr(value, "__members__"))


def enum_members(value) -> dict[str, int]:
    return {name: int(member) for name, member in value.__members__.items()}


def parameters(function) -> list[list[str]]:
    """A pybind11 method's signatures from its docstring, a Python function's from its signature."""
    if isinstance(function, (staticmethod, classmethod)):
        function = function.__func__
    is_pybind = type(function).__name__ in ("instancemethod", "builtin_function_or_method")
    return pybind_parameters(function) if is_pybind else python_parameters(function)


def describe_member(owner, name: str) -> dict:
    try:
        found = inspect.getattr_static(owner, name)
    except AttributeError:
        return {"kind": "missing"}
    if isinstance(found, property):
        return {"kind": "property", "access": "rw" if found.fset is not None else "ro"}
    if isinstance(found, types.MemberDescriptorType):  # a __slots__ entry: a plain writable attribute
        return {"kind": "property", "access": "rw"}
    if is_enum(found):
        return {"kind": "enum", "members": enum_members(found)}
    if not isinstance(found, type) and hasattr(type(found), "__members__"):
        return {"kind": "enum member", "value": int(found)}
    if callable(found) or isinstance(found, (staticmethod, classmethod)):
        return {"kind": "method", "parameters": parameters(found)}
    return {"kind": "attribute"}


def describe(module, name: str) -> dict:
    owner_name, _, member = name.partition(".")
    owner = getattr(module, owner_name, None)
    if owner is None:
        return {"kind": "missing"}
    if member:
        return describe_member(owner, member)
    if is_enum(owner):
        return {"kind": "enum", "members": enum_members(owner)}
    if isinstance(owner, type):
        return {"kind": "class", "parameters": parameters(owner.__init__)}
    if callable(owner):
        return {"kind": "function"}
    return {"kind": "attribute"}


def standin_names(module) -> list[str]:
    """Every TensorRT name the stand-in defines: its public classes, their public members and enums,
    its module-level functions; not what it defines for tests, nor the modules it imports."""
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or name in STANDIN_ONLY or isinstance(value, types.ModuleType):
            continue
        if getattr(value, "__module__", module.__name__) != module.__name__ and not is_enum(value):
            continue  # imported helpers
        names.append(name)
        if isinstance(value, type) and not is_enum(value):
            names += [f"{name}.{member}" for member in vars(value) if not member.startswith("_")]
    return names


def main(arguments: list[str]) -> None:
    import tensorrt

    names = standin_names(tensorrt) if arguments == ["--standin"] else arguments
    json.dump({"version": getattr(tensorrt, "__version__", None),
               "names": {name: describe(tensorrt, name) for name in names}}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
