"""Read a profile: YAML, ``extends:`` chains, ``--set`` overrides, then one validation pass."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from stages.common.errors import ProfileError

DEFAULT_PROFILE = "quickstart"


def default_profile_path() -> Path:
    """``profiles/quickstart.yaml`` of the working tree if present, else the installed copy."""
    local = Path("profiles") / f"{DEFAULT_PROFILE}.yaml"
    if local.is_file():
        return local
    return Path(str(resources.files("profiles") / f"{DEFAULT_PROFILE}.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProfileError(f"{path}: profile not found; pass the path of a .yaml profile") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not a text file (byte {exc.start} is not UTF-8); pass a .yaml profile") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ProfileError(f"{path}: YAML syntax error{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a mapping of keys, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a profile merged over the profiles it extends."""
    path = path.resolve() if path.exists() else path
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ProfileError(f"{path}: 'extends' forms a cycle ({cycle}); remove one of the links")
    data = _read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    # One parent, or a list merged in order (a recipe, then a target's settings).
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not parents or not all(isinstance(p, str) for p in parents):
        raise ProfileError(f"{path}: key 'extends' must be a path to another profile, or a list of them, got "
                           f"{parents!r}")
    merged: dict[str, Any] = {}
    for parent in parents:
        parent_path = (path.parent / parent)
        if not parent_path.is_file():
            raise ProfileError(f"{path}: key 'extends' names {parent!r}, but {parent_path} does not exist")
        merged = _merge(merged, load_raw(parent_path, (*_chain, path)))
    return _merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"distill.temperature=2"`` -> (["distill", "temperature"], 2); values are YAML scalars or lists."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {text!r}: expected key.path=value, e.g. --set distill.temperature=2")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ProfileError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    return key.strip().split("."), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = _merge({}, data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ProfileError(f"--set {text!r}: {part!r} holds a value, not a section of keys")
            else:
                child = node[part] = dict(child)
            node = child
        node[path[-1]] = value
    return data


def _allowed_keys(model_cls: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that ``loc`` points into, for 'did you mean' hints."""
    cls = model_cls
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        if annotation is None or not hasattr(annotation, "model_fields"):
            return []
        cls = annotation
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(source: str, exc: Any, model_cls: Any, data: dict[str, Any]) -> str:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model_cls, loc)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{source}: unknown key '{key}'{hint}; allowed here: {', '.join(allowed)}"
    value = err.get("input")
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if err["type"] == "missing":
        return f"{source}: key '{key}' is required"
    if isinstance(value, dict):
        # A rule across a section's keys: the message names them itself.
        return f"{source}: {message}" if not loc else f"{source}: section {key}: {message}"
    if loc and loc[-1] == "[key]":  # a mapping's key failed, as a batch size in target.budgets.latency_ms
        return f"{source}: {'.'.join(str(p) for p in loc[:-2])} has the key {value!r}: {message}"
    if err["type"] in ("greater_than", "less_than_equal") and key.endswith("p_last"):
        message += "; a survival probability lies in (0, 1], and 1 keeps every block"
    return f"{source}: {key} = {value!r}: {message}"


def load_profile(path: str | Path | None = None, overrides: list[str] | None = None, overrides_from: str = "--set"):
    """Read, merge and validate a profile. Raises ProfileError with a one-line message, which names
    where the overrides came from (``overrides_from``) when there are any."""
    from pydantic import ValidationError

    from stages.common.profile import Profile, plain_folder_name

    path = Path(path) if path is not None else default_profile_path()
    data = load_raw(path)
    if overrides:
        data = apply_overrides(data, overrides)
    if not data.get("name"):
        data["name"] = plain_folder_name(path.stem)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        source = str(path) + (f" (with {overrides_from})" if overrides else "")
        raise ProfileError(format_validation_error(source, exc, Profile, data)) from exc
