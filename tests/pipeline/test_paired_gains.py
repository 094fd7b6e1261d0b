"""A method's gain over its baseline, paired by seed, with a 95 % t interval."""

import pytest

from pipeline.paired_gains import comparisons, interval, paired_gains, render_paired_gains
from pipeline.sweep import render_markdown, summarize


def test_the_interval_is_students_t_with_n_minus_1_degrees_of_freedom():
    mean, low, high = interval([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.3027; sd 1; n 3.
    assert mean == 2.0 and high - mean == pytest.approx(4.3027 / 3 ** 0.5, rel=1e-4) and low == pytest.approx(4 - high)
    assert interval([0.7]) == (0.7, None, None)


def test_each_method_is_compared_with_its_own_baselines():
    models = ["teacher", "student", "kd", "stochastic_kd", "plain_teacher", "plain_kd", "plain_stochastic_kd",
              "dml_conventional_1", "dml_proposed_1"]
    assert comparisons(models) == [("stochastic_kd", "kd"), ("stochastic_kd", "student"), ("kd", "student"),
                                   ("plain_stochastic_kd", "plain_kd"), ("plain_stochastic_kd", "student"),
                                   ("plain_kd", "student"), ("dml_proposed_1", "dml_conventional_1")]


def test_differences_are_paired_by_seed_and_a_finding_only_when_the_interval_excludes_zero():
    axes = [("distill.p_last", ["0.5", "0.9"]), ("seed", ["0", "1", "2"])]
    # At 0.5 stochastic KD beats KD by 1 point on every seed although the seeds spread by 10 points;
    # at 0.9 it wins on two seeds and loses on one.
    runs = {(0.5, 0): (0.50, 0.49), (0.5, 1): (0.60, 0.59), (0.5, 2): (0.40, 0.39),
            (0.9, 0): (0.52, 0.49), (0.9, 1): (0.58, 0.59), (0.9, 2): (0.42, 0.39)}
    results = [{"point": {"distill.p_last": p, "seed": s}, "accuracy": {"stochastic_kd": a, "kd": b}}
               for (p, s), (a, b) in runs.items()]
    gains = paired_gains(summarize(results, axes), ["kd", "stochastic_kd"])
    steady, mixed = gains
    assert steady["differences"] == pytest.approx([1.0, 1.0, 1.0]) and steady["finding"]
    assert mixed["differences"] == pytest.approx([3.0, -1.0, 3.0]) and not mixed["finding"]
    lines = "\n".join(render_paired_gains(gains, ["distill.p_last"], {"kd": "KD", "stochastic_kd": "stochastic KD"}))
    assert "| 0.5 | stochastic KD − KD | +1.00, +1.00, +1.00 | +1.00 | [+1.00, +1.00] | yes, a gain |" in lines
    assert "| 0.9 | stochastic KD − KD | +3.00, -1.00, +3.00 | +1.67 |" in lines and "no (holds zero)" in lines
    table = render_markdown(summarize(results, axes), axes, "p", ["kd", "stochastic_kd"], {})
    assert "## Gains paired by seed" in table


def test_one_seed_gives_no_paired_section():
    axes = [("distill.p_last", ["0.5"])]
    results = [{"point": {"distill.p_last": 0.5}, "accuracy": {"stochastic_kd": 0.5, "kd": 0.4}}]
    assert "Gains paired" not in render_markdown(summarize(results, axes), axes, "p", ["kd", "stochastic_kd"], {})
