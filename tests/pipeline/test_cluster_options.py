"""--cluster's refusals that need no cluster: Ray missing or of a version the project does not know,
an address that is not one, options that cannot go with it. Each is one line naming the fix."""

import sys

import pytest

from pipeline.cli import _check_cluster
from pipeline.cluster import connect
from stages.common.errors import PipelineError


def test_without_ray_cluster_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(PipelineError, match=r"^--cluster needs Ray: pip install -e '\.\[ray\]' \(on this machine "
                                            r"and on every node of the cluster\)$"):
        connect("local")


@pytest.mark.parametrize("version", ["2.9.3", "3.1.0"])
def test_a_ray_version_outside_the_supported_range_is_refused_before_joining(monkeypatch, version):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    monkeypatch.setattr(ray, "__version__", version)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("joined a cluster with an unsupported Ray"))
    with pytest.raises(PipelineError, match=rf"^--cluster: Ray {version} is installed; stochkd-pipeline works with "
                                            r"Ray >=2\.40,<3\.0: pip install 'ray>=2\.40,<3\.0'$"):
        connect("local")


def test_an_address_that_is_not_one_or_does_not_answer(monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    with pytest.raises(PipelineError, match=r"^--cluster head-node: not a Ray address; give HOST:PORT"):
        connect("head-node")
    with pytest.raises(PipelineError, match=r"^--cluster ray://127\.0\.0\.1:1: no Ray cluster answered \(.+\); "
                                            r"start one with `ray start --head` there"):
        connect("ray://127.0.0.1:1")


@pytest.mark.parametrize("jobs, mps, device, fix", [
    (2, False, "auto", "drop --jobs"), (1, True, "auto", "drop --mps"), (1, False, "cuda:1", "use --device cuda")])
def test_options_that_cannot_go_with_a_cluster(jobs, mps, device, fix):
    with pytest.raises(PipelineError, match=fix):
        _check_cluster("local", jobs, mps, device)
    _check_cluster(None, jobs, mps, device)  # without --cluster, theirs to judge


def test_a_task_that_failed_on_a_node_is_named_with_its_whole_error_in_the_logs(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from pipeline.cluster import ClusterScheduler
    from pipeline.plan import Task
    from pipeline.store import ArtifactStore

    error = "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom"
    monkeypatch.setattr(ray, "get", lambda ref, **kwargs: {"code": 1, "error": error, "node": "node-1 0a1b2c3d"})
    task = Task("teacher", "teacher", {})
    with pytest.raises(PipelineError, match=r"^teacher:teacher failed on node-1 0a1b2c3d \(ValueError: boom\); the "
                                            r"cluster's other tasks were stopped with their checkpoints saved; its "
                                            r"whole error is in \S+/logs/teacher-teacher-\w{12}\.log$"):
        ClusterScheduler(ArtifactStore(tmp_path), "local")._finish(task, object(), tmp_path)
    [log] = (tmp_path / "logs").iterdir()
    assert log.read_text() == f"on node node-1 0a1b2c3d\n{error}"
    monkeypatch.setattr(ray, "get", lambda ref, **kwargs: {"code": 2, "error": "data.path x: missing", "node": "n 1"})
    with pytest.raises(PipelineError, match=r"^teacher:teacher \(on n 1\): data\.path x: missing$"):
        ClusterScheduler(ArtifactStore(tmp_path), "local")._finish(task, object(), tmp_path)


def test_a_node_sends_the_head_only_the_checkpoints_its_task_wrote(tmp_path, monkeypatch):
    """A retried or resumed task receives its checkpoint from the head; sending it straight back would
    tell the head that the task had moved on when it had not."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    import pipeline.cluster as cluster
    from pipeline.plan import Task
    from pipeline.store import ArtifactStore

    sent = []

    class Mailbox:
        class put_checkpoint:  # noqa: N801 - as a Ray actor's method is called
            @staticmethod
            def remote(stage, key, blob):
                sent.append((stage, key, blob))

    monkeypatch.setattr(ray, "get", lambda ref, **kwargs: ref)
    monkeypatch.setattr(cluster, "_bundle_bytes", lambda store, tasks, scratch, name: b"bundle")
    store, task = ArtifactStore(tmp_path / "artifacts"), Task("teacher", "teacher", {})
    received = store.resume_folder(task.stage, task.key)
    received.mkdir(parents=True)
    (received / "training.pt").write_bytes(b"as the head sent it")
    shipper = cluster._CheckpointShipper(store, task, Mailbox, tmp_path)
    shipper.ship()
    assert sent == []
    (received / "training.pt").write_bytes(b"a step further, as the task wrote it")
    shipper.ship()
    shipper.ship()
    assert sent == [("teacher", task.key, b"bundle")]


def stand_in_for_rays_calls(ray, monkeypatch) -> None:
    """The head's stop without a cluster: a cancel does nothing, every ref is done at once, and a
    mailbox stand-in's answers are taken as they come."""
    monkeypatch.setattr(ray, "cancel", lambda ref: None)
    monkeypatch.setattr(ray, "wait", lambda refs, **kwargs: (refs, []))
    monkeypatch.setattr(ray, "get", lambda ref, **kwargs: ref)


def test_a_stop_keeps_the_checkpoint_a_cancelled_task_sends_after_ray_counts_it_done(tmp_path, monkeypatch):
    """Ray can count a cancelled task done while its function still saves its checkpoint and sends it;
    the head leaves only once every task that had started has said it ended (or the grace runs out)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from pipeline.cluster import ClusterScheduler
    from pipeline.plan import Task
    from pipeline.store import ArtifactStore

    started, queued = Task("teacher", "teacher", {}), Task("teacher", "plain_teacher", {})
    asked = []

    class Mailbox:
        class latest_states:  # noqa: N801 - as a Ray actor's method is called
            @staticmethod
            def remote():
                return {started.id: {"description": "epoch 2/30"}}  # the queued task never reported

        class ended_tasks:  # noqa: N801
            @staticmethod
            def remote():
                asked.append(1)
                return {started.id} if len(asked) >= 3 else set()  # its word comes on the third look

    stand_in_for_rays_calls(ray, monkeypatch)
    scheduler = ClusterScheduler(ArtifactStore(tmp_path), "local")
    collected = []
    monkeypatch.setattr(scheduler, "_collect", lambda mailbox, running, scratch: collected.append(len(asked)))
    scheduler._cancel({"ref 1": started, "ref 2": queued}, Mailbox, tmp_path, grace_s=10)
    assert collected == [3]


def test_a_stop_that_cannot_keep_a_sent_checkpoint_says_so_and_goes_on(tmp_path, monkeypatch):
    """The checkpoints collected on a stop failing to unpack here is a warning naming why, not silence."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from pipeline.cluster import ClusterScheduler
    from pipeline.store import ArtifactStore
    from stages.common.errors import ArtifactError

    class Mailbox:
        class latest_states:  # noqa: N801 - as a Ray actor's method is called
            @staticmethod
            def remote():
                return {}

        class ended_tasks:  # noqa: N801
            @staticmethod
            def remote():
                return set()

    def broken(mailbox, running, scratch):
        raise ArtifactError("checkpoint.tar: training.pt does not match its checksum")

    stand_in_for_rays_calls(ray, monkeypatch)
    warned = []
    scheduler = ClusterScheduler(ArtifactStore(tmp_path, warn=warned.append), "local")
    monkeypatch.setattr(scheduler, "_collect", broken)
    scheduler._cancel({}, Mailbox, tmp_path, grace_s=1)
    assert len(warned) == 1 and "does not match its checksum" in warned[0] and "a rerun resumes" in warned[0]


def test_a_cluster_task_hears_rays_cancel_where_its_worker_inherited_sigint_ignored():
    """Ray cancels a running task with SIGINT in its worker's main thread; a worker of a cluster started by a
    background job inherits SIGINT ignored, and Python drops it: the training never stops. Within
    stoppable_by_cancel the training's stop request hears it, and SIGINT is ignored again after."""
    import _thread
    import signal
    import time

    from pipeline.cluster import stoppable_by_cancel
    from stages.training.resume import stop_on_interrupt
    from tests.processes import sigint_ignored

    def cancel() -> None:
        _thread.interrupt_main()  # what Ray's cancel does in the worker
        time.sleep(0.05)  # the handler runs between two bytecodes of this thread

    with sigint_ignored():
        with stop_on_interrupt() as deaf:
            cancel()
        assert deaf.signum is None  # as a worker was
        with pytest.raises(KeyboardInterrupt):  # delivered again on leaving, as training does after saving
            with stoppable_by_cancel(), stop_on_interrupt() as stop:
                cancel()
                assert stop.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
