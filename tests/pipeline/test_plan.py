from pathlib import Path

import numpy as np

from pipeline.plan import build_plan, with_ancestors
from pipeline.profiles import load_profile

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "profiles" / "quickstart.yaml"


def _keys(overrides=()):
    return {t.id: t.key for t in build_plan(load_profile(QUICK, list(overrides)))}


def test_same_profile_same_keys():
    assert _keys() == _keys()


def test_every_task_is_planned_once_after_what_it_needs():
    plan = build_plan(load_profile(QUICK))
    ids = [t.id for t in plan]
    assert len(ids) == len(set(ids)) == 1 + 1 + 3 + 4 * 4 + 1
    position = {id(t): i for i, t in enumerate(plan)}
    assert all(position[id(dep)] < position[id(t)] for t in plan for dep in t.needs.values())


def _changed(overrides):
    before, after = _keys(), _keys(overrides)
    return {task for task in before if before[task] != after[task]}


def test_temperature_reaches_the_kd_students_and_what_follows_only():
    changed = _changed(["distill.temperature=2"])
    downstream = {f"{stage}:{m}" for stage in ("distill", "export", "quantize", "engine", "benchmark")
                  for m in ("kd", "stochastic_kd")}
    assert changed == downstream | {"report"}


def test_teacher_samples_leave_the_deterministic_kd_baseline_alone():
    changed = _changed(["distill.teacher_samples=2"])
    assert "distill:stochastic_kd" in changed
    assert not any(t.endswith(":kd") or t.endswith(":student") or t.endswith(":teacher") for t in changed)


def test_teacher_change_reaches_everything_that_learns_from_it():
    changed = _changed(["teacher.p_last=0.6"])
    assert "teacher:teacher" in changed and "distill:kd" in changed and "distill:stochastic_kd" in changed
    assert not any(t.endswith(":student") for t in changed)


def test_quantization_change_leaves_training_and_export_alone():
    changed = _changed(["quantize.calibration_images=64"])
    assert {t.split(":")[0] for t in changed} == {"quantize", "engine", "benchmark", "report"}


def test_benchmark_change_touches_only_benchmark_and_report():
    changed = _changed(["benchmark.iterations=7"])
    assert {t.split(":")[0] for t in changed} == {"benchmark", "report"}


def test_data_enters_keys_by_content_not_path(tmp_path):
    arrays = {"x_train": np.zeros((4, 4, 4, 3), np.uint8), "y_train": np.arange(4) % 2,
              "x_test": np.zeros((2, 4, 4, 3), np.uint8), "y_test": np.arange(2), "class_names": np.array(["a", "b"])}
    first, second = tmp_path / "a" / "d.npz", tmp_path / "b" / "d.npz"
    for path in (first, second):
        path.parent.mkdir()
        np.savez(path, **arrays)
    keys = [_keys(["data.dataset=npz", f"data.root={p}"])["teacher:teacher"] for p in (first, second)]
    assert keys[0] == keys[1]
    np.savez(second, **{**arrays, "y_train": np.array([1, 0, 1, 0])})
    assert _keys(["data.dataset=npz", f"data.root={second}"])["teacher:teacher"] != keys[0]


def test_hardware_enters_only_hardware_bound_keys(monkeypatch):
    import pipeline.plan as plan_module

    before = _keys()
    monkeypatch.setattr(plan_module, "fingerprint", lambda backend, scope: {"cpu": "another", "scope": scope})
    after = _keys()
    changed = {t for t in before if before[t] != after[t]}
    assert {t.split(":")[0] for t in changed} == {"engine", "benchmark", "report"}


def test_with_ancestors_selects_what_a_stage_needs():
    plan = build_plan(load_profile(QUICK))
    picked = with_ancestors(plan, [t for t in plan if t.id == "export:kd"])
    assert [t.id for t in picked] == ["teacher:teacher", "distill:kd", "export:kd"]


def test_a_copied_cache_keeps_engines_on_the_same_platform_but_measures_anew(monkeypatch):
    before = _keys()
    monkeypatch.setattr("platform.node", lambda: "another-host")
    after = _keys()
    changed = {t for t in before if before[t] != after[t]}
    assert {t.split(":")[0] for t in changed} == {"benchmark", "report"}


def test_an_unset_optional_setting_does_not_enter_keys():
    # Adding an optional setting to the schema must not invalidate every cached artifact.
    assert _keys(["teacher.skips=null", "data.image_size=null"]) == _keys()
    assert _keys(["teacher.skips=true"]) != _keys()


