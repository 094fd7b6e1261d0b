"""Stage: the accuracy-versus-latency report: report.md, report.json and the plots."""

from __future__ import annotations

import json
from typing import Any

from stages.context import StageContext, member_metrics
from stages.deploy.budgets import judge_rows, roofline_rows, unjudged_latency_budgets
from stages.deploy.input_contract import RAW_PIXELS_SUFFIX
from stages.reporting.markdown import render_markdown
from stages.reporting.names import PLAIN, engine_form, model_label, teacher_names, teacher_reading
from stages.reporting.recipe import recipes_of
from stages.reporting.plots import CURVES_PLOT, entropy_plot_name, plot, plot_curves, plot_teacher_entropy


def method_comparison(training: dict[str, dict]) -> dict[str, Any]:
    """Accuracies, and the gains of stochastic transfer over its baselines for each teacher reading
    (the first reading's also at the top level)."""
    accuracy = {m: training[m]["test_accuracy"] for m in training}
    comparison: dict[str, Any] = {"test_accuracy": accuracy}
    by_teacher = {}
    for reading, prefix in (("stochastic_depth", ""), ("plain", PLAIN)):
        for transfer in ("kd", "at"):
            method, baseline = f"{prefix}stochastic_{transfer}", f"{prefix}{transfer}"
            if {method, baseline, "student"} <= accuracy.keys():
                by_teacher[reading] = {
                    "transfer": transfer,
                    "teacher_test_accuracy": accuracy.get(f"{prefix}teacher"),
                    "gain_over_deterministic": accuracy[method] - accuracy[baseline],
                    "gain_over_student_alone": accuracy[method] - accuracy["student"]}
    if by_teacher:
        comparison.update(next(iter(by_teacher.values())))
        comparison["by_teacher"] = by_teacher
    peers = {kind: [a for m, a in accuracy.items() if m.startswith(f"dml_{kind}_")]
             for kind in ("conventional", "proposed")}
    if peers["conventional"] and peers["proposed"]:
        means = {kind: sum(values) / len(values) for kind, values in peers.items()}
        comparison["dml_mean_conventional"] = means["conventional"]
        comparison["dml_mean_proposed"] = means["proposed"]
        comparison["dml_gain"] = means["proposed"] - means["conventional"]
        alone = [a for m, a in accuracy.items() if m.startswith("independent_")]
        if alone:
            comparison["dml_mean_independent"] = sum(alone) / len(alone)
    return comparison


