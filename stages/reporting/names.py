"""How the report names models, the teacher each learnt from, and an engine's precision and input form."""

from __future__ import annotations

from typing import Any


MODEL_LABELS = {
    "teacher": "teacher",
    "student": "student alone",
    "kd": "KD",
    "stochastic_kd": "stochastic KD",
    "at": "AT",
    "stochastic_at": "stochastic AT",
}
PLAIN = "plain_"  # the models of the plain-teacher reading (see pipeline.plan.READING_PREFIX)
TEACHER_NAMES = {"stochastic_depth": "stochastic-depth teacher", "plain": "plain teacher"}


def teacher_names(trained_p_last: float | None) -> dict[str, str]:
    """What each reading's teacher is called in a report: the stochastic-depth reading's teacher is a
    plain one where it was trained (or imported) with p_n 1, without dropping."""
    return {**TEACHER_NAMES, **({"stochastic_depth": "plain teacher"} if trained_p_last == 1.0 else {})}


def model_label(model: str) -> str:
    """"dml_proposed_2" -> "DML proposed, peer 2"; the KD models by their table names."""
    if model.startswith("dml_"):
        _, kind, peer = model.split("_")
        return f"DML {kind}, peer {peer}"
    if model.startswith("independent_"):
        return f"{model[len('independent_'):]} alone (independent learning)"
    if model == f"{PLAIN}teacher":
        return TEACHER_NAMES["plain"]
    if model.startswith(PLAIN):
        return f"{MODEL_LABELS.get(model[len(PLAIN):], model)} (plain teacher)"
    return MODEL_LABELS.get(model, model)


def teacher_reading(model: str) -> str | None:
    """Which teacher a model is, or learnt from: stochastic_depth, plain, or None (no teacher)."""
    base = model[len(PLAIN):] if model.startswith(PLAIN) else model
    if base not in MODEL_LABELS or base == "student":
        return None
    return "plain" if model.startswith(PLAIN) else "stochastic_depth"


def engine_form(row: dict[str, Any]) -> tuple[str, str | None]:
    """An engine's precision and input form (None: normalized float; "uint8": raw pixels)."""
    return row["precision"], row.get("input")


def precision_label(row: dict[str, Any]) -> str:
    """"int8", or "int8 on uint8 pixels" for a model that normalizes raw pixels in its graph."""
    return row["precision"] + (f" on {row['input']} pixels" if row.get("input") else "")


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"