def test_dml_adds_conventional_and_proposed_peers_each_deployed():
    plan = build_plan(load_profile(QUICK, ["methods=[kd, dml]", "mutual.peers=[resnet8, resnet8, resnet8]"]))
    ids = {t.id for t in plan}
    assert {"mutual:conventional", "mutual:proposed"} <= ids
    for kind in ("conventional", "proposed"):
        for peer in (1, 2, 3):
            assert f"benchmark:dml_{kind}_{peer}" in ids
    export = next(t for t in plan if t.id == "export:dml_proposed_2")
    # Independent learning: each distinct peer network alone, with the student's recipe (the paper's
    # Independent figures are its other tables', at LR 0.1, not mutual learning's 0.01); here that is
    # the student trained alone, so the two share one artifact.
    tasks = {t.id: t for t in plan}
    assert "benchmark:independent_resnet8" in ids and "distill:independent_resnet8" in ids
    shared = {t.id: t.key for t in plan}
    assert shared["distill:independent_resnet8"] == shared["distill:student"]
    assert tasks["distill:independent_resnet8"].params["student"].training == load_profile(QUICK).student.training
    table1 = {t.id: t for t in build_plan(load_profile(REPO / "profiles/paper/table1_dml_resnet32_resnet32.yaml"))}
    assert table1["distill:independent_resnet32"].params["student"].training.lr == 0.1
    assert table1["mutual:proposed"].params["mutual"].training.lr == 0.01
    assert export.params["member"] == "peer2" and export.needs["model"].id == "mutual:proposed"


def test_survival_settings_reach_only_the_proposed_peers():
    def mutual_keys(overrides):
        plan = build_plan(load_profile(QUICK, ["methods=[dml]", *overrides]))
        return {t.id: t.key for t in plan if t.stage == "mutual"}

    before, after = mutual_keys([]), mutual_keys(["mutual.p_last=0.7"])
    assert before["mutual:conventional"] == after["mutual:conventional"]
    assert before["mutual:proposed"] != after["mutual:proposed"]


def test_a_dml_only_profile_has_no_teacher():
    plan = build_plan(load_profile(QUICK, ["methods=[dml]"]))
    assert not any(t.stage in ("teacher", "analyze") for t in plan)
    assert {t.id for t in plan if t.stage == "distill"} == {"distill:independent_resnet32"}
    report = next(t for t in plan if t.stage == "report")
    assert not any(role.startswith("analysis") for role in report.needs)


BOTH = "teacher.readings=[stochastic_depth, plain]"


def test_each_teacher_reading_brings_its_teacher_kd_baseline_stochastic_kd_and_analysis():
    plan = build_plan(load_profile(QUICK, [BOTH]))
    ids = {t.id for t in plan}
    for prefix in ("", "plain_"):
        assert {f"teacher:{prefix}teacher", f"distill:{prefix}kd", f"distill:{prefix}stochastic_kd",
                f"analyze:{prefix}teacher", f"benchmark:{prefix}stochastic_kd"} <= ids
    assert sum(t.id == "distill:student" for t in plan) == 1  # one student alone for both readings
    tasks = {t.id: t for t in plan}
    plain = tasks["teacher:plain_teacher"].params["teacher"]
    assert plain.p_last == 1.0 and plain.arch == "resnet20"
    assert tasks["distill:plain_stochastic_kd"].needs["teacher"] is tasks["teacher:plain_teacher"]
    # The plain teacher teaches at the profile's p_n (teacher.p_last 0.8 in the quickstart).
    assert tasks["distill:plain_stochastic_kd"].params["distill"].p_last == 0.8
    assert tasks["analyze:plain_teacher"].params["p_last"] == 0.8
    assert set(tasks["report"].needs) >= {"analysis:teacher", "analysis:plain_teacher", "train:plain_kd"}


def test_a_teaching_p_n_sweep_retrains_neither_the_plain_teacher_nor_its_kd_baseline():
    def keys(overrides):
        return {t.id: t.key for t in build_plan(load_profile(QUICK, [BOTH, *overrides]))}

    before, after = keys(["distill.p_last=0.5"]), keys(["distill.p_last=0.6"])
    changed = {task for task in before if before[task] != after[task]}
    assert {"teacher:plain_teacher", "distill:plain_kd", "teacher:teacher", "distill:kd",
            "distill:student"}.isdisjoint(changed)
    assert {"distill:plain_stochastic_kd", "distill:stochastic_kd", "analyze:plain_teacher"} <= changed
    # Nor does the stochastic-depth teacher's own p_n retrain the plain teacher.
    assert keys(["teacher.p_last=0.6"])["teacher:plain_teacher"] == keys([])["teacher:plain_teacher"]


