import pytest

from stages.report import method_comparison
from stages.reporting.names import model_label, teacher_reading


def test_each_teacher_reading_gets_its_own_gains_and_names():
    accuracy = {"teacher": 0.60, "student": 0.50, "kd": 0.52, "stochastic_kd": 0.53,
                "plain_teacher": 0.62, "plain_kd": 0.54, "plain_stochastic_kd": 0.51}
    comparison = method_comparison({m: {"test_accuracy": a} for m, a in accuracy.items()})
    by_teacher = comparison["by_teacher"]
    assert by_teacher["stochastic_depth"]["gain_over_deterministic"] == pytest.approx(0.01)
    assert by_teacher["plain"]["gain_over_deterministic"] == pytest.approx(-0.03)
    assert by_teacher["plain"]["gain_over_student_alone"] == pytest.approx(0.01)
    assert by_teacher["plain"]["teacher_test_accuracy"] == 0.62
    assert comparison["gain_over_deterministic"] == pytest.approx(0.01)  # the first reading's, for headlines
    assert [teacher_reading(m) for m in accuracy] == ["stochastic_depth", None, "stochastic_depth",
                                                      "stochastic_depth", "plain", "plain", "plain"]
    assert model_label("plain_stochastic_kd") == "stochastic KD (plain teacher)"
    assert model_label("plain_teacher") == "plain teacher"
    assert teacher_reading("dml_proposed_1") is None and teacher_reading("independent_resnet8") is None


def test_a_plain_teacher_alone_reports_its_gains_at_the_top_level():
    accuracy = {"student": 0.50, "plain_teacher": 0.62, "plain_kd": 0.54, "plain_stochastic_kd": 0.56}
    comparison = method_comparison({m: {"test_accuracy": a} for m, a in accuracy.items()})
    assert list(comparison["by_teacher"]) == ["plain"]
    assert comparison["gain_over_student_alone"] == pytest.approx(0.06)


def test_the_report_gives_validation_accuracy_beside_test_accuracy_where_held_out():
    from stages.reporting.markdown import render_markdown

    training = {"student": {"test_accuracy": 0.5, "validation_accuracy": 0.55, "arch": "resnet8"},
                "plain_teacher": {"test_accuracy": 0.6, "validation_accuracy": 0.61, "arch": "resnet20"}}
    report = {"profile": "p", "machine": {"cpu": "cpu", "cores": 2, "host": "h"}, "threads": 2, "target": "t",
              "models": list(training), "archs": {m: v["arch"] for m, v in training.items()},
              "teachers": {m: teacher_reading(m) for m in training}, "training": training,
              "comparison": method_comparison(training), "analyses": {}, "rows": [], "plot_batch_size": 1}
    text = render_markdown(report)
    assert "| model | network | teacher | top-1 % | validation top-1 % |" in text
    assert "| plain teacher | resnet20 | plain teacher | 60.00 | 61.00 |" in text


def engine_row(precision, batch, accuracy, p50, throughput, budget=None, runtime="onnxruntime", p90=None):
    return {"model": "kd", "runtime": runtime, "precision": precision, "compute_precision": precision,
            "batch_size": batch, "test_accuracy": accuracy, "latency_p50_ms": p50,
            "latency_p90_ms": p90 if p90 is not None else 1.05 * p50,
            "throughput_images_per_s": throughput, "file_size_bytes": 2048, "peak_memory_mb": 12.5,
            **({"budget": budget} if budget else {})}


def test_the_glance_table_deploys_the_fastest_engine_within_budget():
    from stages.report import deployed_summary
    from stages.reporting.markdown import render_summary

    rows = [engine_row("fp32", 1, 0.70, 1.0, 1000, "within"), engine_row("fp32", 64, 0.70, 20.0, 3200, "within"),
            engine_row("int8", 1, 0.60, 0.5, 2000, "over: accuracy drop 10.00 > 1 points"),
            engine_row("int8", 64, 0.60, 8.0, 8000, "over: accuracy drop 10.00 > 1 points"),
            engine_row("fp16", 1, 0.699, 0.8, 1250, "within"), engine_row("fp16", 64, 0.699, 12.0, 5300, "within"),
            engine_row("fp32", 64, 0.70, 30.0, 2100, runtime="pytorch")]
    [kd] = deployed_summary(rows, ["kd"])
    assert (kd["precision"], kd["budget"]) == ("fp16", "within")  # int8 is faster but over its budget
    assert kd["drop_from_fp32_points"] == pytest.approx(0.1) and kd["speedup_over_fp32"] == pytest.approx(5300 / 3200)
    assert (kd["latency_p50_ms_smallest_batch"], kd["latency_p50_ms_largest_batch"]) == (0.8, 12.0)
    table = "\n".join(render_summary({"summary": [kd]}))
    assert "| KD | onnxruntime fp16 (computes in fp16) | 69.90 | -0.10 | 0.800 (batch 1) | 12.000 (batch 64) | 2 | " \
           "12.5 | 1.66× | within |" in table
    without_budgets = [{k: v for k, v in r.items() if k != "budget"} for r in rows]
    assert deployed_summary(without_budgets, ["kd"])[0]["precision"] == "int8"  # no budget: the fastest


