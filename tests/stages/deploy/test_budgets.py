import pytest
from pydantic import ValidationError

from stages.common.profile import Profile
from stages.common.target_config import TargetConfig
from stages.deploy.budgets import budget_verdict, judge_rows, roofline_rows
from stages.deploy.roofline import estimate_latency_ms

# One 3x3 convolution, 16 -> 16 channels on 8x8: 16*8*8 outputs x 144 MACs each.
CONV = {"layer": "conv", "kind": "Conv2d", "macs": 16 * 8 * 8 * 144, "weights": 16 * 144,
        "inputs": 16 * 8 * 8, "outputs": 16 * 8 * 8}
HARDWARE = {"peak_tops": {"fp32": 1.0, "int8": 4.0}, "memory_bandwidth_gbs": 10.0}


def test_roofline_takes_the_slower_of_arithmetic_and_memory_per_layer():
    # fp32, batch 1: arithmetic 2 * 147,456 ops / 1e12 = 0.295 us; memory (2,304 + 2,048) * 4 bytes / 10 GB/s
    # = 1.741 us: memory-bound.
    one = estimate_latency_ms([CONV], 1, "fp32", HARDWARE)
    assert one["latency_ms"] == pytest.approx(1e3 * (2304 + 2048) * 4 / 10e9)
    assert one["compute_bound_share"] == 0.0
    # Batch 1000: arithmetic 0.295 ms; memory (2,304 + 2,048,000) * 4 / 10e9 = 0.820 ms: still memory.
    many = estimate_latency_ms([CONV], 1000, "int8", HARDWARE)
    assert many["latency_ms"] == pytest.approx(1e3 * (2304 + 2_048_000) * 1 / 10e9)
    assert estimate_latency_ms([CONV], 1, "fp16", HARDWARE) is None  # no published fp16 peak


def test_compute_bound_layer():
    fast_memory = {"peak_tops": {"fp32": 1.0}, "memory_bandwidth_gbs": 1e6}
    estimate = estimate_latency_ms([CONV], 8, "fp32", fast_memory)
    assert estimate["latency_ms"] == pytest.approx(1e3 * 2 * CONV["macs"] * 8 / 1e12)
    assert estimate["compute_bound_share"] == 1.0


def test_budget_verdict_names_each_budget_missed():
    row = {"batch_size": 1, "latency_p50_ms": 3.0, "peak_memory_mb": 40.0, "test_accuracy": 0.70}
    budgets = {"latency_ms": {1: 2.0}, "memory_mb": 50, "max_accuracy_drop": 1.0}
    assert budget_verdict(row, budgets, fp32_accuracy=0.705) == "over: latency 3.00 > 2 ms"
    assert budget_verdict(row, budgets, fp32_accuracy=0.75) == "over: latency 3.00 > 2 ms; accuracy −5.00 > 1 pts"
    assert budget_verdict({**row, "latency_p50_ms": 1.0}, budgets, 0.70) == "within"
    assert budget_verdict(row, {"latency_ms": {64: 1.0}}, None) is None  # nothing applies to batch 1


def test_stand_in_rows_are_not_judged_against_the_target():
    rows = [{"model": "kd", "runtime": "onnxruntime", "precision": "fp32", "batch_size": 1, "latency_p50_ms": 9.0,
             "peak_memory_mb": 1.0, "test_accuracy": 0.5, "stand_in_for": "tensorrt"},
            {"model": "kd", "runtime": "tensorrt", "precision": "fp32", "batch_size": 1, "latency_p50_ms": 9.0,
             "peak_memory_mb": 1.0, "test_accuracy": 0.5}]
    judge_rows(rows, {"latency_ms": {1: 1.0}})
    assert "budget" not in rows[0] and rows[1]["budget"].startswith("over")


def test_estimate_rows_cover_each_published_precision_and_batch():
    rows = roofline_rows({"kd": [CONV]}, HARDWARE, [1, 8], {"latency_ms": {8: 1e-9}})
    assert [(r["precision"], r["batch_size"]) for r in rows] == [("fp32", 1), ("fp32", 8), ("int8", 1), ("int8", 8)]
    assert rows[1]["budget"].startswith("over") and "budget" not in rows[0]


def test_target_settings_of_the_other_backend_stay_out_of_keys():
    onnxruntime = TargetConfig().cache_form()
    assert "tensorrt" not in onnxruntime and "budgets" not in onnxruntime
    tensorrt = TargetConfig(backend="tensorrt").cache_form()
    assert "execution_provider" not in tensorrt and tensorrt["tensorrt"]["workspace_mib"] == 1024


