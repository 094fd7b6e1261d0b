"""Stage: the accuracy-versus-latency report: report.md, report.json and the plots."""

from __future__ import annotations

import json
from typing import Any

from stages.context import StageContext, member_metrics
from stages.deployment import judge_rows, render_estimate, roofline_rows
from stages.input_contract import RAW_PIXELS_SUFFIX

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


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def render_analysis(teacher: str, analysis: dict[str, Any]) -> list[str]:
    name = TEACHER_NAMES[teacher_reading(teacher)]
    lines = ["", f"## What the {name} teaches with", "",
             f"Sampled as it teaches: p_n {analysis['teaching_p_last']:g}, kept blocks at the "
             + ("scale they were trained with" if analysis["kept_scale"] == "trained"
                else "expectation-preserving scale (divided by the teaching survival)") + ". "
             f"On {analysis['images']} test images, the deterministic teacher's outputs have a mean "
             f"entropy of {analysis['deterministic']['entropy']:.3f} nats "
             f"(top-1 {_pct(analysis['deterministic']['accuracy'])} %)."]
    samples = analysis.get("samples")
    if samples:
        lines += [f"Its {samples['k']} sampled sub-networks average {samples['entropy_per_sample']:.3f} nats "
                  f"(top-1 {_pct(samples['accuracy_per_sample'])} %); the average of their distributions "
                  f"has {samples['entropy_of_average']:.3f} nats (top-1 {_pct(samples['accuracy_of_average'])} %)."]
    if analysis["single_block_dropped"]:
        lines += ["", "Each row: the deterministic network with exactly that one block removed (Fig. 3).", "",
                  "| stochastic block (by depth) | teaching survival p_i | entropy with only it removed | top-1 % |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {b['stochastic_block']} | {b['survival']:.3f} | {b['entropy']:.3f} | {_pct(b['accuracy'])} |"
                  for b in analysis["single_block_dropped"]]
        lines += ["", f"![{name}: entropy with one block removed]({entropy_plot_name(teacher)})"]
    return lines