def test_the_kept_scale_enters_a_key_only_where_it_changes_the_teacher():
    def keys(overrides):
        return {t.id: t.key for t in build_plan(load_profile(QUICK, [BOTH, *overrides]))}

    # Taught at its own p_n, a stochastic-depth teacher is the same under both scales.
    same = keys(["distill.kept_scale=expectation"])
    assert same["distill:stochastic_kd"] == keys([])["distill:stochastic_kd"]
    assert same["distill:plain_stochastic_kd"] != keys([])["distill:plain_stochastic_kd"]
    moved = keys(["distill.p_last=0.5"]), keys(["distill.p_last=0.5", "distill.kept_scale=expectation"])
    assert moved[0]["distill:stochastic_kd"] != moved[1]["distill:stochastic_kd"]
    assert moved[0]["distill:kd"] == moved[1]["distill:kd"]


def test_readings_do_not_enter_the_stochastic_depth_teachers_key():
    assert _keys([BOTH])["teacher:teacher"] == _keys()["teacher:teacher"]
    assert _keys(["teacher.readings=[plain]"]).keys().isdisjoint({"teacher:teacher", "distill:kd"})


def test_attention_transfer_names_its_models_and_keys_only_what_it_reads():
    plan = build_plan(load_profile(QUICK, ["distill.transfer=at"]))
    ids = {t.id for t in plan}
    assert {"distill:at", "distill:stochastic_at", "benchmark:stochastic_at"} <= ids
    assert not any(i.endswith(":kd") for i in ids)

    def at_keys(overrides):
        return {t.id: t.key for t in build_plan(load_profile(QUICK, ["distill.transfer=at", *overrides]))}

    assert at_keys(["distill.temperature=9"]) == at_keys([])  # AT reads no temperature
    assert at_keys(["distill.at_weight=10"])["distill:at"] != at_keys([])["distill:at"]
    assert _keys(["distill.at_weight=10"]) == _keys()  # nor does KD read the AT weight


JETSON = QUICK.parent / "jetson_orin.yaml"
ON_DIGITS = ["data.dataset=digits", "data.root=null", "teacher.arch=resnet8", "student.arch=resnet8"]


def test_artifacts_copied_to_the_jetson_rerun_only_engine_benchmark_and_report(monkeypatch):
    import stages.common.hardware as hardware

    here = {t.id: t.key for t in build_plan(load_profile(JETSON, ON_DIGITS))}
    monkeypatch.setattr(hardware, "cpu_model", lambda: "ARMv8 Processor rev 1 (v8l)")
    monkeypatch.setattr(hardware, "gpu_identity", lambda: {"gpu": "NVIDIA Jetson AGX Orin", "l4t": "R36.4"})
    monkeypatch.setattr(hardware, "package_versions", lambda: {"tensorrt": "10.3.0", "onnxruntime-gpu": "1.20.0"})
    monkeypatch.setattr("platform.node", lambda: "orin")
    there = {t.id: t.key for t in build_plan(load_profile(JETSON, ON_DIGITS))}
    assert {t.split(":")[0] for t in here if here[t] != there[t]} == {"engine", "benchmark", "report"}


def test_budgets_and_published_figures_reach_only_the_report():
    before = {t.id: t.key for t in build_plan(load_profile(JETSON, ON_DIGITS))}
    after = {t.id: t.key for t in build_plan(load_profile(JETSON, ON_DIGITS + [
        "target.budgets.latency_ms={1: 9.0}", "target.hardware.memory_bandwidth_gbs=100"]))}
    assert {t for t in before if before[t] != after[t]} == {"report"}


def test_the_accuracy_gate_reaches_quantize_and_what_follows():
    before = {t.id: t.key for t in build_plan(load_profile(JETSON, ON_DIGITS))}
    after = {t.id: t.key for t in build_plan(load_profile(JETSON, ON_DIGITS + ["target.budgets.max_accuracy_drop=3"]))}
    assert {t.split(":")[0] for t in before if before[t] != after[t]} == {"quantize", "engine", "benchmark", "report"}


def test_tensorrt_engines_are_keyed_by_their_batch_range():
    before = {t.id: t.key for t in build_plan(load_profile(JETSON, ON_DIGITS))}
    after = {t.id: t.key for t in build_plan(load_profile(JETSON, ON_DIGITS + ["benchmark.batch_sizes=[1,8,64]"]))}
    assert {t.split(":")[0] for t in before if before[t] != after[t]} == {"engine", "benchmark", "report"}


def test_raw_pixel_forms_add_their_own_deployment_tasks_and_leave_the_float_ones_alone():
    before, after = _keys(), _keys(["export.preprocess=graph"])
    added = set(after) - set(before)
    models = ("teacher", "student", "kd", "stochastic_kd")
    assert added == {f"{stage}:{model}_uint8" for stage in ("export", "quantize", "engine", "benchmark")
                     for model in models}
    assert {task for task in before if before[task] != after[task]} == {"report"}
