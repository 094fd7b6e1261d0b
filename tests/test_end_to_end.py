"""The real pipeline through the real command line, on a tiny profile."""

import json
import re
import subprocess
import sys

import pytest
from stages.common.hardware import cpu_model
from tests.commands import cli, INTERRUPTED, INTERRUPTED_EPOCHS, pipeline_command, started_teacher, TINY, wide

pytestmark = pytest.mark.slow


def ran_tasks(output: str) -> set[str]:
    return set(re.findall(r"^✓ (\S+)", output, flags=re.M))


@pytest.fixture(scope="module")
def first_run(tiny_pipeline):
    """The tiny profile's first run, every stage from nothing (conftest.tiny_pipeline)."""
    artifacts, done, _ = tiny_pipeline
    return artifacts, done


def test_all_seven_stages_run_and_report(first_run):
    artifacts, done = first_run
    assert len(ran_tasks(done.stdout)) == 22
    report = json.loads((artifacts / "tiny" / "report.json").read_text())
    assert (artifacts / "tiny" / "report.md").read_text().startswith("# stochkd-pipeline report: tiny")
    assert (artifacts / "tiny" / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert set(report["comparison"]["test_accuracy"]) == {"teacher", "student", "kd", "stochastic_kd"}
    artifacts_seen = {(r["model"], r["runtime"], r["precision"]) for r in report["rows"]}
    for model in ("teacher", "student", "kd", "stochastic_kd"):
        for runtime, precision in (("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                   ("onnxruntime", "fp16")):
            assert (model, runtime, precision) in artifacts_seen
    for row in report["rows"]:
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["latency_p50_ms"] <= row["latency_p90_ms"] <= row["latency_p99_ms"]
        assert row["throughput_images_per_s"] > 0 and row["file_size_bytes"] > 0
    int8 = [r for r in report["rows"] if r["precision"] == "int8"]
    assert all(r["compute_precision"] == "int8" for r in int8)
    assert "stochastic KD" in done.stdout  # the terminal table
    # The recipe each result rests on, with the data as the training saw it.
    recipes = report["recipes"]
    assert recipes["teacher"]["training"]["epochs"] == 2 and recipes["student"]["training"]["epochs"] == 1
    assert recipes["stochastic_kd"]["settings"]["distill"]["p_last"] == 0.5  # taught at the teacher's p_n
    assert recipes["kd"]["as_run"] == {"precision": "fp32", "processes": 1, "compiled": False,
                                       "captured_step": False, "drop_execution": "skip", "device_name": cpu_model()}
    assert recipes["teacher"]["images"] == {"train": 1437, "test": 360, "classes": 10}
    assert ("| stochastic KD | resnet8 | 1 | 64 | 0.1 | cosine | 0.9 | 0.0005 | fp32 on cpu | distill: transfer kd, "
            "temperature 4, kd_weight 0.9, teacher_samples 2, drop_mode batch, aggregate individual, p_last 0.5 |"
            .replace("fp32 on cpu", f"fp32 on cpu ({cpu_model()})") in (artifacts / "tiny" / "report.md").read_text())


def test_manifests_record_what_made_each_artifact(first_run):
    artifacts, _ = first_run
    manifest = json.loads(next((artifacts / "store" / "teacher").glob("*/manifest.json")).read_text())
    for field in ("key", "config", "metrics", "timings", "versions", "machine", "seed", "files"):
        assert field in manifest
    assert manifest["config"]["teacher"]["p_last"] == 0.5
    assert "model.pt" in manifest["files"]


def test_every_onnx_model_carries_its_input_contract(first_run):
    """A client holding only the ONNX file reads how to feed it, and with that alone reproduces the
    accuracy the pipeline measured."""
    import numpy as np

    from stages.common.config import DataConfig
    from stages.training.data import load_dataset
    from stages.deploy.input_contract import read_contract
    from stages.deploy.onnx_runtime import make_session

    artifacts, _ = first_run
    for exported in (artifacts / "store" / "export").glob("*/model.onnx"):
        contract = read_contract(exported)
        description = json.loads((exported.parent / "model.json").read_text())
        assert contract["mean"] == description["mean"] and contract["std"] == description["std"]
        assert contract["input_layout"] == "NCHW" and len(contract["class_names"]) == 10
        data = load_dataset(DataConfig())  # the tiny profile's digits, as a client would have them
        mean = np.array(contract["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.array(contract["std"], np.float32).reshape(1, -1, 1, 1)
        x = ((data.x_test.astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - mean) / std).astype(np.float32)
        logits = make_session(exported).run(None, {"images": x})[0]
        measured = json.loads((exported.parent / "manifest.json").read_text())["metrics"]["onnx_test_accuracy"]
        assert float((logits.argmax(1) == data.y_test).mean()) == measured
    for quantized in (artifacts / "store" / "quantize").glob("*/model.*.onnx"):
        assert read_contract(quantized)["precision"] in ("int8", "fp16")


def test_second_run_is_served_from_the_cache(first_run):
    artifacts, _ = first_run
    done = cli("run", str(TINY), artifacts=artifacts)
    assert done.returncode == 0, done.stderr
    assert ran_tasks(done.stdout) == set()
    assert "0 ran, 22 from the cache" in done.stdout


def test_status_lists_every_task_as_cached(first_run):
    artifacts, _ = first_run
    done = cli("status", str(TINY), artifacts=artifacts)
    assert done.returncode == 0
    assert done.stdout.count("cached") == 22


def test_changing_the_temperature_reruns_distill_and_what_follows_only(first_run):
    """What a run would redo, as status lists it from the same keys the run looks up (the second run above
    finds every one of them; the sweep test below reruns the students of another temperature for real)."""
    artifacts, _ = first_run
    done = cli("status", str(TINY), "--json", "--set", "distill.temperature=2", artifacts=artifacts)
    assert done.returncode == 0, done.stderr
    to_run = {t["task"] for t in json.loads(done.stdout)["tasks"] if t["state"] != "cached"}
    assert to_run == {f"{stage}:{m}" for stage in ("distill", "export", "quantize", "engine", "benchmark")
                      for m in ("kd", "stochastic_kd")} | {"report"}


def test_single_stage_command_runs_only_what_it_needs(first_run):
    artifacts, _ = first_run
    done = cli("quantize", str(TINY), "--set", "quantize.calibration_images=16", artifacts=artifacts)
    assert done.returncode == 0, done.stderr
    # Not the engines and benchmarks that follow, nor the exports before, which are cached.
    assert ran_tasks(done.stdout) == {"quantize:teacher", "quantize:student", "quantize:kd", "quantize:stochastic_kd"}


def teacher_weights(artifacts) -> bytes:
    [folder] = [p for p in (artifacts / "store" / "teacher").iterdir() if not p.name.startswith(".")]
    return (folder / "model.pt").read_bytes()


def test_ctrl_c_saves_progress_says_how_to_resume_and_the_rerun_ends_identical(tmp_path, uninterrupted_teacher):
    """SIGTERM and SIGHUP stop training by the same path as Ctrl-C, raising Terminated where Ctrl-C raises
    KeyboardInterrupt (tests/stages/common/test_stop_signals.py); a closed terminal takes that path
    through a real run in tests/test_hangup.py."""
    import signal

    process = started_teacher(tmp_path, "--checkpoint-every", "3600")  # only the signal saves
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert re.fullmatch(r"interrupted: teacher resnet8: stopped in epoch \d+, after batch \d+ of \d+; its progress "
                        r"is saved in \S+/store/teacher/\.resume-\w+/training\.pt: rerun the same command to "
                        r"resume from there\n", stderr), stderr
    store = tmp_path / "store" / "teacher"
    assert [p.name[:8] for p in store.iterdir()] == [".resume-"]  # no artifact, no scratch, no lock
    status = cli("status", str(TINY), *INTERRUPTED, artifacts=tmp_path)
    # The table wraps its cells to the terminal's width; the figures are checked in the JSON below.
    assert re.search(r"teacher:teacher .*to run .*resumes from its", status.stdout), status.stdout
    listed = cli("status", str(TINY), "--json", *INTERRUPTED, artifacts=tmp_path)
    [entry] = [t for t in json.loads(listed.stdout)["tasks"] if t["task"] == "teacher:teacher"]
    past_epoch_2 = 2 / INTERRUPTED_EPOCHS - 1e-9
    assert entry["state"] == "resumable" and past_epoch_2 <= entry["checkpoint"]["done"] < 1
    assert entry["checkpoint"]["images_per_second"] > 0 and entry["checkpoint"]["device"]
    done = cli("teacher", str(TINY), *INTERRUPTED, artifacts=tmp_path)
    assert done.returncode == 0, done.stderr
    assert teacher_weights(tmp_path) == (uninterrupted_teacher() / "model.pt").read_bytes()
    assert not list(store.glob(".resume-*"))  # committed: nothing left to resume


def test_a_killed_run_resumes_and_ends_identical(tmp_path, uninterrupted_teacher):
    import signal

    # A save after every step: the kill, which comes once epoch 2 is reported, finds a checkpoint at
    # least that far, whatever the machine's speed (a timed interval may not have come round since).
    process = started_teacher(tmp_path, "--checkpoint-every", "0")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert list((tmp_path / "store" / "teacher").glob(".resume-*/training.pt"))
    done = cli("teacher", str(TINY), *INTERRUPTED, artifacts=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "removed, left behind by a run that was killed" in done.stderr
    assert teacher_weights(tmp_path) == (uninterrupted_teacher() / "model.pt").read_bytes()
    metrics = json.loads(next((tmp_path / "store" / "teacher").glob("*/manifest.json")).read_text())["metrics"]
    assert len(metrics["train_resumed_at"]) == 1 and metrics["train_resumed_at"][0]["epoch"] >= 2


def test_sweep_shares_cached_stages_and_reports_mean_and_std(tmp_path):
    done = cli("sweep", str(TINY), "--over", "distill.temperature=2,4", "--over", "seed=0,1",
               artifacts=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # The teacher reads no distillation setting: one per seed, shared by both temperatures.
    assert done.stdout.count("✓ teacher:teacher") == 2
    assert done.stdout.count("✓ distill:student") == 2  # nor does the student trained alone
    sweep = tmp_path / "tiny" / "sweep-distill.temperature+seed"
    table = (sweep / "sweep.md").read_text()
    assert "mean ± std over seeds 0, 1" in table and table.count("±") >= 8
    assert (sweep / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((sweep / "sweep.json").read_text())["summary"]
    assert [row["point"]["distill.temperature"] for row in summary] == [2, 4]
    assert all(row["runs"] == 2 for row in summary)
    # The first point's recipe, the swept keys named as what the other points change.
    assert "These are the first point's; the other points differ from it in distill.temperature, seed alone." in table
    assert "- Seed 0, every model: digits" in table and "temperature 2, kd_weight 0.9, teacher_samples 2" in table
    recipes = [result["recipes"] for result in json.loads((sweep / "sweep.json").read_text())["results"]]
    assert [r["kd"]["seed"] for r in recipes] == [0, 1, 0, 1]


def test_deep_mutual_learning_peers_go_all_the_way_to_the_report(first_run, tmp_path):
    import shutil

    artifacts = shutil.copytree(first_run[0], tmp_path / "artifacts")
    done = cli("run", str(TINY), "--set", "methods=[dml]", "--set", "mutual.peers=[resnet8, resnet8]",
               "--set", "mutual.training.epochs=1", artifacts=artifacts)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = ran_tasks(done.stdout)
    assert ran >= {"mutual:conventional", "mutual:proposed", "benchmark:dml_proposed_2"}
    # The peers' independent baseline is the KD run's student alone: same network and recipe, same key.
    assert not {task for task in ran if task.endswith(":independent_resnet8")}
    report = json.loads((artifacts / "tiny" / "report.json").read_text())
    assert set(report["comparison"]["test_accuracy"]) == {"dml_conventional_1", "dml_conventional_2",
                                                         "dml_proposed_1", "dml_proposed_2", "independent_resnet8"}
    assert "dml_gain" in report["comparison"] and report["analyses"] == {}
    assert "dml_mean_independent" in report["comparison"]
    assert ("dml_proposed_1", "onnxruntime", "int8") in {(r["model"], r["runtime"], r["precision"])
                                                        for r in report["rows"]}
    markdown = (artifacts / "tiny" / "report.md").read_text()
    assert "DML proposed, peer 1" in markdown
    assert ("| DML proposed, peer 2 | resnet8 | 1 | 128 | 0.1 | constant | 0.9 | 0.0005 | fp32 on cpu | mutual: peers "
            "resnet8 + resnet8, p_last 0.5, drop_mode batch, temperature 1, mimicry_weight 1 |"
            .replace("fp32 on cpu", f"fp32 on cpu ({cpu_model()})") in markdown)


def test_attention_transfer_trains_from_the_deterministic_and_the_sampled_teacher(tmp_path):
    done = cli("distill", str(TINY), "--set", "distill.transfer=at", artifacts=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {"distill:at", "distill:stochastic_at"} <= ran_tasks(done.stdout)
    for manifest in (tmp_path / "store" / "distill").glob("*/manifest.json"):
        assert 0.0 <= json.loads(manifest.read_text())["metrics"]["test_accuracy"] <= 1.0


def test_a_target_whose_backend_is_missing_gets_a_stand_in_and_an_estimate(first_run):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the engines are real, not stand-ins")
    artifacts, _ = first_run
    # ONNX Runtime writes the s8s8 graph here (Model Optimizer, the default for TensorRT, takes about 4 s a
    # model; it is tested in tests/stages/test_quantize.py).
    done = cli("run", str(TINY), "--set", "target.backend=tensorrt", "--set", "quantize.int8_tool=onnxruntime",
               "--set", "target.name=orin",
               "--set", "target.hardware={device: Orin GPU, peak_tops: {fp16: 42.5, int8: 85}, "
               "memory_bandwidth_gbs: 204.8}", "--set", "target.budgets.latency_ms={1: 5.0}", artifacts=artifacts)
    assert done.returncode == 0, done.stdout + done.stderr
    # Training, export and quantize (the s8s8 flavour for TensorRT aside) come from the cache.
    assert {t.split(":")[0] for t in ran_tasks(done.stdout)} == {"quantize", "engine", "benchmark", "report"}
    engine_lines = [line for line in done.stdout.splitlines() if line.startswith("✓ engine:")]
    assert engine_lines and all("tensorrt for orin: not installed here" in line and "stands in" in line
                                and "run the same profile" in line for line in engine_lines)
    report = (artifacts / "tiny" / "report.md").read_text()
    assert "**Not measured on the target.**" in report and "(stand-in for tensorrt)" in report
    assert "## Roofline estimate for orin (an estimate, not a measurement)" in report
    estimate = json.loads((artifacts / "tiny" / "report.json").read_text())["estimate"]
    assert {(r["precision"], r["batch_size"]) for r in estimate} == {("fp16", 1), ("fp16", 8), ("int8", 1), ("int8", 8)}


def test_two_runs_at_once_build_each_artifact_once(tmp_path):
    # Long enough that the second run certainly arrives while the first is still training.
    command = pipeline_command("teacher", TINY, "--set", "teacher.training.epochs=6", artifacts=tmp_path)
    env = wide()
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in first.stdout:
        if line.startswith("▶ teacher:teacher"):
            break
    second = subprocess.run(command, capture_output=True, text=True, env=env)
    rest, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "another run (process" in second.stderr and "waiting for it" in second.stderr
    assert "0 ran, 1 from the cache" in second.stdout and "1 ran" in rest
    assert [p.name for p in (tmp_path / "store" / "teacher").iterdir() if not p.name.startswith(".lock")] \
        and not list((tmp_path / "store" / "teacher").glob(".tmp-*"))


def test_deploy_writes_a_folder_that_predict_runs_alone(first_run, tmp_path):
    """The deployed folder, copied away from the artifact store, classifies PNG files written from the
    test split exactly as the benchmark scored the same engine."""
    import shutil

    import numpy as np
    from PIL import Image

    from stages.common.config import DataConfig
    from stages.training.data import load_dataset

    artifacts, _ = first_run
    done = cli("deploy", str(TINY), "--model", "stochastic_kd", "--precision", "int8", "-o",
               str(tmp_path / "deployed"), artifacts=artifacts)
    assert done.returncode == 0, done.stderr
    assert "Asked for: stochastic_kd at int8" in done.stdout
    package = json.loads((tmp_path / "deployed" / "deploy.json").read_text())
    card = (tmp_path / "deployed" / "model-card.md").read_text()
    assert package["precision"] == "int8" and "## How to feed it" in card and "stochastic KD" in card
    assert package["training"] == ("1 epoch, batch 64, SGD lr 0.1 (cosine), seed 0, on 1,437 training images, "
                                   f"run in fp32 on cpu ({cpu_model()})")
    moved = shutil.copytree(tmp_path / "deployed", tmp_path / "elsewhere" / "model")
    data = load_dataset(DataConfig())
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i, pixels in enumerate(data.x_test):
        Image.fromarray(pixels[..., 0], mode="L").save(pictures / f"{i:04d}.png")
    done = subprocess.run([sys.executable, "-m", "pipeline", "predict", str(moved), str(pictures), "--json",
                           "--top-k", "1"], capture_output=True, text=True, cwd=tmp_path / "elsewhere")
    assert done.returncode == 0, done.stderr
    predicted = np.array([r["top"][0]["index"] for r in json.loads(done.stdout)])
    # The benchmark's score of this engine, as deploy.json carries it (the shared folder's report.json is
    # whichever run wrote it last: another test's run with other settings, perhaps).
    assert float((predicted == data.y_test).mean()) == package["test_accuracy"]
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    done = subprocess.run([sys.executable, "-m", "pipeline", "predict", str(moved), str(bad)], capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "cannot read it as an image" in done.stderr
    assert list(package["files"]) == [package["file"]]  # what deploy copied, with its checksum
    engine = moved / package["file"]
    engine.write_bytes(engine.read_bytes()[:-10])  # a copy that stopped short
    done = subprocess.run([sys.executable, "-m", "pipeline", "predict", str(moved), str(pictures / "0000.png")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == (f"error: {engine}: missing or has the wrong size against "
                                                           f"deploy.json (a copy cut short or changed); copy the "
                                                           f"folder again, or deploy it again")
    (tmp_path / "deployed" / "notes.txt").write_text("the user's own")
    done = cli("deploy", str(TINY), "--model", "stochastic_kd", "--precision", "fp32", "-o",
               str(tmp_path / "deployed"), artifacts=artifacts)
    assert done.returncode == 0, done.stderr
    redeployed = json.loads((tmp_path / "deployed" / "deploy.json").read_text())
    # The int8 engine of the first deploy is gone; what the user put there stays.
    assert sorted(p.name for p in (tmp_path / "deployed").iterdir()) == sorted(
        [redeployed["file"], "deploy.json", "model-card.md", "notes.txt"]) and redeployed["file"] != package["file"]


def test_a_deploy_that_runs_out_of_disk_is_one_line(first_run, tmp_path, monkeypatch):
    import errno
    import shutil

    from pipeline.deploy import deploy
    from pipeline.profiles import load_profile
    from pipeline.store import ArtifactStore
    from stages.common.errors import PipelineError

    def disk_full(source, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(shutil, "copy", disk_full)
    output = tmp_path / "deployed"
    with pytest.raises(PipelineError) as refused:
        deploy(load_profile(TINY), ArtifactStore(first_run[0]), output)
    assert str(refused.value) == (f"-o {output}: cannot write the deployed model there (No space left on device); "
                                  f"free space there or deploy elsewhere")
    assert not (output / "deploy.json").exists()


def test_raw_pixel_models_are_built_beside_the_float_ones_and_predict_from_pixels(first_run, tmp_path):
    """export.preprocess: graph adds each model's raw-pixel form (uint8 NHWC in, normalized in the graph)
    from export to benchmark; the float form's tasks keep their keys, so only the new ones run. The
    deployed raw-pixel engine classifies PNGs exactly as its benchmark scored it."""
    import shutil

    import numpy as np
    from PIL import Image

    from stages.common.config import DataConfig
    from stages.training.data import load_dataset
    from stages.deploy.input_contract import read_contract

    artifacts = shutil.copytree(first_run[0], tmp_path / "artifacts")
    done = cli("run", str(TINY), "--set", "export.preprocess=graph", artifacts=artifacts)
    assert done.returncode == 0, done.stdout + done.stderr
    models = ("teacher", "student", "kd", "stochastic_kd")
    assert ran_tasks(done.stdout) == {f"{stage}:{model}_uint8" for stage in ("export", "quantize", "engine", "benchmark")
                                      for model in models} | {"report"}
    report = json.loads((artifacts / "tiny" / "report.json").read_text())
    raw_rows = [r for r in report["rows"] if r.get("input") == "uint8"]
    assert {(r["model"], r["precision"]) for r in raw_rows} == {(m, p) for m in models for p in ("fp32", "int8", "fp16")}
    assert all(r["runtime"] == "onnxruntime" for r in raw_rows)  # the PyTorch reference is measured once
    markdown = (artifacts / "tiny" / "report.md").read_text()
    assert "int8 on uint8 pixels" in markdown

    done = cli("deploy", str(TINY), "--set", "export.preprocess=graph", "--model", "stochastic_kd", "--precision",
               "int8", "--input", "uint8", "-o", str(tmp_path / "deployed"), artifacts=artifacts)
    assert done.returncode == 0, done.stderr
    package = json.loads((tmp_path / "deployed" / "deploy.json").read_text())
    assert package["input_contract"]["input_dtype"] == "uint8" and package["input_contract"]["input_layout"] == "NHWC"
    engine = tmp_path / "deployed" / package["file"]
    assert read_contract(engine)["input_shape"] == ["batch", 8, 8, 1]
    data = load_dataset(DataConfig())
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i, pixels in enumerate(data.x_test):
        Image.fromarray(pixels[..., 0], mode="L").save(pictures / f"{i:04d}.png")
    done = subprocess.run([sys.executable, "-m", "pipeline", "predict", str(tmp_path / "deployed"), str(pictures),
                           "--json", "--top-k", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    predicted = np.array([r["top"][0]["index"] for r in json.loads(done.stdout)])
    scored = next(r["test_accuracy"] for r in raw_rows if r["model"] == "stochastic_kd" and r["precision"] == "int8")
    assert float((predicted == data.y_test).mean()) == scored

    done = cli("deploy", str(TINY), "--input", "uint8", "-o", str(tmp_path / "none"), artifacts=artifacts)
    assert done.returncode == 2 and "export.preprocess: graph" in done.stderr
