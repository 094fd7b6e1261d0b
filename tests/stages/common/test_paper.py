"""The paper's printed figures as profile data, set beside the measured models they stand for."""

from pathlib import Path

import pytest

from pipeline.plan import build_plan
from pipeline.profiles import load_profile
from stages.common.paper import PaperRow, printed_beside

PAPER = Path(__file__).resolve().parents[3] / "profiles" / "paper"


def test_every_printed_row_has_a_profile_with_its_figures():
    rows = [load_profile(p) for p in sorted(PAPER.glob("table*.yaml")) if load_profile(p).paper]
    tables = [p.paper.table for p in rows]
    assert (tables.count("I"), tables.count("II"), tables.count("III")) == (6, 6, 5)
    pairs = {(p.paper.table, tuple(p.paper.nets)) for p in rows}
    assert len(pairs) == 17
    row = next(p for p in rows if p.name == "table2_resnet110_resnet20")
    assert row.paper.printed == {"independent_1": 71.69, "independent_2": 68.32, "transfer": 68.72, "proposed": 70.99}
    assert (row.teacher.arch, row.student.arch) == ("resnet110", "resnet20")
    assert row.mutual.peers == ("resnet110", "resnet20")
    dml = next(p for p in rows if p.name == "table1_dml_wrn28_10_mobilenet")
    assert dml.mutual.peers == ("wrn28_10", "mobilenet") and dml.mutual.training.lr == 0.01
    assert dml.student.training.lr == 0.1  # independent learning, as the paper's other tables


def test_a_column_the_table_does_not_have_or_a_figure_outside_0_to_100_is_refused():
    with pytest.raises(ValueError, match="'transfer', not a column of Table I"):
        PaperRow(table="I", nets=("A", "B"), printed={"transfer": 70.0})
    with pytest.raises(ValueError, match="proposed = 170.0: a top-1 accuracy in percent"):
        PaperRow(table="II", nets=("A", "B"), printed={"proposed": 170.0})


def test_each_figure_stands_beside_the_models_of_its_column_with_the_reading_that_made_them():
    row = PaperRow(table="II", nets=("ResNet-110", "ResNet-20"),
                   printed={"independent_1": 71.69, "independent_2": 68.32, "transfer": 68.72, "proposed": 70.99})
    models = ["teacher", "student", "kd", "stochastic_kd", "plain_teacher", "plain_kd", "plain_stochastic_kd",
              "independent_resnet110", "independent_resnet20", "dml_conventional_1", "dml_conventional_2",
              "dml_proposed_1", "dml_proposed_2"]
    beside = printed_beside(row, models, ("resnet110", "resnet20"))
    assert beside["plain_stochastic_kd"] == {"column": "proposed", "printed": 70.99,
                                             "reading": "one-way, plain teacher"}
    assert beside["dml_proposed_2"] == {"column": "proposed", "printed": 70.99, "reading": "mutual"}
    assert beside["dml_conventional_2"]["column"] == "transfer" and "dml_proposed_1" not in beside
    assert beside["independent_resnet110"]["printed"] == 71.69 and beside["student"]["printed"] == 68.32
    table1 = PaperRow(table="I", nets=("ResNet-32", "ResNet-32"), printed={
        "independent_1": 69.86, "independent_2": 69.86, "conventional_1": 71.14, "conventional_2": 71.21,
        "proposed_1": 73.68, "proposed_2": 73.58})
    beside = printed_beside(table1, ["independent_resnet32", "dml_conventional_1", "dml_conventional_2",
                                     "dml_proposed_1", "dml_proposed_2"], ("resnet32", "resnet32"))
    assert {m: e["printed"] for m, e in beside.items()} == {
        "independent_resnet32": 69.86, "dml_conventional_1": 71.14, "dml_conventional_2": 71.21,
        "dml_proposed_1": 73.68, "dml_proposed_2": 73.58}


def test_the_report_reads_the_row_and_a_profile_without_one_keeps_its_key():
    plan = build_plan(load_profile(PAPER / "table2_resnet110_resnet20.yaml"))
    report = next(t for t in plan if t.stage == "report")
    assert report.params["paper"].table == "II" and report.params["peers"] == ["resnet110", "resnet20"]
    quick = build_plan(load_profile(PAPER.parent / "quickstart.yaml"))
    assert "paper" not in next(t for t in quick if t.stage == "report").params


def test_the_report_sets_printed_beside_measured():
    from stages.report import paper_comparison
    from stages.reporting.markdown import render_paper

    row = PaperRow(table="II", nets=("ResNet-110", "ResNet-20"),
                   printed={"independent_2": 68.32, "transfer": 68.72, "proposed": 70.99})
    training = {"student": {"test_accuracy": 0.6}, "kd": {"test_accuracy": 0.61},
                "stochastic_kd": {"test_accuracy": 0.62}}
    paper = paper_comparison(row, list(training), (), training)
    assert paper["models"]["stochastic_kd"]["difference"] == pytest.approx(62.0 - 70.99)
    lines = "\n".join(render_paper({"paper": paper}))
    assert "| stochastic KD | Proposed | 70.99 | 62.00 | -8.99 | one-way, stochastic-depth teacher |" in lines
