"""The report as markdown: the table at a glance, the knowledge-transfer results, the teacher analyses,
each model's recipe, the deployed artifacts with their budgets, and the time per task."""

from __future__ import annotations

from typing import Any

from stages.deploy.budgets import render_estimate
from stages.reporting.names import TEACHER_NAMES, model_label, pct, precision_label, teacher_reading
from stages.reporting.plots import CURVES_PLOT, entropy_plot_name
from stages.reporting.recipe import render_recipes


def render_analysis(teacher: str, analysis: dict[str, Any], names: dict[str, str] = TEACHER_NAMES) -> list[str]:
    name = names[teacher_reading(teacher)]
    droppable = len(analysis["single_block_dropped"])
    lines = ["", f"## What the {name} teaches with", "",
             f"{droppable} of its blocks can drop (its residual branches with a survival below 1; for a timm "
             f"network, its own DropPath positions). "
             f"Sampled as it teaches: p_n {analysis['teaching_p_last']:g}, kept blocks at the "
             + ("scale they were trained with" if analysis["kept_scale"] == "trained"
                else "expectation-preserving scale (divided by the teaching survival)") + ". "
             f"On {analysis['images']} test images, the deterministic teacher's outputs have a mean "
             f"entropy of {analysis['deterministic']['entropy']:.3f} nats "
             f"(top-1 {pct(analysis['deterministic']['accuracy'])} %)."]
    samples = analysis.get("samples")
    if samples:
        lines += [f"Its {samples['k']} sampled sub-networks average {samples['entropy_per_sample']:.3f} nats "
                  f"(top-1 {pct(samples['accuracy_per_sample'])} %); the average of their distributions "
                  f"has {samples['entropy_of_average']:.3f} nats (top-1 {pct(samples['accuracy_of_average'])} %)."]
    if analysis["single_block_dropped"]:
        lines += ["", "Each row: the deterministic network with exactly that one block removed (Fig. 3).", "",
                  "| stochastic block (by depth) | teaching survival p_i | entropy with only it removed | top-1 % |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {b['stochastic_block']} | {b['survival']:.3f} | {b['entropy']:.3f} | {pct(b['accuracy'])} |"
                  for b in analysis["single_block_dropped"]]
        lines += ["", f"![{name}: entropy with one block removed]({entropy_plot_name(teacher)})"]
    return lines


