"""``--lockstep`` on the command line: a row's students trained in one process are the tasks the
cache, the reports and a rerun know, with the weights of their training one at a time."""

import json

from tests.commands import TINY, cli


def students(artifacts) -> dict[str, bytes]:
    return {path.parent.name: path.read_bytes() for path in sorted((artifacts / "store" / "distill").glob("*/model.pt"))}


def test_distill_in_lockstep_trains_the_tasks_one_at_a_time_would(tmp_path):
    together = cli("distill", TINY, "--lockstep", artifacts=tmp_path)
    assert together.returncode == 0, together.stderr
    assert "in lockstep" in together.stdout
    trained = students(tmp_path)
    assert len(trained) == 3  # the student alone, KD and stochastic KD
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "store" / "distill").glob("*/manifest.json")]
    assert all(len(m["timings"]["lockstep_with"]) == 2 and m["metrics"]["as_run"]["lockstep_models"] == 3
               for m in manifests)
    again = cli("distill", TINY, "--lockstep", artifacts=tmp_path)
    assert again.returncode == 0 and "0 ran, 4 from the cache" in again.stdout  # tasks the cache knows

    one_at_a_time = cli("distill", TINY, "--force", artifacts=tmp_path)
    assert one_at_a_time.returncode == 0, one_at_a_time.stderr
    assert students(tmp_path) == trained


def test_lockstep_with_jobs_or_a_cluster_is_refused_in_one_line(tmp_path):
    for option in (("--jobs", "2"), ("--cluster", "local")):
        refused = cli("distill", TINY, "--lockstep", *option, artifacts=tmp_path)
        assert refused.returncode == 2
        assert refused.stderr == (f"error: --lockstep trains a row's students in this one process; {option[0]} runs "
                                  f"each task in a process of its own: drop one of them\n")
