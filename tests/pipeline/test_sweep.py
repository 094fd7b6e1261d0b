from pathlib import Path

import pytest

from stages.common.errors import PipelineError
from pipeline.sweep import grid, parse_axes, point_values, render_markdown, split_values, summarize

TINY = Path(__file__).resolve().parents[1] / "profiles" / "tiny.yaml"


def test_values_split_on_commas_outside_brackets():
    assert split_values("0.5,0.6, 0.7") == ["0.5", "0.6", "0.7"]
    assert split_values("[1,8],[64]") == ["[1,8]", "[64]"]
    with pytest.raises(PipelineError, match="an empty value"):
        split_values("0.5,,0.6")


def test_axes_and_grid():
    axes = parse_axes(["distill.p_last=0.5,0.9", "seed=0,1,2"])
    points = grid(axes)
    assert len(points) == 6 and points[0] == {"distill.p_last": "0.5", "seed": "0"}
    assert point_values(points[-1]) == {"distill.p_last": 0.9, "seed": 2}


@pytest.mark.parametrize("overs, message", [
    (["distill.p_last"], "expected key.path=value1,value2"),
    (["seed=1,2", "seed=3"], "names a key twice"),
    (["seed=0,1,0"], "--over 'seed=0,1,0': the value '0' comes twice; give each value once"),
    (["distill.p_last=0.5,0.50"], "the value '0.5' comes twice"),  # equal as the profile reads them
])
def test_bad_axes_are_explained(overs, message):
    with pytest.raises(PipelineError, match=message):
        parse_axes(overs)


def test_seeds_become_mean_and_std():
    axes = [("distill.p_last", ["0.5", "0.9"]), ("seed", ["0", "1"])]
    results = [{"point": {"distill.p_last": p, "seed": s}, "accuracy": {"kd": acc}}
               for (p, s), acc in zip([(0.5, 0), (0.5, 1), (0.9, 0), (0.9, 1)], [0.60, 0.62, 0.70, 0.70])]
    summary = summarize(results, axes)
    assert [row["point"] for row in summary] == [{"distill.p_last": 0.5}, {"distill.p_last": 0.9}]
    assert summary[0]["accuracy"]["kd"]["mean"] == pytest.approx(0.61)
    assert summary[0]["accuracy"]["kd"]["std"] == pytest.approx(0.0141421, rel=1e-4)
    assert summary[1]["accuracy"]["kd"]["std"] == 0.0
    table = render_markdown(summary, axes, "p", ["kd"], {"kd": "KD"})
    assert "| distill.p_last | KD |" in table and "| 0.5 | 61.00 ± 1.41 |" in table


def test_settings_are_chosen_by_validation_accuracy_and_reported_with_their_test_accuracy():
    from pipeline.sweep import choose_by_validation

    axes = [("distill.p_last", ["0.5", "0.9"]), ("seed", ["0", "1"])]
    # Validation prefers 0.5, the test split would prefer 0.9: the choice follows validation.
    runs = [(0.5, 0, 0.60, 0.50), (0.5, 1, 0.62, 0.52), (0.9, 0, 0.70, 0.40), (0.9, 1, 0.72, 0.42)]
    results = [{"point": {"distill.p_last": p, "seed": s}, "accuracy": {"stochastic_kd": test},
                "validation": {"stochastic_kd": val}} for p, s, test, val in runs]
    summary = summarize(results, axes)
    chosen = choose_by_validation(summary)["stochastic_kd"]
    assert chosen["point"] == {"distill.p_last": 0.5}
    assert chosen["test"]["mean"] == pytest.approx(0.61) and chosen["validation"]["mean"] == pytest.approx(0.51)
    table = render_markdown(summary, axes, "p", ["stochastic_kd"], {"stochastic_kd": "stochastic KD"})
    assert "## Chosen on the validation split" in table
    assert "| stochastic KD | 0.5 | 51.00 ± 1.41 | 61.00 ± 1.41 |" in table
    assert "| 0.9 | 41.00 ± 1.41 |" in table  # every point's validation accuracy


