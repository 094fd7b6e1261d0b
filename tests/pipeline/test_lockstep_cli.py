"""``--lockstep`` on the command line: a row's students trained in one process are the tasks the
cache, the reports and a rerun know, with the weights of their training one at a time."""

import json

import pytest

from tests.commands import TINY, cli


BOTH_READINGS = ("--set", "teacher.readings=[stochastic_depth,plain]")


def trained(artifacts) -> dict[str, bytes]:
    """Every trained model's weights, by stage and key."""
    return {f"{path.parts[-3]}/{path.parts[-2]}": path.read_bytes()
            for path in sorted((artifacts / "store").glob("*/*/model.pt"))}


@pytest.mark.slow
def test_a_row_in_lockstep_trains_what_its_tasks_one_at_a_time_would(tmp_path):
    together = cli("run", TINY, *BOTH_READINGS, "--until", "distill", "--lockstep", artifacts=tmp_path)
    assert together.returncode == 0, together.stderr
    assert together.stdout.count("(in lockstep)") >= 2  # the teachers' row, then the students'
    models = trained(tmp_path)
    assert len(models) == 7  # two teachers; the student alone, KD and stochastic KD from each
    store = tmp_path / "store"
    for stage, row in (("teacher", 2), ("distill", 5)):
        manifests = [json.loads(p.read_text()) for p in (store / stage).glob("*/manifest.json")]
        assert len(manifests) == row
        assert all(len(m["timings"]["lockstep_with"]) == row - 1 and m["metrics"]["as_run"]["lockstep_models"] == row
                   for m in manifests)
    again = cli("run", TINY, *BOTH_READINGS, "--until", "distill", "--lockstep", artifacts=tmp_path)
    assert again.returncode == 0 and "0 ran" in again.stdout  # tasks the cache knows

    one_at_a_time = cli("run", TINY, *BOTH_READINGS, "--until", "distill", "--from", "teacher", artifacts=tmp_path)
    assert one_at_a_time.returncode == 0, one_at_a_time.stderr
    assert "(in lockstep)" not in one_at_a_time.stdout
    assert trained(tmp_path) == models


def test_lockstep_with_jobs_or_a_cluster_is_refused_in_one_line(tmp_path):
    for option in (("--jobs", "2"), ("--cluster", "local")):
        refused = cli("distill", TINY, "--lockstep", *option, artifacts=tmp_path)
        assert refused.returncode == 2
        assert refused.stderr == (f"error: --lockstep trains a row's models in this one process; {option[0]} runs "
                                  f"each task in a process of its own: drop one of them\n")
