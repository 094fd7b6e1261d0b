"""A plain-text listing of every profile key, generated from the schema itself."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " | ".join(repr(choice) for choice in get_args(annotation))
    text = str(annotation) if get_args(annotation) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("stages.common.config.", "")


def _default(field) -> str:
    if field.default_factory is not None:
        return ""
    return repr(field.default)


def describe(model: type[BaseModel] | None = None, prefix: str = "") -> str:
    from stages.common.profile import Profile

    model = model or Profile
    lines = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append(f"{key}:  {field.description}")
            lines.append(describe(annotation, f"{key}."))
            continue
        default = _default(field)
        lines.append(f"{key}: {_type_name(annotation)}" + (f" = {default}" if default else "")
                     + f"\n    {field.description}")
    return "\n".join(lines)
