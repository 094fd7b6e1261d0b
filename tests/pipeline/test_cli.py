import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd)


def test_help_imports_no_framework():
    code = ("import sys; sys.argv = ['stochkd-pipeline', '--help']\n"
            "from pipeline.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'numpy', 'pydantic') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("imported_teacher", [False, True], ids=["trained", "imported teacher"])
def test_status_imports_no_framework(tmp_path, imported_teacher):
    extra = ""
    if imported_teacher:  # its key hashes the checkpoint's bytes: no framework needed for that
        (tmp_path / "teacher.pt").write_bytes(b"weights")
        extra = f", '--set', 'teacher.checkpoint={tmp_path / 'teacher.pt'}'"
    code = (f"import sys; sys.argv = ['stochkd-pipeline', 'status', '--artifacts', sys.argv[1]{extra}]\n"
            "from pipeline.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
    assert "to run" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--until", "deploy"], "--until 'deploy': unknown stage; allowed: teacher, analyze, distill, mutual, export"),
    (["run", "--set", "teacher.p_last=2"], "teacher.p_last = 2: Input should be less than or equal to 1"),
    (["run", "missing.yaml"], "missing.yaml: profile not found"),
    (["teacher", "--device", "gpu"], "--device 'gpu': allowed: auto, cpu, cuda or cuda:N"),
    (["status", "--set", "data.dataset=cifar100", "--set", "data.root=/nowhere/c.npz"],
     "data.root=/nowhere/c.npz: no such file"),
    (["status", "--set", "teacher.p_lst=0.5"], "unknown key 'teacher.p_lst' (did you mean 'p_last'?)"),
    (["status", "--set", "teacher.arch=resnet999"], "unknown network 'resnet999'; allowed: resnet8"),
    (["status", "--set", "benchmark.warmup=abc"], "benchmark.warmup = 'abc': Input should be a valid integer"),
    (["status", "--set", "methods=[xyz]"], "methods.0 = 'xyz': Input should be 'kd' or 'dml'"),
    (["status", "--set", "target.backend=tensorrt", "--set", "target.tensorrt.optimization_batch=500"],
     "target.tensorrt.optimization_batch = 500 lies outside benchmark.batch_sizes [1, 64]"),
    (["deploy", "-o", "nowhere", "--input", "rgb"], "--input 'rgb': choose float or uint8"),
    (["status", "--set", "teacher.training.capture_step=true", "--set", "teacher.training.drop_execution=skip"],
     "training.capture_step records the step as a CUDA graph, which host-side skipping breaks"),
    (["run", "--mps"], "--mps lets tasks run side by side share a GPU; add --jobs 2 or more"),
    (["teacher", "--nproc-per-node", "2", "--set", "teacher.p_lst=0.5"],  # before torchrun starts any rank
     "unknown key 'teacher.p_lst' (did you mean 'p_last'?)"),
    (["teacher", "--device", "cuda:0", "--nproc-per-node", "2"],
     "--device cuda:0 with --nproc-per-node 2: each process takes a GPU of its own (local rank N uses cuda:N); "
     "use --device cuda"),
    (["sweep", "--over", "seed=0,1", "--jobs", "2", "--mps", "--device", "cpu"],
     "--mps shares a GPU between tasks, and --device cpu uses none; drop --mps"),
    (["run", "--artifacts", "README.md"],  # refused before the machine's speed is measured
     "--artifacts README.md: a file, not a folder; pass --artifacts with a folder (one that is missing is created)"),
    (["status", "--artifacts", "pyproject.toml"], "--artifacts pyproject.toml: a file, not a folder"),
    (["deploy", "-o", "README.md"], "-o README.md: a file, not a folder; deploy into a folder"),
    (["deploy", "-o", "README.md/model"], "-o README.md/model: README.md is a file, not a folder; deploy elsewhere"),
    (["bundle", "-o", "never.tar", "--set", "seed=a"], "quickstart.yaml (with --set): seed = 'a'"),
    (["mutual"], "mutual: quickstart has no mutual task, which comes with methods including dml (its methods: "
                 "[kd]); add dml to methods, or choose another stage"),
    (["run", "--force", "mutual"], "--force mutual: quickstart has no mutual task"),
    (["teacher", "--set", "methods=[dml]"], "teacher: quickstart has no teacher task, which comes with methods "
                                            "including kd (its methods: [dml]); add kd to methods"),
    (["run", "--from", "report", "--until", "teacher"], "--from report comes after --until teacher, so nothing would "
                                                        "be recomputed; drop --until or choose a stage up to teacher"),
    (["run", "--force", "benchmark", "--until", "export"], "--force benchmark comes after --until export"),
    (["sweep", "--over", "name=a,b"], "--over: the points name=a and name=b run the same tasks up to --until mutual, "
                                      "so the sweep would count one result twice; sweep a key those stages read, or "
                                      "set --until to the stage that reads it"),
    (["sweep", "--over", "seed=0,1", "--over", "benchmark.iterations=5,9"],
     "the points seed=0 benchmark.iterations=5 and seed=0 benchmark.iterations=9 run the same tasks"),
    (["export", "--set", "export.opset=99"], "export.opset = 99: the installed onnx"),  # before any training
    (["teacher", "--nnodes", "two"], "--nnodes 'two': give a number of nodes, e.g. 2, or a range MIN:MAX with MIN up "
                                     "to MAX, e.g. 1:4"),
    (["teacher", "--nnodes", "4:2"], "--nnodes '4:2': give a number of nodes"),
    (["run", "--nnodes", "1:2", "--node-rank", "2"], "--node-rank 2 with --nnodes 1:2: node ranks count from 0 to 1"),
    (["status", "--set", "benchmark.cpu_affinity=[0, -1]"],
     "benchmark.cpu_affinity = [0, -1]: core numbers count from 0, got [0, -1]"),
    (["status", "--set", "benchmark.cpu_affinity=[1, 1]"], "benchmark.cpu_affinity = [1, 1]: each core at most once"),
    (["sweep", "--over", "seed=0,a"],
     "quickstart.yaml (with --over point seed=a): seed = 'a': Input should be a valid"),
])
def test_bad_input_gets_one_line_and_exit_code_2(args, message):
    done = cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_schema_lists_every_key():
    done = cli("schema")
    assert done.returncode == 0
    for key in ("distill.teacher_samples", "teacher.p_last", "quantize.calibration_method", "data.root"):
        assert key in done.stdout


