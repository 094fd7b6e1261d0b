"""A method's gain over its baseline across seeds, as the paired difference of their test accuracies
with a 95 % t interval: a difference is a finding only when its interval excludes zero.

Pairs are made by seed: each run of a sweep point trains the method and its baseline with the same
seed, data and budget, so seed-to-seed variation common to both cancels in their difference.
"""

from __future__ import annotations

import statistics
from typing import Any

TRANSFERS = ("kd", "at")
READINGS = ("", "plain_")  # the stochastic-depth teacher's models, and the plain teacher's


def comparisons(models: list[str]) -> list[tuple[str, str]]:
    """(method, baseline) pairs among ``models``: stochastic transfer against transfer from the same
    teacher without dropping and against the student alone; that transfer against the student alone
    (whether the teacher teaches at all, which the stochastic method's comparison with it rests on);
    proposed DML peers against conventional."""
    pairs = []
    for prefix in READINGS:
        for transfer in TRANSFERS:
            method, deterministic = f"{prefix}stochastic_{transfer}", f"{prefix}{transfer}"
            pairs += [(model, baseline) for model, baseline in
                      ((method, deterministic), (method, "student"), (deterministic, "student"))
                      if model in models and baseline in models]
    pairs += [(model, model.replace("proposed", "conventional")) for model in models
              if model.startswith("dml_proposed_") and model.replace("proposed", "conventional") in models]
    return pairs


def interval(differences: list[float]) -> tuple[float, float | None, float | None]:
    """Mean and 95 % t interval of paired differences (no interval from a single pair)."""
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, None, None
    from scipy.stats import t

    half = float(t.ppf(0.975, len(differences) - 1)) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def paired_gains(summary: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """For every sweep point and comparison: each seed's difference (points), their mean and interval.
    A summary row's per-model ``values`` come from the same runs in the same order, so the i-th values
    of two models share a seed."""
    rows = []
    for row in summary:
        accuracy = row["accuracy"]
        for method, baseline in comparisons(models):
            differences = [100 * (a - b) for a, b in zip(accuracy[method]["values"], accuracy[baseline]["values"])]
            mean, low, high = interval(differences)
            rows.append({"point": row["point"], "method": method, "baseline": baseline, "differences": differences,
                         "mean": mean, "low": low, "high": high,
                         "finding": low is not None and (low > 0 or high < 0)})
    return rows


def render_paired_gains(rows: list[dict[str, Any]], other: list[str], labels: dict[str, str]) -> list[str]:
    """The sweep's section of paired gains: one line per point and comparison."""
    if not rows or len(rows[0]["differences"]) < 2:
        return []
    lines = ["", "## Gains paired by seed", "",
             "Each method's test accuracy minus its baseline's, seed by seed (same data, recipe and budget), in "
             "points: the mean with its 95 % t interval. A difference is a finding only when the interval excludes "
             "zero.", "",
             "| " + " | ".join(other) + (" | " if other else "")
             + "comparison | per seed | mean | 95 % interval | finding |",
             "|" + " --- |" * (len(other) + 5)]
    for gain in rows:
        cells = [str(gain["point"][k]) for k in other]
        name = f"{labels.get(gain['method'], gain['method'])} − {labels.get(gain['baseline'], gain['baseline'])}"
        finding = ("yes, a gain" if gain["mean"] > 0 else "yes, a loss") if gain["finding"] else "no (holds zero)"
        cells += [name, ", ".join(f"{d:+.2f}" for d in gain["differences"]), f"{gain['mean']:+.2f}",
                  f"[{gain['low']:+.2f}, {gain['high']:+.2f}]", finding]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