def test_a_model_the_grid_does_not_change_has_no_point_chosen_for_it():
    from pipeline.sweep import choose_by_validation, unchanged_by_axes

    axes = [("distill.p_last", ["0.5", "0.9"]), ("seed", ["0", "1"])]
    results = []
    for p in (0.5, 0.9):
        for s in (0, 1):
            # The student alone is one task per seed whatever p_n; a tie on validation would "choose" 0.5.
            tasks = {"student": f"student-{s}", "stochastic_kd": f"stochastic_kd-{s}-{p}"}
            results.append({"point": {"distill.p_last": p, "seed": s}, "tasks": tasks,
                            "accuracy": {"student": 0.6 + s / 100, "stochastic_kd": p / 2},
                            "validation": {"student": 0.7 + s / 100, "stochastic_kd": p / 3}})
    unchanged = unchanged_by_axes(results, axes)
    assert unchanged == {"student"}
    summary = summarize(results, axes)
    chosen = choose_by_validation(summary, unchanged)
    assert chosen["student"]["point"] is None and chosen["stochastic_kd"]["point"] == {"distill.p_last": 0.9}
    table = render_markdown(summary, axes, "p", ["student", "stochastic_kd"],
                            {"student": "student alone", "stochastic_kd": "stochastic KD"}, unchanged=unchanged)
    assert "| student alone | any | 70.50 ± 0.71 | 60.50 ± 0.71 |" in table
    assert "| stochastic KD | 0.9 |" in table
    # Without task keys (or with a single point) nothing is taken for unchanged.
    assert unchanged_by_axes([{k: v for k, v in r.items() if k != "tasks"} for r in results], axes) == set()
    assert unchanged_by_axes(results[:2], axes) == set()


def test_each_models_last_training_accuracy_is_tabulated_beside_its_test_accuracy(tmp_path):
    from pipeline.sweep import last_training_accuracy
    from stages.context import StageInput

    (tmp_path / "history.json").write_text('[{"epoch": 1, "train_accuracy": 0.3}, {"epoch": 2, "train_accuracy": 0.8}]')
    assert last_training_accuracy(StageInput(tmp_path, {}), None) == 0.8
    assert last_training_accuracy(StageInput(tmp_path, {}), "peer_1") is None  # no history kept: no row
    axes = [("seed", ["0", "1"])]
    results = [{"point": {"seed": s}, "accuracy": {"kd": 0.4}, "training": {"kd": train}}
               for s, train in ((0, 0.80), (1, 0.82))]
    table = render_markdown(summarize(results, axes), axes, "p", ["kd"], {"kd": "KD"})
    assert "Top-1 % on the training images in the last epoch" in table and table.endswith("| 81.00 ± 1.41 |\n")
    # An imported teacher keeps no history: its cell is empty, the students' are still tabulated.
    imported = [{"point": {"seed": s}, "accuracy": {"teacher": 0.9, "kd": 0.4}, "training": {"kd": train}}
                for s, train in ((0, 0.80), (1, 0.82))]
    table = render_markdown(summarize(imported, axes), axes, "p", ["teacher", "kd"], {"kd": "KD"})
    assert table.endswith("| – | 81.00 ± 1.41 |\n")
    assert "training images in the last" not in render_markdown(
        summarize([{"point": {"seed": 0}, "accuracy": {"kd": 0.5}}], [("seed", ["0"])]), [("seed", ["0"])], "p",
        ["kd"], {})


def test_without_a_validation_split_nothing_is_chosen():
    from pipeline.sweep import choose_by_validation

    summary = summarize([{"point": {"seed": 0}, "accuracy": {"kd": 0.5}}], [("seed", ["0"])])
    assert choose_by_validation(summary) == {}
    assert "Chosen" not in render_markdown(summary, [("seed", ["0"])], "p", ["kd"], {})


def test_points_that_run_the_same_tasks_are_refused_and_a_later_until_tells_them_apart():
    from pipeline.plan import build_plan
    from pipeline.registry import stage_index
    from pipeline.sweep import grid, point_profile, refuse_points_that_differ_in_nothing
    points = grid([("benchmark.iterations", ["5", "9"])])
    profiles = [point_profile(TINY, [], point) for point in points]

    def plans(until):
        return [[t for t in build_plan(p) if stage_index(t.stage) <= stage_index(until)] for p in profiles]

    with pytest.raises(PipelineError, match=r"^--over: the points benchmark.iterations=5 and benchmark.iterations=9 "
                                            r"run the same tasks up to --until mutual"):
        refuse_points_that_differ_in_nothing(points, plans("mutual"), "mutual")
    refuse_points_that_differ_in_nothing(points, plans("benchmark"), "benchmark")  # the benchmark reads it
    seeds = grid([("seed", ["0", "1"])])
    refuse_points_that_differ_in_nothing(
        seeds, [[t for t in build_plan(point_profile(TINY, [], p)) if t.stage == "teacher"] for p in seeds], "teacher")


def test_a_paper_rows_sweep_sets_printed_beside_measured():
    axes = [("seed", ["0", "1"])]
    results = [{"point": {"seed": s}, "accuracy": {"stochastic_kd": a}} for s, a in ((0, 0.70), (1, 0.72))]
    printed = {"stochastic_kd": {"column": "proposed", "printed": 70.99,
                                 "reading": "one-way, stochastic-depth teacher"}}
    table = render_markdown(summarize(results, axes), axes, "p", ["stochastic_kd"], {"stochastic_kd": "stochastic KD"},
                            printed=printed)
    assert "## Printed in the paper" in table
    assert "| stochastic KD | 70.99 | 71.00 ± 1.41 | +0.01 | one-way, stochastic-depth teacher |" in table