def test_the_default_profile_is_found_from_any_directory(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from pipeline.profiles import default_profile_path; "
                           "print(default_profile_path().is_file())"], cwd=tmp_path, capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr


def test_a_yaml_syntax_error_names_line_and_column(tmp_path):
    profile = tmp_path / "broken.yaml"
    profile.write_text("name: x\nteacher: {arch: resnet8\n")
    done = cli("status", str(profile))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"{profile}: YAML syntax error at line 3, column 1" in done.stderr


def test_status_json_lists_every_task_for_scripts(tmp_path):
    import json

    done = cli("status", "tests/profiles/tiny.yaml", "--json", "--artifacts", str(tmp_path))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["profile"] == "tiny" and status["artifacts"] == str(tmp_path)
    assert status["tasks"][0] == {"task": "teacher:teacher", "stage": "teacher", "variant": "teacher",
                                  "key": status["tasks"][0]["key"], "state": "to run", "headline": None,
                                  "folder": None, "checkpoint": None,
                                  "estimated_s": None}  # no probe measured in this folder yet
    assert {t["stage"] for t in status["tasks"]} >= {"teacher", "distill", "benchmark", "report"}


def test_sigterm_outside_training_unwinds_and_exits_143(capsys):
    # Between stages (or in one that does not train) SIGTERM raises, so the store discards the
    # half-written artifact as it does on Ctrl-C, where Python's default would end the process there.
    import os
    import signal
    import time

    from pipeline.cli_options import user_errors

    outside = signal.getsignal(signal.SIGTERM)
    unwound = []
    with pytest.raises(SystemExit) as ended, user_errors():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            unwound.append(True)
    assert ended.value.code == 143 and unwound == [True]
    assert capsys.readouterr().err.startswith("terminated (SIGTERM): finished stages are cached")
    assert signal.getsignal(signal.SIGTERM) is outside