def test_tensorrt_backend_refuses_an_onnx_runtime_provider():
    with pytest.raises(ValidationError, match="execution_provider is an ONNX Runtime setting"):
        Profile(target={"backend": "tensorrt", "execution_provider": "CUDAExecutionProvider"})


def test_published_peaks_must_be_positive():
    with pytest.raises(ValidationError, match="peak throughput must be positive"):
        TargetConfig(hardware={"device": "x", "peak_tops": {"int8": 0}, "memory_bandwidth_gbs": 1})



def test_a_latency_budget_at_a_batch_never_timed_is_named_in_the_report_and_by_deploy():
    from pipeline.deploy import choose
    from stages.deploy.budgets import unjudged_latency_budgets
    from stages.report import method_comparison
    from stages.reporting.markdown import render_markdown

    rows = [{"model": "kd", "runtime": "onnxruntime", "precision": "fp32", "compute_precision": "fp32",
             "batch_size": batch, "test_accuracy": 0.7, "latency_p50_ms": 1.0, "latency_p90_ms": 1.0,
             "latency_p99_ms": 1.0, "latency_mean_ms": 1.0, "latency_std_ms": 0.0, "throughput_images_per_s": 1e3,
             "peak_memory_mb": 1.0, "file_size_bytes": 1024, "parameters": 10, "macs": 10} for batch in (1, 8)]
    budgets = {"latency_ms": {1: 2.0, 32: 12.0, 64: 40.0}}
    judge_rows(rows, budgets)
    assert [r["budget"] for r in rows] == ["within", None]
    assert unjudged_latency_budgets(budgets, rows) == [32, 64]
    assert unjudged_latency_budgets({"latency_ms": {1: 2.0, 8: 1.0}}, rows) == []
    assert unjudged_latency_budgets({}, rows) == []

    report = {"profile": "p", "machine": {"cpu": "cpu", "cores": 2, "host": "h"}, "threads": 2, "target": "t",
              "models": ["kd"], "archs": {"kd": "resnet8"}, "teachers": {"kd": None},
              "training": {"kd": {"test_accuracy": 0.7, "arch": "resnet8"}},
              "comparison": method_comparison({"kd": {"test_accuracy": 0.7}}), "analyses": {},
              "rows": rows, "plot_batch_size": 8, "unjudged_latency_budgets": [32, 64]}
    assert ("**Latency budgets not judged.** target.budgets.latency_ms sets a budget at batch 32, 64, which the "
            "benchmark did not time (it timed batch 1, 8): no engine is over or within it. Add the batch to "
            "benchmark.batch_sizes to judge it.") in render_markdown(report)
    assert "not judged" not in render_markdown({**report, "unjudged_latency_budgets": []})

    summary = [{"model": "kd", "precision": "fp32", "test_accuracy": 0.7, "budget": "within"}]
    why = choose(summary, None, None, None, [32, 64])[3]
    assert why == ("Chosen as the most accurate deployed engine within every budget of the target: 70.00 % top-1 "
                   "on the test split at fp32; chosen on the test split, as the profile holds out no validation "
                   "split, so that figure flatters the choice. The latency budget at batch 32, 64 was not judged: "
                   "the benchmark did not time that batch (add it to benchmark.batch_sizes).")
    assert "not judged" not in choose(summary, None, None, None, [])[3]
    assert "not judged" not in choose(summary, "kd", "fp32", None, [32])[3]  # asked for: no budget chose it


def test_deploy_chooses_its_model_on_the_validation_split_where_there_is_one():
    from pipeline.deploy import choose

    # KD is ahead on the test split, stochastic KD on the validation split: validation chooses.
    summary = [{"model": "kd", "precision": "int8", "test_accuracy": 0.71, "budget": "within"},
               {"model": "stochastic_kd", "precision": "int8", "test_accuracy": 0.70, "budget": "within"}]
    model, precision, _, why = choose(summary, None, None, None, (), {"kd": 0.60, "stochastic_kd": 0.62})
    assert (model, precision) == ("stochastic_kd", "int8")
    assert why.endswith("70.00 % top-1 on the test split at int8; chosen on the validation split (62.00 % there, "
                        "PyTorch fp32).")
    assert choose(summary, None, None, None, (), {})[0] == "kd"
