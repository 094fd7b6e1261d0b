"""Sweeps: one profile run at every point of a grid of settings, sharing every cached stage that
the points have in common (a teacher is trained once for all values of a distillation setting),
then one table and one plot of the models' accuracies across the grid. A ``seed`` axis becomes
mean ± std over seeds. Where the profile holds out a validation split, each model's setting is
chosen by its mean validation accuracy, and the test accuracy of that choice is reported beside it:
nothing is chosen by the test split."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from stages.common.errors import PipelineError
from stages.reporting.recipe import render_recipes
from pipeline.paired_gains import paired_gains, render_paired_gains
from pipeline.profiles import load_profile, parse_override


def split_values(text: str) -> list[str]:
    """``"0.5,0.6"`` -> ["0.5", "0.6"]; commas inside brackets stay (``"[1,8],[64]"``)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if any(not v for v in values):
        raise PipelineError(f"--over values {text!r}: an empty value; separate values with commas")
    return values


def parse_axes(overs: list[str]) -> list[tuple[str, list[str]]]:
    axes = []
    for text in overs:
        key, sep, values = text.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise PipelineError(f"--over {text!r}: expected key.path=value1,value2,... "
                                f"e.g. --over distill.p_last=0.5,0.7,0.9")
        axes.append((key.strip(), split_values(values)))
        parsed = [repr(parse_override(f"{key.strip()}={v}")[1]) for v in axes[-1][1]]
        twice = next((v for v, seen in zip(axes[-1][1], parsed) if parsed.count(seen) > 1), None)
        if twice is not None:  # the same point twice would be counted as two runs in the mean and spread
            raise PipelineError(f"--over {text!r}: the value {twice!r} comes twice; give each value once")
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise PipelineError(f"--over names a key twice: {', '.join(keys)}")
    return axes


def point_profile(profile, overrides: list[str] | None, point: dict[str, str]):
    """The profile at one point of a grid: its --set overrides, then the point's settings; a bad value
    is named as coming from that point."""
    settings = ", ".join(f"{k}={v}" for k, v in point.items())
    sources = (["--set"] if overrides else []) + ([f"--over point {settings}"] if point else [])
    return load_profile(profile, [*(overrides or []), *(f"{k}={v}" for k, v in point.items())],
                        overrides_from=", ".join(sources))


def refuse_points_that_differ_in_nothing(points: list[dict[str, str]], plans: list[list], until: str) -> None:
    """Two points whose tasks have the same keys would be one run counted twice: a swept key that no
    stage up to ``until`` reads (name, a benchmark setting) or values that mean the same there."""
    seen: dict[tuple, str] = {}
    for point, plan in zip(points, plans):
        keys, shown = tuple(sorted(task.key for task in plan)), " ".join(f"{k}={v}" for k, v in point.items())
        if keys in seen:
            raise PipelineError(f"--over: the points {seen[keys]} and {shown} run the same tasks up to --until "
                                f"{until}, so the sweep would count one result twice; sweep a key those stages "
                                f"read, or set --until to the stage that reads it")
        seen[keys] = shown


def grid(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in axes))]


def point_values(point: dict[str, str]) -> dict[str, Any]:
    """The point's settings parsed as the profile reads them (YAML scalars)."""
    return {key: parse_override(f"{key}={value}")[1] for key, value in point.items()}


