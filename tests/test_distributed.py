"""Training under torchrun: two CPU processes (gloo) against one, on the tiny profile's teacher."""

import json
import os
import re
from pathlib import Path

import pytest

from tests.commands import cli, INTERRUPTED, started_teacher, TINY
from tests.processes import processes_naming

pytestmark = pytest.mark.slow
# Stated tolerance: per-epoch training loss within 5 % of the single-process run. The global batch,
# its order, its augmentation and the seed are the same; on CPUs each rank's BatchNorm sees only its
# half of the batch (PyTorch synchronizes BatchNorm on GPUs only), and gradients are summed in
# another order.
LOSS_TOLERANCE = 0.05


def teacher(artifacts: Path, *extra: str) -> Path:
    done = cli("teacher", TINY, *extra, artifacts=artifacts)
    assert done.returncode == 0, done.stdout + done.stderr
    folders = [p for p in (artifacts / "store" / "teacher").iterdir()]
    assert len(folders) == 1, folders  # only rank 0 wrote, and nothing half-written stayed behind
    return folders[0]


def test_two_processes_train_like_one_and_cache_under_the_same_key(tmp_path):
    one = teacher(tmp_path / "one")
    two = teacher(tmp_path / "two", "--nproc-per-node", "2")
    assert one.name == two.name
    losses = [[epoch["loss"] for epoch in json.loads((f / "history.json").read_text())] for f in (one, two)]
    for single, parallel in zip(*losses):
        assert abs(parallel - single) <= LOSS_TOLERANCE * single
    assert recorded_accuracy(two) == one_process_accuracy(two)  # the ranks measured it on halves of the images


def recorded_accuracy(folder: Path) -> float:
    return json.loads((folder / "manifest.json").read_text())["metrics"]["test_accuracy"]


def one_process_accuracy(folder: Path) -> float:
    import torch

    from pipeline.profiles import load_profile
    from stages.nets.checkpoint import load_model
    from stages.training.data import load_dataset
    from stages.training.evaluation import accuracy_on_test

    return accuracy_on_test(load_model(folder), load_dataset(load_profile(TINY).data), torch.device("cpu"))


TWO_PROCESSES = ("--nproc-per-node", "2")
LONGER = (*INTERRUPTED, *TWO_PROCESSES)


@pytest.fixture
def two_process_reference(uninterrupted_teacher) -> Path:
    """The teacher of a two-process run of INTERRUPTED_EPOCHS epochs, never interrupted."""
    return uninterrupted_teacher(*TWO_PROCESSES)


def assert_ends_like(artifacts: Path, reference: Path) -> None:
    """Rerun, ``artifacts``' teacher ends with the reference's weights and per-epoch history."""
    resumed = teacher(artifacts, *LONGER)
    assert (resumed / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
    history = [[{k: e[k] for k in ("loss", "train_accuracy")} for e in json.loads((f / "history.json").read_text())]
               for f in (reference, resumed)]
    assert history[0] == history[1]


def test_ctrl_c_stops_every_rank_at_one_step_and_the_rerun_ends_identical(tmp_path, two_process_reference):
    """Ctrl-C to the command reaches torchrun once; every rank stops after the same step, rank 0
    saves, nothing keeps running, and the rerun ends with the weights and history of an uninterrupted
    two-process run. SIGTERM and SIGHUP are passed on the same way (tests/stages/common/test_torchrun.py);
    a closed terminal stops such a run in tests/test_hangup.py."""
    import signal

    artifacts = tmp_path / "stopped"
    process = started_teacher(artifacts, *TWO_PROCESSES, "--checkpoint-every", "3600")  # only the signal saves
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert processes_naming(str(artifacts)) == []  # no rank left training on its own
    stopped = re.findall(r"^interrupted: teacher resnet8: stopped in epoch \d+, after batch \d+ of \d+; its progress "
                         r"is saved in \S+/training\.pt: rerun the same command to resume from there$", stderr, re.M)
    assert len(stopped) == 1, stderr  # rank 0 speaks for both
    assert "Traceback" not in stderr
    assert [p.name[:8] for p in (artifacts / "store" / "teacher").iterdir()] == [".resume-"]
    assert_ends_like(artifacts, two_process_reference)


def test_a_rank_killed_outright_is_named_and_the_rerun_resumes_to_the_same_weights(tmp_path,
                                                                                   two_process_reference):
    """SIGKILL (the out-of-memory killer, kill -9) leaves rank 1 no word of its own: the command
    names it, exits 137, leaves nothing running, and the rerun resumes from the last periodic save."""
    import signal

    artifacts = tmp_path / "killed"
    process = started_teacher(artifacts, *TWO_PROCESSES, "--checkpoint-every", "0.2")
    [rank_1] = [int(line.split(maxsplit=1)[0]) for line in processes_naming(str(artifacts), with_pid=True)
                if "LOCAL_RANK=1" in line.split(maxsplit=1)[1]]
    os.kill(rank_1, signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 137, stderr
    assert ("error: rank 1 was killed by SIGKILL; rerun the same command to resume from the last training "
            "checkpoint") in stderr.splitlines()
    # Rank 0 either crashed in its wake (a collective lost its peer: one line, its traceback in a log)
    # or was stopped by torchrun between two steps; either way no traceback reaches the terminal.
    assert "Traceback" not in stderr, stderr
    assert processes_naming(str(artifacts)) == []
    assert_ends_like(artifacts, two_process_reference)


def test_an_error_in_the_ranks_is_each_ranks_line_and_exit_2_not_a_traceback(tmp_path):
    """torchrun's own report of a failed rank (a traceback and a summary) gives way to the ranks'
    messages and their exit code."""
    bogus = tmp_path / "teacher.pt"
    bogus.write_text("not a state dict")
    done = cli("teacher", TINY, "--set", f"teacher.checkpoint={bogus}", "--nproc-per-node", "2",
               artifacts=tmp_path / "a")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr
    message = (f"{bogus}: refused: not a plain state dict of tensors (it holds objects whose loading could run "
               f"code, or it is damaged); save the model's state_dict() alone with torch.save, or as .safetensors")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    # Both ranks fail alike; torchrun stops the other once one has failed, which may be before it says so.
    assert errors and set(errors) <= {f"error: {message}", f"error (rank 1): {message}"}, done.stderr


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("teacher", TINY, "--nproc-per-node", "2", "--master-port", str(port), artifacts=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert f"port: {port}" in error and "address already in use" in error and "--master-port" in error, error