def render_paper(report: dict[str, Any]) -> list[str]:
    """The paper's printed figures beside the measured ones, where the profile reproduces a row."""
    paper = report.get("paper")
    if not paper or not paper["models"]:
        return []
    nets = " and ".join(paper["nets"])
    lines = ["", f"### Printed in the paper (Table {paper['table']}, {nets})", "",
             "Top-1 % on the test split: as printed, as measured here (one seed, the schedule in the Recipe "
             "section), and measured minus printed. The reading says how the paper's transfer was taken.", "",
             "| model | paper's column | printed | measured | difference | reading |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {model_label(model)} | {e['column_name']} | {e['printed']:.2f} | {e['measured']:.2f} | "
              f"{e['difference']:+.2f} | {e['reading']} |" for model, e in paper["models"].items()]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    names = report.get("teacher_names", TEACHER_NAMES)
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
                     f"{names[reading] if reading else '–'} | {pct(acc)} |"
                     + (f" {pct(report['training'][model].get('validation_accuracy'))} |" if validated else ""))
    teacher = report["training"].get("teacher", {})
    if teacher.get("sampled_subnetwork_accuracy_std"):
        lines += ["", f"The stochastic-depth teacher's sub-networks at its own p_n, each drawn once, score "
                  f"{pct(teacher['sampled_subnetwork_accuracy_mean'])} ± "
                  f"{pct(teacher['sampled_subnetwork_accuracy_std'])} % on the test split "
                  f"(mean ± std over independently drawn sub-networks)."]
    comparison = report["comparison"]
    for reading, gains in comparison.get("by_teacher", {}).items():
        name = gains["transfer"].upper()
        lines += ["", f"With the {names[reading]}: stochastic {name} gains "
                  f"{100 * gains['gain_over_deterministic']:+.2f} points over {name} from the same teacher without "
                  f"dropping and {100 * gains['gain_over_student_alone']:+.2f} over the student trained alone (one "
                  f"seed; same recipe and budget for all three)."]
    if "dml_gain" in comparison:
        lines += ["", f"Proposed DML peers average {pct(comparison['dml_mean_proposed'])} %, conventional ones "
                  f"{pct(comparison['dml_mean_conventional'])} % ({100 * comparison['dml_gain']:+.2f} points; "
                  f"one seed, same recipe)"
                  + (f"; each peer network trained alone (independent learning) averages "
                     f"{pct(comparison['dml_mean_independent'])} %." if "dml_mean_independent" in comparison
                     else ".")]
    lines += render_paper(report)
    if any(report.get("curves", {}).values()):
        lines += ["", "Training loss and top-1 per epoch (test top-1 where it was measured after every epoch):", "",
                  f"![training curves]({CURVES_PLOT})"]
    for teacher, analysis in report["analyses"].items():
        lines += render_analysis(teacher, analysis, names)
    lines += render_recipes(report.get("recipes", {}))
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
            f"{r['batch_size']} | {pct(r['test_accuracy'])} | {r['latency_p50_ms']:.3f} | "
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
    unjudged = report.get("unjudged_latency_budgets")
    if unjudged:
        timed = sorted({r["batch_size"] for r in report["rows"]})
        lines += ["", f"**Latency budgets not judged.** target.budgets.latency_ms sets a budget at batch "
                  f"{', '.join(map(str, unjudged))}, which the benchmark did not time (it timed batch "
                  f"{', '.join(map(str, timed))}): no engine is over or within it. Add the batch to "
                  f"benchmark.batch_sizes to judge it."]
    disturbed = [r for r in report["rows"] if r.get("disturbed")]
    if disturbed:
        lines += ["", "**Disturbed measurements.** Other processes used more than 10 % of this machine's cores "
                  "(or of its GPU) while these were timed, even after a rerun, so their latencies measure the "
                  "neighbours too: "
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


def render_summary(report: dict[str, Any]) -> list[str]:
    summary = report.get("summary") or []
    if not summary:
        return []
    stand_in = any("stand_in_for" in s for s in summary)
    lines = ["## At a glance", "",
             "Each model's deployed engine: the fastest at the largest batch within every budget (or of all, "
             "where none is or no budget applies), unless it is not clearly faster (its 90th-percentile latency "
             "below the other's median): then the most accurate of the engines as fast."
             + (" Measured on this machine's stand-in runtime, not on the target." if stand_in else ""), "",
             "| model | deployed | top-1 % | vs fp32 (points) | p50 ms, smallest batch | p50 ms, largest batch | "
             "size KB | peak MB | speed-up over fp32 | budget |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        drop = s["drop_from_fp32_points"]
        speedup = s["speedup_over_fp32"]
        lines.append(
            f"| {model_label(s['model'])} | {s['runtime']} {precision_label(s)} (computes in {s['compute_precision']}) | "
            f"{pct(s['test_accuracy'])} | {'–' if drop is None else f'{round(-drop, 2) + 0.0:+.2f}'} | "
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
                      f"({pct(rows[p]['test_accuracy'])} % vs {pct(rows['fp32']['test_accuracy'])} %)"
                      for p in ("int8", "fp16") if p in rows]
            if ratios:
                lines.append(f"- {model_label(model)}{f' on {form} pixels' if form else ''}: " + ", ".join(ratios))
    if not lines:
        return []
    return ["", f"Throughput against fp32 on the same runtime at batch {batch} (mean latency, measured in the "
            f"same run; top-1 in brackets):", "", *lines]