@pytest.mark.parametrize("command", [["run"], ["sweep", "--over", "seed=0,1"]], ids=["run", "sweep"])
@pytest.mark.parametrize("visible, message", [
    ("", "--mps shares one GPU between tasks, and none is visible here; drop --mps"),
    ("0,1", "--mps shares one GPU between tasks, and 2 are visible, each task getting its own; drop --mps, or "
            "set CUDA_VISIBLE_DEVICES to one GPU"),
])
def test_mps_needs_exactly_one_visible_gpu(tmp_path, command, visible, message):
    import os

    done = subprocess.run([sys.executable, "-m", "pipeline", command[0], "tests/profiles/tiny.yaml", *command[1:],
                           "--jobs", "2", "--mps", "--artifacts", str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": visible})
    assert done.returncode == 2 and done.stderr.strip() == f"error: {message}", done.stderr
    assert not any(tmp_path.iterdir())  # refused before anything ran, the speed measurement included


@pytest.mark.parametrize("command", [["benchmark"], ["run"], ["sweep", "--over", "seed=0,1", "--until", "report"]],
                         ids=["benchmark", "run", "sweep"])
def test_benchmark_cores_this_machine_lacks_are_refused_before_training(tmp_path, command):
    import os

    usable = sorted(os.sched_getaffinity(0))
    absent = usable[-1] + 1
    done = cli(command[0], "tests/profiles/tiny.yaml", *command[1:], "--set", f"benchmark.cpu_affinity=[0, {absent}]",
               "--artifacts", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: benchmark.cpu_affinity = [0, {absent}]: this process may run on cores "
        f"{', '.join(map(str, usable))} only, not on {absent}; choose among them, or leave benchmark.cpu_affinity "
        f"unset"), done.stderr
    assert not any(tmp_path.iterdir())


def test_benchmark_cores_where_a_process_cannot_be_pinned(monkeypatch):
    import os

    from stages.common.errors import PipelineError
    from stages.common.hardware import check_benchmark_cores

    check_benchmark_cores(None)
    check_benchmark_cores((0,))
    monkeypatch.delattr(os, "sched_setaffinity")
    check_benchmark_cores(None)  # nothing asked, nothing to refuse
    with pytest.raises(PipelineError, match=r"^benchmark.cpu_affinity = \[0\]: this system \(\w+\) cannot pin a "
                                            r"process to cores; leave benchmark.cpu_affinity unset$"):
        check_benchmark_cores((0,))


def test_an_empty_artifacts_variable_means_the_default_folder(monkeypatch, tmp_path):
    from pipeline.cli_options import artifacts_root

    monkeypatch.setenv("STOCHKD_ARTIFACTS", "")
    assert artifacts_root(None) == Path("artifacts")  # not the current directory, which Path("") is
    monkeypatch.setenv("STOCHKD_ARTIFACTS", str(tmp_path))
    assert artifacts_root(None) == tmp_path and artifacts_root(tmp_path / "given") == tmp_path / "given"


def test_an_opset_every_onnx_knows_is_checked_without_importing_onnx(monkeypatch):
    from pipeline.cli import _check_opset

    monkeypatch.setitem(sys.modules, "onnx", None)  # importing it now raises ImportError
    _check_opset(18)  # a cached rerun pays nothing for the check
    with pytest.raises(ImportError):
        _check_opset(99)
