"""The target's side of the report: each measured artifact judged against the target's budgets,
and a roofline estimate for the target from its published figures, labelled as an estimate."""

from __future__ import annotations

from typing import Any

from stages.deploy.roofline import estimate_latency_ms


def budget_verdict(row: dict[str, Any], budgets: dict[str, Any], fp32_accuracy: float | None) -> str | None:
    """"within", "over: ..." naming each budget missed, or None when the target sets no budget that
    applies to this row."""
    over, judged = [], False
    limit = budgets.get("latency_ms", {}).get(row["batch_size"])
    if limit is not None:
        judged = True
        if row["latency_p50_ms"] > limit:
            over.append(f"latency {row['latency_p50_ms']:.2f} > {limit:g} ms")
    if budgets.get("memory_mb") is not None and "peak_memory_mb" in row:
        judged = True
        memory = row.get("device_memory_mb", row["peak_memory_mb"])
        if memory > budgets["memory_mb"]:
            over.append(f"memory {memory:.0f} > {budgets['memory_mb']:g} MB")
    if budgets.get("max_accuracy_drop") is not None and fp32_accuracy is not None and "test_accuracy" in row:
        judged = True
        drop = 100 * (fp32_accuracy - row["test_accuracy"])
        if drop > budgets["max_accuracy_drop"]:
            over.append(f"accuracy −{drop:.2f} > {budgets['max_accuracy_drop']:g} pts")
    if not judged:
        return None
    return "within" if not over else "over: " + "; ".join(over)


def unjudged_latency_budgets(budgets: dict[str, Any], rows: list[dict[str, Any]]) -> list[int]:
    """Batch sizes with a latency budget that no measured row has: a budget nothing could break, which
    the report and deploy name rather than count as met."""
    measured = {r["batch_size"] for r in rows}
    return sorted(int(b) for b in budgets.get("latency_ms", {}) if int(b) not in measured)


def judge_rows(rows: list[dict[str, Any]], budgets: dict[str, Any]) -> None:
    """Adds a ``budget`` verdict to each row measured with the target's own backend; rows measured
    on a stand-in are not the target's figures and get none."""
    # Judged against the fp32 engine taking the same input form (normalized floats or raw pixels).
    fp32 = {(r["model"], r.get("input")): r["test_accuracy"] for r in rows
            if r["runtime"] != "pytorch" and r["precision"] == "fp32"}
    for row in rows:
        if "stand_in_for" not in row and row["runtime"] != "pytorch":
            row["budget"] = budget_verdict(row, budgets, fp32.get((row["model"], row.get("input"))))


def roofline_rows(layer_costs: dict[str, list[dict[str, Any]]], hardware: dict[str, Any], batch_sizes,
                  budgets: dict[str, Any]) -> list[dict[str, Any]]:
    """The estimate for every model, precision with a published peak, and batch size."""
    rows = []
    for model, costs in layer_costs.items():
        for precision in ("fp32", "fp16", "int8"):
            for batch in batch_sizes:
                estimate = estimate_latency_ms(costs, batch, precision, hardware)
                if estimate is None:
                    continue
                row = {"model": model, "precision": precision, "batch_size": batch, **estimate}
                verdict = budget_verdict({"batch_size": batch, "latency_p50_ms": estimate["latency_ms"]},
                                         {"latency_ms": budgets.get("latency_ms", {})}, None)
                if verdict:
                    row["budget"] = verdict
                rows.append(row)
    return rows


def render_estimate(report: dict[str, Any], label) -> list[str]:
    hardware = report["hardware"]
    lines = ["", f"## Roofline estimate for {report['target']} (an estimate, not a measurement)", "",
             f"From the published figures of {hardware['device']}: dense peak "
             + ", ".join(f"{p} {v:g} TOPS" for p, v in hardware["peak_tops"].items())
             + f", memory bandwidth {hardware['memory_bandwidth_gbs']:g} GB/s"
             + (f" ({hardware['source']})" if hardware.get("source") else "") + ". "
             "Each convolution and linear layer takes the longer of its arithmetic at peak and its weights "
             "and activations moved once at full bandwidth; launches, fusion and caches are ignored, so real "
             "latency is higher.", "",
             "| model | precision | batch | estimated ms | images/s | compute-bound share | budget |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["estimate"]:
        lines.append(f"| {label(r['model'])} | {r['precision']} | {r['batch_size']} | {r['latency_ms']:.4f} | "
                     f"{r['images_per_s']:.0f} | {100 * r['compute_bound_share']:.0f} % | {r.get('budget', '–')} |")
    return lines