def clearly_faster(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether engine row ``a`` is faster than ``b`` beyond the spread of its own timings: its 90th
    percentile latency below b's median. Two identical runs then choose the same engine."""
    return a["latency_p90_ms"] < b["latency_p50_ms"]


def fastest_unless_within_noise(engines: list[dict[str, Any]]) -> dict[str, Any]:
    """The most accurate of the engines that the fastest one is not clearly faster than (the fastest
    itself where it is clearly faster than every other)."""
    fastest = min(engines, key=lambda r: r["latency_p50_ms"])
    as_fast = [r for r in engines if not clearly_faster(fastest, r)]
    return max(as_fast, key=lambda r: (r["test_accuracy"], -r["latency_p50_ms"]))


def deployed_summary(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """One row per model: the engine it would deploy, read at a glance.

    The deployed engine is the fastest at the largest batch among the model's engines (not the
    PyTorch reference) that are within every budget judged, or among all where none is or no budget
    applies, unless that speed is inside the measured spread (``clearly_faster``): then the most
    accurate of the engines as fast stays. Its top-1 is set against the same runtime's fp32 engine."""
    summary = []
    for model in models:
        engines = [r for r in rows if r["model"] == model and r["runtime"] != "pytorch"]
        if not engines:
            continue
        largest = max(r["batch_size"] for r in engines)
        at_largest = {engine_form(r): r for r in engines if r["batch_size"] == largest}
        within = [r for r in at_largest.values() if str(r.get("budget") or "").startswith("within")]
        chosen = fastest_unless_within_noise(within or list(at_largest.values()))
        precision, form = chosen["precision"], engine_form(chosen)
        fp32 = at_largest.get(("fp32", chosen.get("input")))  # the same input form's fp32 engine
        same = [r for r in engines if engine_form(r) == form]
        smallest = min(same, key=lambda r: r["batch_size"])
        verdicts = [r.get("budget") for r in same if r.get("budget")]
        over = [v for v in verdicts if v.startswith("over")]
        summary.append({
            "model": model, "runtime": chosen["runtime"], "precision": precision,
            "compute_precision": chosen["compute_precision"], "test_accuracy": chosen["test_accuracy"],
            "drop_from_fp32_points": 100 * (fp32["test_accuracy"] - chosen["test_accuracy"]) if fp32 else None,
            "smallest_batch": smallest["batch_size"], "latency_p50_ms_smallest_batch": smallest["latency_p50_ms"],
            "largest_batch": largest, "latency_p50_ms_largest_batch": chosen["latency_p50_ms"],
            "file_size_bytes": chosen["file_size_bytes"], "peak_memory_mb": chosen.get("device_memory_mb",
                                                                                       chosen["peak_memory_mb"]),
            "speedup_over_fp32": (chosen["throughput_images_per_s"] / fp32["throughput_images_per_s"]
                                  if fp32 else None),
            "budget": ("; ".join(over) if over else "within" if verdicts else None),
            **({"input": chosen["input"]} if "input" in chosen else {}),
            **({"stand_in_for": chosen["stand_in_for"]} if "stand_in_for" in chosen else {})})
    return summary


def training_history(artifact, member: str | None) -> list[dict[str, float]]:
    """The per-epoch history of a trained model: in its own folder, or its artifact's (DML peers)."""
    for folder in (artifact.model_folder(member), artifact.path):
        if (folder / "history.json").is_file():
            return json.loads((folder / "history.json").read_text())
    return []


def paper_comparison(row, models: list[str], peers, training: dict[str, dict]) -> dict[str, Any]:
    """The paper's printed figures beside this run's measured ones, model by model (points)."""
    from stages.common.paper import COLUMN_NAMES, printed_beside

    beside = printed_beside(row, models, tuple(peers))
    for model, entry in beside.items():
        measured = 100 * training[model]["test_accuracy"]
        entry.update(column_name=COLUMN_NAMES[entry["column"]], measured=measured,
                     difference=measured - entry["printed"])
    return {"table": row.table, "nets": list(row.nets), "models": beside}


def trained_p_last(teacher) -> float | None:
    """The p_n the stochastic-depth reading's teacher was trained (or imported) with."""
    if teacher is None:
        return None
    return teacher.manifest.get("config", {}).get("teacher", {}).get("p_last")


def write_report(ctx: StageContext) -> dict:
    models = ctx.params["models"]
    # Rows are labelled by the role they fill here: two models with identical settings share one artifact.
    # A model's raw-pixel form (export.preprocess: graph) is benchmarked as MODEL_uint8; its engine rows
    # say so in "input" and are reported with the model.
    rows = [{**row, "model": m} for m in models for variant in (m, m + RAW_PIXELS_SUFFIX)
            if f"benchmark:{variant}" in ctx.inputs for row in ctx.inputs[f"benchmark:{variant}"].metrics["rows"]]
    members = ctx.params.get("members", {})
    training = {m: member_metrics(ctx.inputs[f"train:{m}"].metrics, members.get(m)) for m in models}
    first = ctx.inputs[f"benchmark:{models[0]}"].metrics
    batch = max(r["batch_size"] for r in rows)
    deployment = ctx.params.get("deployment", {})
    # Python mode keeps latency budgets keyed by integer batch sizes, as the rows are.
    budgets = deployment["budgets"].model_dump() if "budgets" in deployment else {}
    judge_rows(rows, budgets)
    hardware = deployment["hardware"].model_dump(mode="json") if "hardware" in deployment else None
    estimate = roofline_rows({m: ctx.inputs[f"benchmark:{m}"].metrics["layer_costs"] for m in models}, hardware,
                             sorted({r["batch_size"] for r in rows}), budgets) if hardware else []
    report = {
        "profile": ctx.params["profile"],
        "target": first["target"],
        "machine": first["machine"],
        "threads": first["threads"],
        "versions": first["versions"],
        "models": models,
        "labels": {m: model_label(m) for m in models},
        "archs": {m: training[m]["arch"] for m in models},
        "teachers": {m: teacher_reading(m) for m in models},
        "teacher_names": teacher_names(trained_p_last(ctx.inputs.get("train:teacher"))),
        "comparison": method_comparison(training),
        "training": training,
        "recipes": recipes_of({m: ctx.inputs[f"train:{m}"] for m in models}, training),
        # Only knowledge distillation has teachers to analyse; a DML-only profile has none.
        "analyses": {role.split(":", 1)[1]: stage_input.metrics for role, stage_input in ctx.inputs.items()
                     if role.startswith("analysis:")},
        # Per-epoch loss and accuracy of each model as it trained (peers trained together share theirs).
        "curves": {m: training_history(ctx.inputs[f"train:{m}"], members.get(m)) for m in models},
        "plot_batch_size": batch,
        "rows": rows,
        "summary": deployed_summary(rows, models),
        "budgets": budgets,
        "unjudged_latency_budgets": unjudged_latency_budgets(budgets, rows),
        "hardware": hardware,
        "estimate": estimate,
        # Estimated before the run and measured, for every task the report reads.
        "timings": {role: {"estimated_s": timing.get("estimated_s"), "measured_s": timing.get("wall_s")}
                    for role, stage_input in ctx.inputs.items()
                    for timing in [stage_input.manifest.get("timings", {})] if timing.get("estimated_s")},
        "target_backend_missing": first.get("target_backend_missing"),
        "power": first.get("power", {}),
        **({"paper": paper_comparison(ctx.params["paper"], models, ctx.params.get("peers", ()), training)}
           if ctx.params.get("paper") else {}),
    }
    (ctx.output / "report.json").write_text(json.dumps(report, indent=1))
    (ctx.output / "report.md").write_text(render_markdown(report))
    plot(report, ctx.output / "report.png")
    if any(report["curves"].values()):
        plot_curves(report, ctx.output / CURVES_PLOT)
    for teacher, analysis in report["analyses"].items():
        if analysis["single_block_dropped"]:
            plot_teacher_entropy(teacher, analysis, ctx.output / entropy_plot_name(teacher),
                                 report["teacher_names"][teacher_reading(teacher)])
    return {"comparison": report["comparison"]}