def test_raw_pixel_engines_are_judged_against_their_own_fp32_and_can_be_the_one_deployed():
    from stages.deploy.budgets import judge_rows
    from stages.report import deployed_summary
    from stages.reporting.markdown import render_summary

    pixels = {"input": "uint8"}
    rows = [engine_row("fp32", 64, 0.70, 20.0, 3200), engine_row("int8", 64, 0.69, 8.0, 8000),
            {**engine_row("fp32", 64, 0.68, 18.0, 3500), **pixels},
            {**engine_row("int8", 64, 0.675, 7.0, 9100), **pixels}]
    judge_rows(rows, {"max_accuracy_drop": 0.6})
    # Each form's int8 against the same form's fp32: 1.0 point for the float form, 0.5 for raw pixels.
    assert [r["budget"] for r in rows] == ["within", "over: accuracy −1.00 > 0.6 pts", "within", "within"]
    [kd] = deployed_summary(rows, ["kd"])
    assert (kd["precision"], kd["input"]) == ("int8", "uint8")
    assert kd["drop_from_fp32_points"] == pytest.approx(0.5) and kd["speedup_over_fp32"] == pytest.approx(9100 / 3500)
    assert "onnxruntime int8 on uint8 pixels (computes in int8)" in "\n".join(render_summary({"summary": [kd]}))


def test_a_teacher_trained_or_imported_without_dropping_is_called_a_plain_teacher():
    from stages.reporting.markdown import render_markdown
    from stages.reporting.names import teacher_names

    assert teacher_names(1.0)["stochastic_depth"] == "plain teacher"
    assert teacher_names(0.8)["stochastic_depth"] == "stochastic-depth teacher"
    training = {"teacher": {"test_accuracy": 0.6, "arch": "resnet20", "imported": {"path": "/w/plain.pt"}},
                "student": {"test_accuracy": 0.5, "arch": "resnet8"}, "kd": {"test_accuracy": 0.52, "arch": "resnet8"},
                "stochastic_kd": {"test_accuracy": 0.53, "arch": "resnet8"}}
    report = {"profile": "p", "machine": {"cpu": "cpu", "cores": 2, "host": "h"}, "threads": 2, "target": "t",
              "models": list(training), "archs": {m: v["arch"] for m, v in training.items()},
              "teachers": {m: teacher_reading(m) for m in training}, "teacher_names": teacher_names(1.0),
              "training": training, "comparison": method_comparison(training), "analyses": {}, "rows": [],
              "plot_batch_size": 1}
    text = render_markdown(report)
    assert "| teacher (imported: plain.pt) | resnet20 | plain teacher | 60.00 |" in text
    assert "With the plain teacher: stochastic KD gains" in text and "With the stochastic-depth teacher" not in text


def test_a_faster_engine_is_deployed_only_when_faster_beyond_the_spread_of_its_timings():
    """Two identical quickstart runs deployed int8 (95.28 %, 0.75 ms) in one and fp32 (99.17 %, 0.80 ms) in
    the other: a difference inside the timings' spread must not trade accuracy away."""
    from stages.report import deployed_summary

    close = [engine_row("fp32", 64, 0.9917, 0.80, 80000, p90=0.95), engine_row("int8", 64, 0.9528, 0.75, 85000,
                                                                              p90=0.86)]
    assert deployed_summary(close, ["kd"])[0]["precision"] == "fp32"
    clear = [engine_row("fp32", 64, 0.9917, 0.80, 80000, p90=0.95), engine_row("int8", 64, 0.9528, 0.40, 160000,
                                                                              p90=0.45)]
    assert deployed_summary(clear, ["kd"])[0]["precision"] == "int8"
    # Among engines as fast as the fastest, the most accurate.
    three = clear + [engine_row("fp16", 64, 0.99, 0.42, 150000, p90=0.47)]
    assert deployed_summary(three, ["kd"])[0]["precision"] == "fp16"