def entropy_plot_name(teacher: str) -> str:
    return f"{teacher}_entropy.png"


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    validated = any("validation_accuracy" in m for m in report["training"].values())
    lines = [f"# stochkd-pipeline report: {report['profile']}", "",
             f"Measured on {machine['cpu']} ({machine['cores']} cores, host {machine['host']}), "
             f"{report['threads']} threads; target profile `{report['target']}`."
             + (" Power and clocks: " + ", ".join(f"{k} {v}" for k, v in report["power"].items()) + "."
                if report.get("power") else ""), "",
             *render_summary(report),
             "## Knowledge transfer (PyTorch fp32, test split)", "",
             "Student alone: labels only. KD (or AT): the same teacher with dropping off. Stochastic KD "
             "(or AT): the teacher keeps dropping blocks while it teaches. DML conventional: peers learning from each "
             "other; DML proposed: the same with skips and stochastic blocks in every peer.", "",
             "Stochastic-depth teacher: trained with dropping at its p_n. Plain teacher: trained without "
             "dropping, its blocks dropped only while it teaches.", "",
             "| model | network | teacher | top-1 % |" + (" validation top-1 % |" if validated else ""),
             "| --- | --- | --- | --- |" + (" --- |" if validated else "")]
    for model, acc in report["comparison"]["test_accuracy"].items():
        reading = report["teachers"].get(model)
        imported = report["training"][model].get("imported")
        label = model_label(model) + (f" (imported: {imported['path'].rsplit('/', 1)[-1]})" if imported else "")
        lines.append(f"| {label} | {report['archs'][model]} | "
                     f"{TEACHER_NAMES[reading] if reading else '–'} | {_pct(acc)} |"
                     + (f" {_pct(report['training'][model].get('validation_accuracy'))} |" if validated else ""))
    teacher = report["training"].get("teacher", {})
    if teacher.get("sampled_subnetwork_accuracy_std"):
        lines += ["", f"The stochastic-depth teacher's sub-networks at its own p_n, each drawn once, score "
                  f"{_pct(teacher['sampled_subnetwork_accuracy_mean'])} ± "
                  f"{_pct(teacher['sampled_subnetwork_accuracy_std'])} % on the test split "
                  f"(mean ± std over independently drawn sub-networks)."]
    comparison = report["comparison"]
    for reading, gains in comparison.get("by_teacher", {}).items():
        name = gains["transfer"].upper()
        lines += ["", f"With the {TEACHER_NAMES[reading]}: stochastic {name} gains "
                  f"{100 * gains['gain_over_deterministic']:+.2f} points over {name} from the same teacher without "
                  f"dropping and {100 * gains['gain_over_student_alone']:+.2f} over the student trained alone (one "
                  f"seed; same recipe and budget for all three)."]
    if "dml_gain" in comparison:
        lines += ["", f"Proposed DML peers average {_pct(comparison['dml_mean_proposed'])} %, conventional ones "
                  f"{_pct(comparison['dml_mean_conventional'])} % ({100 * comparison['dml_gain']:+.2f} points; "
                  f"one seed, same recipe)"
                  + (f"; each peer network trained alone (independent learning) averages "
                     f"{_pct(comparison['dml_mean_independent'])} %." if "dml_mean_independent" in comparison
                     else ".")]
    if any(report.get("curves", {}).values()):
        lines += ["", "Training loss and top-1 per epoch (test top-1 where it was measured after every epoch):", "",
                  f"![training curves]({CURVES_PLOT})"]
    for teacher, analysis in report["analyses"].items():
        lines += render_analysis(teacher, analysis)
    lines += ["", "## Deployed artifacts", ""]
    if report.get("target_backend_missing"):
        lines += [f"**Not measured on the target.** Missing here: {report['target_backend_missing']}. The rows "
                  f"below are this machine's figures, with ONNX Runtime on this CPU standing in for the target's "
                  f"engines; bundle the models (`stochkd-pipeline bundle PROFILE --until quantize -o FILE.tar`), "
                  f"unbundle them on the target and run the same profile there for its own.", ""]
    gpu = any(r.get("device") == "cuda" for r in report["rows"])
    energy = any("energy_mj_per_image" in r for r in report["rows"])
    lines += ["| model | runtime | device | precision | computes in | batch | top-1 % | p50 ms | p90 ms | p99 ms "
              "| mean ± std ms | images/s | peak MB | " + ("GPU MB | h2d / compute / d2h ms | " if gpu else "")
              + ("mJ/image | " if energy else "") + "file KB | params | MMACs | budget |",
              "|" + " --- |" * (16 + 2 * gpu + energy)]
    for r in report["rows"]:
        runtime = r["runtime"] + (f" (stand-in for {r['stand_in_for']})" if "stand_in_for" in r else "")
        optional_cells = ""
        if gpu:
            split = (f"{r['h2d_p50_ms']:.3f} / {r['compute_p50_ms']:.3f} / {r['d2h_p50_ms']:.3f}"
                     if "compute_p50_ms" in r else "–")
            optional_cells = f"{r['device_memory_mb']:.1f} | " if "device_memory_mb" in r else "– | "
            optional_cells += f"{split} | "
        if energy:
            optional_cells += f"{r['energy_mj_per_image']:.3f} | " if "energy_mj_per_image" in r else "– | "
        lines.append(
            f"| {model_label(r['model'])} | {runtime} | {r.get('device', 'cpu')} | {precision_label(r)} | "
            f"{r['compute_precision']} | "
            f"{r['batch_size']} | {_pct(r['test_accuracy'])} | {r['latency_p50_ms']:.3f} | "
            f"{r['latency_p90_ms']:.3f} | {r['latency_p99_ms']:.3f} | "
            f"{r['latency_mean_ms']:.3f} ± {r['latency_std_ms']:.3f} | {r['throughput_images_per_s']:.0f} | "
            f"{r['peak_memory_mb']:.1f} | {optional_cells}{r['file_size_bytes'] / 1024:.0f} | {r['parameters']:,} | "
            f"{r['macs'] / 1e6:.2f} | {r.get('budget') or '–'} |")
    lines += ["", "Peak MB: peak resident memory of the measuring process above what its runtime took "
              "before the model was loaded. Latency: wall time of one batch after warm-up. "
              "Computes in: the precision of the heavy operators as the runtime really runs them "
              "(a CPU without fp16 kernels runs an fp16 model in fp32 between casts). Budget: the target's "
              "latency (p50), memory and accuracy-drop budgets, judged only for the target's own engines."
              + (" mJ/image: the energy counter of the chip running the model (NVML for a GPU, RAPL for an "
                 "Intel CPU) over the timed runs, idle draw included." if energy else ""), "",
              "![accuracy versus latency](report.png)"]
    disturbed = [r for r in report["rows"] if r.get("disturbed")]
    if disturbed:
        lines += ["", f"**Disturbed measurements.** Other processes used more than 10 % of this machine's cores "
                  f"(or of its GPU) while these were timed, even after a rerun, so their latencies measure the "
                  f"neighbours too: "
                  + "; ".join(f"{model_label(r['model'])} {r['runtime']} {precision_label(r)} at batch "
                              f"{r['batch_size']} ({neighbours(r)})" for r in disturbed) + "."]
    lines += render_speedups(report)
    lines += render_timings(report)
    if report.get("estimate"):
        lines += render_estimate(report, model_label)
    return "\n".join(lines + [""])