def summarize(results: list[dict[str, Any]], axes: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """One row per point of the non-seed axes: each model's accuracy, as mean ± std when seeded."""
    other = [k for k, _ in axes if k != "seed"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(tuple(result["point"][k] for k in other), []).append(result)
    rows = []
    for values, members in groups.items():
        row: dict[str, Any] = {"point": dict(zip(other, values)), "runs": len(members), "accuracy": {}}
        for split in ("accuracy", "validation", "training"):
            for model in members[0].get(split, {}):
                if all(model in m.get(split, {}) for m in members):
                    row.setdefault(split, {})[model] = _mean_std([m[split][model] for m in members])
        rows.append(row)
    return rows


def last_training_accuracy(artifact, member: str | None) -> float | None:
    """A trained model's accuracy on its training images in its last epoch (as it trained: augmented,
    with its blocks dropped where it trains so), from its history; None where it kept none."""
    try:
        history = json.loads(artifact.file(f"{member}/history.json" if member else "history.json").read_text())
        return float(history[-1]["train_accuracy"])
    except (OSError, ValueError, LookupError, TypeError):
        return None


def _mean_std(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def unchanged_by_axes(results: list[dict[str, Any]], axes) -> set[str]:
    """The models that are one task at every point of the non-seed axes, seed by seed (the student
    alone in a sweep of the teaching p_n): no point of the grid is chosen for them. Empty where the
    results carry no task keys."""
    other = [k for k, _ in axes if k != "seed"]
    if not other or not all("tasks" in result for result in results):
        return set()
    keys: dict[str, dict[tuple, set[str]]] = {}
    for result in results:
        point = tuple(result["point"][k] for k in other)
        for model, key in result["tasks"].items():
            keys.setdefault(model, {}).setdefault(point, set()).add(key)
    return {model for model, by_point in keys.items()
            if len(by_point) > 1 and len({frozenset(seen) for seen in by_point.values()}) == 1}


def choose_by_validation(summary: list[dict[str, Any]], unchanged: set[str] = frozenset()
                         ) -> dict[str, dict[str, Any]]:
    """For each model: the point with the best mean validation accuracy (the first of equals), and
    the test accuracy there; point None for a model in ``unchanged`` (the grid does not change it).
    Empty where the runs held out no validation split."""
    if not all("validation" in row for row in summary):
        return {}
    chosen = {}
    for model in summary[0]["validation"]:
        best = max(summary, key=lambda row: row["validation"][model]["mean"])
        chosen[model] = {"point": None if model in unchanged else best["point"],
                         "validation": best["validation"][model], "test": best["accuracy"][model]}
    return chosen


def render_markdown(summary: list[dict[str, Any]], axes, profile: str, models: list[str], labels,
                    recipes: dict[str, dict[str, Any]] | None = None, printed: dict[str, dict] | None = None,
                    unchanged: set[str] = frozenset(), chosen: dict[str, dict[str, Any]] | None = None,
                    gains: list[dict[str, Any]] | None = None) -> str:
    """The sweep's tables, then the first point's recipes: every other point differs from it only
    in the swept keys. ``unchanged``: the models the grid does not change (``unchanged_by_axes``);
    ``chosen`` and ``gains``: ``choose_by_validation`` and ``paired_gains`` where sweep.json has them
    already (computed here otherwise)."""
    other = [k for k, _ in axes if k != "seed"]
    seeds = next((values for k, values in axes if k == "seed"), None)
    lines = [f"# Sweep of {profile} over {', '.join(k for k, _ in axes)}", ""]
    if seeds:
        lines += [f"Top-1 % on the test split, mean ± std over seeds {', '.join(seeds)}.", ""]
    else:
        lines += ["Top-1 % on the test split, one run per point.", ""]
    lines.append("| " + " | ".join(other + [labels.get(m, m) for m in models]) + " |")
    lines.append("|" + " --- |" * (len(other) + len(models)))
    for row in summary:
        cells = [str(row["point"][k]) for k in other]
        cells += [_cell(row["accuracy"][model], seeds) for model in models]
        lines.append("| " + " | ".join(cells) + " |")
    chosen = choose_by_validation(summary, unchanged) if chosen is None else chosen
    if chosen:
        lines += ["", "Top-1 % on the validation split held out of the training images, at every point:", "",
                  "| " + " | ".join(other + [labels.get(m, m) for m in models]) + " |",
                  "|" + " --- |" * (len(other) + len(models))]
        lines += ["| " + " | ".join([str(row["point"][k]) for k in other]
                                    + [_cell(row["validation"][model], seeds) for model in models]) + " |"
                  for row in summary]
    if all("training" in row for row in summary):
        lines += ["", "Top-1 % on the training images in the last epoch of training (augmented, and with blocks "
                      "dropped for a network that trains so), at every point: how far each model fits what it "
                      "learns from, beside the test split above.", "",
                  "| " + " | ".join(other + [labels.get(m, m) for m in models]) + " |",
                  "|" + " --- |" * (len(other) + len(models))]
        # "–": a model trained elsewhere (an imported teacher) has no history here.
        lines += ["| " + " | ".join([str(row["point"][k]) for k in other]
                                    + [_cell(row["training"][model], seeds) if model in row["training"] else "–"
                                       for model in models]) + " |"
                  for row in summary]
    if chosen and other:
        lines += ["", "## Chosen on the validation split", "",
                  "Each model's point with the best mean accuracy on the validation split held out of the training "
                  "images, and its test accuracy there"
                  + ("; \"any\": the swept settings leave that model as it is: one training task at every point."
                     if any(chosen[model]["point"] is None for model in models) else "."), "",
                  "| model | " + " | ".join(other) + " | validation % | test % |",
                  "|" + " --- |" * (len(other) + 3)]
        for model in models:
            pick = chosen[model]
            where = ["any"] * len(other) if pick["point"] is None else [str(pick["point"][k]) for k in other]
            lines.append("| " + " | ".join([labels.get(model, model), *where,
                                            _cell(pick["validation"], seeds), _cell(pick["test"], seeds)]) + " |")
    lines += render_printed(summary, other, labels, printed or {}, bool(seeds))
    lines += render_paired_gains(paired_gains(summary, models) if gains is None else gains, other, labels)
    if recipes:
        lines += render_recipes(recipes, f" These are the first point's; the other points differ from it in "
                                         f"{', '.join(k for k, _ in axes)} alone.")
    return "\n".join(lines) + "\n"


def render_printed(summary: list[dict[str, Any]], other: list[str], labels, printed: dict[str, dict],
                   seeded: bool) -> list[str]:
    """The paper's printed figure beside each model's measured one, at every point."""
    if not printed:
        return []
    lines = ["", "## Printed in the paper", "",
             "Top-1 %: as printed, as measured here" + (" (mean ± std over seeds)" if seeded else "")
             + ", and measured minus printed; the reading says how the paper's transfer was taken.", "",
             "| " + " | ".join(other) + (" | " if other else "")
             + "model | printed | measured | difference | reading |",
             "|" + " --- |" * (len(other) + 5)]
    for row in summary:
        for model, entry in printed.items():
            measured = row["accuracy"][model]
            cells = [str(row["point"][k]) for k in other]
            cells += [labels.get(model, model), f"{entry['printed']:.2f}", _cell(measured, seeded),
                      f"{100 * measured['mean'] - entry['printed']:+.2f}", entry["reading"]]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(accuracy: dict[str, Any], seeded) -> str:
    return f"{100 * accuracy['mean']:.2f} ± {100 * accuracy['std']:.2f}" if seeded else f"{100 * accuracy['mean']:.2f}"


def plot(summary: list[dict[str, Any]], axes, models: list[str], labels, path: Path) -> bool:
    """Accuracy against the one non-seed axis, if there is exactly one and it is numeric."""
    other = [k for k, _ in axes if k != "seed"]
    if len(other) != 1:
        return False
    xs = [row["point"][other[0]] for row in summary]
    if not all(isinstance(x, (int, float)) for x in xs):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(xs)), key=lambda i: xs[i])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, model in enumerate(models):
        means = [100 * summary[j]["accuracy"][model]["mean"] for j in order]
        stds = [100 * summary[j]["accuracy"][model]["std"] for j in order]
        ax.errorbar([xs[j] for j in order], means, yerr=stds, color=f"C{i}", marker="o", capsize=3,
                    label=labels.get(model, model))
    ax.set_xlabel(other[0])
    ax.set_ylabel("top-1 accuracy on the test split (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_sweep(destination: Path, results, axes, profile: str, models: list[str], labels,
                printed: dict[str, dict] | None = None) -> list[Path]:
    destination.mkdir(parents=True, exist_ok=True)
    summary, unchanged = summarize(results, axes), unchanged_by_axes(results, axes)
    chosen, gains = choose_by_validation(summary, unchanged), paired_gains(summary, models)
    written = [destination / "sweep.json", destination / "sweep.md"]
    written[0].write_text(json.dumps({"profile": profile, "axes": axes, "results": results, "summary": summary,
                                      "chosen_by_validation": chosen, "paired_gains": gains,
                                      **({"printed": printed} if printed else {})}, indent=1))
    written[1].write_text(render_markdown(summary, axes, profile, models, labels, results[0].get("recipes"), printed,
                                          unchanged, chosen, gains))
    if plot(summary, axes, models, labels, destination / "sweep.png"):
        written.append(destination / "sweep.png")
    return written
