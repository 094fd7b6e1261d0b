"""The gains of stochastic transfer over its baselines from a sweep over seeds, as paired differences.

    python bench/paired_gains.py artifacts/PROFILE/sweep-distill.p_last-seed/sweep.json

For each teacher reading (the models ``stochastic_kd``, ``kd``, ``student`` and their ``plain_``
counterparts), the teaching p_n is the one the sweep chose on the validation split; at that point,
each seed's test accuracy difference (stochastic KD minus KD, stochastic KD minus the student alone)
is paired by seed, and its mean is given with a 95 % t interval. A difference is a finding only when
the interval excludes zero; the script says which do. Figures printed, nothing asserted.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t interval of paired differences."""
    from scipy.stats import t

    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, float("nan"), float("nan")
    half = t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def main(path: Path) -> None:
    sweep = json.loads(path.read_text())
    rows, chosen = sweep["summary"], sweep["chosen_by_validation"]
    seeds = len(rows[0]["accuracy"][next(iter(rows[0]["accuracy"]))]["values"])
    print(f"{path}: {len(rows)} points of {', '.join(rows[0]['point'])}, {seeds} seeds each\n")
    print(f"{'comparison':44s} {'chosen p_n':>10s} {'mean (points)':>14s} {'95 % interval':>20s}  finding")
    for prefix, reading in (("", "stochastic-depth teacher"), ("plain_", "plain teacher")):
        method = f"{prefix}stochastic_kd"
        if method not in chosen:
            continue
        point = chosen[method]["point"]
        row = next(r for r in rows if r["point"] == point)
        test = {model: row["accuracy"][model]["values"] for model in row["accuracy"]}
        for baseline, name in ((f"{prefix}kd", "KD"), ("student", "student alone")):
            differences = [100 * (a - b) for a, b in zip(test[method], test[baseline])]
            mean, low, high = interval(differences)
            finding = "yes" if low > 0 or high < 0 else "no (the interval holds zero)"
            where = ", ".join(f"{k} {v}" for k, v in point.items())
            print(f"{'stochastic KD - ' + name + ' (' + reading + ')':44s} {where:>10s} {mean:+14.2f} "
                  f"{f'[{low:+.2f}, {high:+.2f}]':>20s}  {finding}")
            print(f"{'':44s} per seed: {', '.join(f'{d:+.2f}' for d in differences)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