def neighbours(row: dict[str, Any]) -> str:
    """What other processes took while a row was timed: "35 % of the cores, 20 % of the GPU"."""
    parts = [f"{100 * row[key]:.0f} % of the {what}" for key, what in (("other_cpu_share", "cores"),
                                                                       ("other_gpu_share", "GPU")) if key in row]
    return ", ".join(parts)


def deployed_summary(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """One row per model: the engine it would deploy, read at a glance.

    The deployed engine is the fastest at the largest batch among the model's engines (not the
    PyTorch reference) that are within every budget judged, or the fastest of all where none is or
    no budget applies. Its top-1 is set against the same runtime's fp32 engine."""
    summary = []
    for model in models:
        engines = [r for r in rows if r["model"] == model and r["runtime"] != "pytorch"]
        if not engines:
            continue
        largest = max(r["batch_size"] for r in engines)
        at_largest = {engine_form(r): r for r in engines if r["batch_size"] == largest}
        within = [r for r in at_largest.values() if str(r.get("budget") or "").startswith("within")]
        chosen = max(within or at_largest.values(), key=lambda r: r["throughput_images_per_s"])
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


def engine_form(row: dict[str, Any]) -> tuple[str, str | None]:
    """An engine's precision and input form (None: normalized float; "uint8": raw pixels)."""
    return row["precision"], row.get("input")


def precision_label(row: dict[str, Any]) -> str:
    """"int8", or "int8 on uint8 pixels" for a model that normalizes raw pixels in its graph."""
    return row["precision"] + (f" on {row['input']} pixels" if row.get("input") else "")


def render_summary(report: dict[str, Any]) -> list[str]:
    summary = report.get("summary") or []
    if not summary:
        return []
    stand_in = any("stand_in_for" in s for s in summary)
    lines = ["## At a glance", "",
             "Each model's deployed engine: the fastest at the largest batch within every budget (or the fastest, "
             "where none is or no budget applies)."
             + (" Measured on this machine's stand-in runtime, not on the target." if stand_in else ""), "",
             "| model | deployed | top-1 % | vs fp32 (points) | p50 ms, smallest batch | p50 ms, largest batch | "
             "size KB | peak MB | speed-up over fp32 | budget |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        drop = s["drop_from_fp32_points"]
        speedup = s["speedup_over_fp32"]
        lines.append(
            f"| {model_label(s['model'])} | {s['runtime']} {precision_label(s)} (computes in {s['compute_precision']}) | "
            f"{_pct(s['test_accuracy'])} | {'–' if drop is None else f'{round(-drop, 2) + 0.0:+.2f}'} | "
            f"{s['latency_p50_ms_smallest_batch']:.3f} (batch {s['smallest_batch']}) | "
            f"{s['latency_p50_ms_largest_batch']:.3f} (batch {s['largest_batch']}) | "
            f"{s['file_size_bytes'] / 1024:.0f} | {s['peak_memory_mb']:.1f} | "
            f"{'–' if speedup is None else f'{speedup:.2f}×'} | {s['budget'] or '–'} |")
    return lines + [""]


def render_timings(report: dict[str, Any]) -> list[str]:
    timings = report.get("timings") or {}
    if not timings:
        return []
    lines = ["", "## Time per task", "", "Estimated before the run from this machine's measured speed, and measured:",
             "", "| task | estimated s | measured s | measured / estimated |", "| --- | --- | --- | --- |"]
    for role, t in timings.items():
        lines.append(f"| {role} | {t['estimated_s']:.1f} | {t['measured_s']:.1f} | "
                     f"{t['measured_s'] / t['estimated_s']:.2f} |")
    return lines


def render_speedups(report: dict[str, Any]) -> list[str]:
    """Reduced precision against fp32 on the same runtime, measured in the same run, at the largest batch."""
    batch = report["plot_batch_size"]
    lines = []
    for model in report["models"]:
        engines = [r for r in report["rows"]
                   if r["model"] == model and r["runtime"] != "pytorch" and r["batch_size"] == batch]
        for form in dict.fromkeys(r.get("input") for r in engines):
            rows = {r["precision"]: r for r in engines if r.get("input") == form}
            if "fp32" not in rows:
                continue
            ratios = [f"{p} {rows[p]['throughput_images_per_s'] / rows['fp32']['throughput_images_per_s']:.2f}× "
                      f"({_pct(rows[p]['test_accuracy'])} % vs {_pct(rows['fp32']['test_accuracy'])} %)"
                      for p in ("int8", "fp16") if p in rows]
            if ratios:
                lines.append(f"- {model_label(model)}{f' on {form} pixels' if form else ''}: " + ", ".join(ratios))
    if not lines:
        return []
    return ["", f"Throughput against fp32 on the same runtime at batch {batch} (mean latency, measured in the "
            f"same run; top-1 in brackets):", "", *lines]


def plot(report: dict[str, Any], path) -> None:
    """Accuracy against p50 latency at the largest batch: colour is the model, marker the artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    batch = report["plot_batch_size"]
    artifacts = sorted({(r["runtime"], precision_label(r)) for r in report["rows"]})
    markers = {a: "osD^vP*Xhd<>"[i % 12] for i, a in enumerate(artifacts)}
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, model in enumerate(report["models"]):
        for r in (r for r in report["rows"] if r["model"] == model and r["batch_size"] == batch):
            ax.scatter(r["latency_p50_ms"], 100 * r["test_accuracy"], color=f"C{i}", s=60,
                       marker=markers[(r["runtime"], precision_label(r))], edgecolors="black", linewidths=0.5)
    model_handles = [Line2D([], [], color=f"C{i}", marker="o", linestyle="", label=model_label(m))
                     for i, m in enumerate(report["models"])]
    artifact_handles = [Line2D([], [], color="grey", marker=markers[a], linestyle="", label=f"{a[0]} {a[1]}")
                        for a in artifacts]
    first = ax.legend(handles=model_handles, title="model", fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))
    ax.add_artist(first)
    ax.legend(handles=artifact_handles, title="artifact", fontsize=8, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    ax.set_xlabel(f"p50 latency per batch of {batch} (ms) on {report['machine']['cpu']}")
    ax.set_ylabel("top-1 accuracy on the test split (%)")
    ax.set_title(f"{report['profile']}: accuracy versus latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


CURVES_PLOT = "training_curves.png"


def plot_curves(report: dict[str, Any], path) -> None:
    """One panel per model: training loss per epoch (left axis), train and test top-1 (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {m: h for m, h in report["curves"].items() if h}
    columns = min(3, len(curves))
    rows = -(-len(curves) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, (model, history) in zip(axes.flat, curves.items()):
        epochs = [e["epoch"] for e in history]
        ax.plot(epochs, [e["loss"] for e in history], color="C0", marker="o", markersize=3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{model_label(model)} ({report['archs'][model]})", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("training loss", color="C0", fontsize=8)
        accuracy_axis = ax.twinx()
        accuracy_axis.plot(epochs, [100 * e["train_accuracy"] for e in history], color="C1", label="train",
                           marker="o", markersize=3)
        if all("test_accuracy" in e for e in history):
            accuracy_axis.plot(epochs, [100 * e["test_accuracy"] for e in history], color="C2", label="test",
                               marker="o", markersize=3)
        accuracy_axis.set_ylabel("top-1 %", fontsize=8)
        accuracy_axis.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_teacher_entropy(teacher: str, analysis: dict[str, Any], path) -> None:
    """The paper's Fig. 3: the teacher's output entropy (and accuracy) with each single block dropped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = analysis["single_block_dropped"]
    x = [b["stochastic_block"] for b in blocks]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x, [b["entropy"] for b in blocks], color="C0", alpha=0.8, label="one block removed")
    ax.axhline(analysis["deterministic"]["entropy"], color="black", linestyle="--", label="no block removed")
    if "samples" in analysis:
        ax.axhline(analysis["samples"]["entropy_per_sample"], color="C3", linestyle=":",
                   label=f"sampled sub-networks (mean of {analysis['samples']['k']})")
    ax.set_xlabel("stochastic block, by depth")
    ax.set_ylabel("mean entropy of the teacher's outputs (nats)")
    accuracy_axis = ax.twinx()
    accuracy_axis.plot(x, [100 * b["accuracy"] for b in blocks], color="C1", marker="o", label="top-1 %")
    accuracy_axis.set_ylabel("top-1 accuracy (%)", color="C1")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{TEACHER_NAMES[teacher_reading(teacher)]}: output entropy with a single block removed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def training_history(artifact, member: str | None) -> list[dict[str, float]]:
    """The per-epoch history of a trained model: in its own folder, or its artifact's (DML peers)."""
    for folder in (artifact.model_folder(member), artifact.path):
        if (folder / "history.json").is_file():
            return json.loads((folder / "history.json").read_text())
    return []


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
        "comparison": method_comparison(training),
        "training": training,
        # Only knowledge distillation has teachers to analyse; a DML-only profile has none.
        "analyses": {role.split(":", 1)[1]: stage_input.metrics for role, stage_input in ctx.inputs.items()
                     if role.startswith("analysis:")},
        # Per-epoch loss and accuracy of each model as it trained (peers trained together share theirs).
        "curves": {m: training_history(ctx.inputs[f"train:{m}"], members.get(m)) for m in models},
        "plot_batch_size": batch,
        "rows": rows,
        "summary": deployed_summary(rows, models),
        "budgets": budgets,
        "hardware": hardware,
        "estimate": estimate,
        # Estimated before the run and measured, for every task the report reads.
        "timings": {role: {"estimated_s": timing.get("estimated_s"), "measured_s": timing.get("wall_s")}
                    for role, stage_input in ctx.inputs.items()
                    for timing in [stage_input.manifest.get("timings", {})] if timing.get("estimated_s")},
        "target_backend_missing": first.get("target_backend_missing"),
        "power": first.get("power", {}),
    }
    (ctx.output / "report.json").write_text(json.dumps(report, indent=1))
    (ctx.output / "report.md").write_text(render_markdown(report))
    plot(report, ctx.output / "report.png")
    if any(report["curves"].values()):
        plot_curves(report, ctx.output / CURVES_PLOT)
    for teacher, analysis in report["analyses"].items():
        if analysis["single_block_dropped"]:
            plot_teacher_entropy(teacher, analysis, ctx.output / entropy_plot_name(teacher))
    return {"comparison": report["comparison"]}
