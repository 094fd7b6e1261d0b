"""``--cluster ADDRESS``: the tasks of a plan as Ray tasks on a cluster of machines, in dependency
order, as the local scheduler (pipeline.scheduler) runs them on one.

- No shared filesystem is assumed. A task receives its inputs as bundles (pipeline.bundle) packed
  from the head's artifacts folder, works in a private folder on its node, and returns its artifact
  as a bundle, which the head verifies and adds to its store as ``unbundle`` does. A node that sees
  the head's artifacts folder itself (a shared mount: the run leaves a marker file there) works in it
  directly, and nothing is copied.
- Training checkpoints reach the head as they are written, through the run's mailbox (a small actor
  on the head's node), so a training whose node dies is retried by Ray on another node and resumes
  from its last checkpoint.
- Engines and benchmarks belong to the platform and machine they ran on, and their keys are computed
  here for this machine: they run on the head's own node, a benchmark alone there (it holds every
  CPU of the node). Through a Ray Client address (``ray://``), where this process is outside the
  cluster, they run in this process instead.
- The cache, the per-key locks and the keys are the store's, as in a local run: a cached task is not
  sent, and the same work under two names runs once.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

from stages.common.errors import STOP_SIGNALS, STOP_WORDS, ArtifactError, PipelineError, Terminated, first_line
from pipeline.plan import Task
from pipeline.registry import STAGES
from pipeline.runner import Outcome, Runner
from pipeline.store import ArtifactStore

SUPPORTED_RAY = ((2, 40), (3, 0))  # from 2.40 (Python 3.13 wheels, its task-cancel semantics) up to 3.0
POLL_S = 0.5
SHIP_EVERY_S = 1.0  # how often a node looks for a new training checkpoint to send to the head
RETRIES = 3  # of a task whose node or worker process died (Ray retries those, not errors in the task)
COPY_ENV = "STOCHKD_CLUSTER_COPY"  # "1": copy artifacts even to nodes that see the artifacts folder
GPU_STAGES = ("teacher", "distill", "mutual", "analyze")  # the stages that use a GPU where there is one


def connect(address: str) -> str:
    """Join the cluster at ``address`` (``local``: a private one for this run); returns the Ray
    version. Every failure is one line."""
    try:
        import ray
    except ImportError:
        raise PipelineError("--cluster needs Ray: pip install -e '.[ray]' (on this machine and on every node of "
                            "the cluster)") from None
    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    if not SUPPORTED_RAY[0] <= version < SUPPORTED_RAY[1]:
        low, high = (".".join(map(str, v)) for v in SUPPORTED_RAY)
        raise PipelineError(f"--cluster: Ray {ray.__version__} is installed; stochkd-pipeline works with Ray "
                            f">={low},<{high}: pip install 'ray>={low},<{high}'")
    if address not in ("local", "auto"):
        _check_reachable(address)
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR",
             "configure_logging": True}
    # Ray's core installs its own handlers, which end the process on SIGTERM at once; this run's own
    # (stop the cluster's tasks with their checkpoints saved, then exit 143) are put back.
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        if address == "local":
            # Ray starts its workers at nice 15, for its own daemons' sake; on a machine shared with other
            # work a private cluster's tasks would then get what is left of the CPU, where --jobs's
            # get their share. The cluster is this run's alone: its tasks run at the run's priority.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=os.cpu_count() or 1, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or ValueError here
        how = ("start one with `ray start --head` there, or use --cluster local for a private one"
               if address != "auto" else "start one on this machine with `ray start --head`, or pass its address")
        raise PipelineError(f"--cluster {address}: no Ray cluster answered ({first_line(exc)}); {how}") from None
    finally:
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
    return ray.__version__


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Ray waits minutes on an address that does not answer, retrying; a TCP handshake says at once."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise PipelineError(f"--cluster {address}: not a Ray address; give HOST:PORT (the head's GCS, 6379 by "
                            f"default), ray://HOST:PORT (Ray Client, 10001), auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise PipelineError(f"--cluster {address}: no Ray cluster answered ({exc.strerror or exc}); start one "
                            f"with `ray start --head` there, or use --cluster local for a private one") from None


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


class _Mailbox:
    """The run's meeting point, an actor on the head's node: tasks leave their progress and their
    latest training checkpoint (a bundle) here; the head collects both, and a retried task takes its
    checkpoint back from here."""

    def __init__(self) -> None:
        self.states: dict[str, dict] = {}
        self.checkpoints: dict[tuple[str, str], bytes] = {}
        self.fresh: set[tuple[str, str]] = set()
        self.ended: set[str] = set()

    def end(self, task_id: str) -> None:
        self.ended.add(task_id)

    def ended_tasks(self) -> set[str]:
        return self.ended

    def put_state(self, task_id: str, state: dict) -> None:
        self.states[task_id] = state

    def latest_states(self) -> dict[str, dict]:
        return self.states

    def put_checkpoint(self, stage: str, key: str, bundle: bytes, from_head: bool = False) -> None:
        self.checkpoints[(stage, key)] = bundle
        if not from_head:
            self.fresh.add((stage, key))

    def checkpoint(self, stage: str, key: str) -> bytes | None:
        return self.checkpoints.get((stage, key))

    def take_fresh_checkpoints(self) -> dict[tuple[str, str], bytes]:
        taken = {entry: self.checkpoints[entry] for entry in self.fresh}
        self.fresh.clear()
        return taken


def _bundle_bytes(store: ArtifactStore, tasks: list, scratch: Path, name: str) -> bytes:
    from pipeline.bundle import pack

    path = scratch / f"{name}-{uuid.uuid4().hex[:8]}.tar"
    pack(store, tasks, path, name)
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def _add_bundle(blob: bytes, store: ArtifactStore, scratch: Path, *, replace_checkpoint: bool = False) -> None:
    from pipeline.bundle import unpack

    path = scratch / f"received-{uuid.uuid4().hex[:8]}.tar"
    path.write_bytes(blob)
    try:
        unpack(path, store, replace_checkpoints=replace_checkpoint)
    finally:
        path.unlink(missing_ok=True)


def _has_checkpoint(store: ArtifactStore, task: Task) -> bool:
    folder = store.resume_folder(task.stage, task.key)
    return folder.is_dir() and any(not p.name.startswith(".") and ".partial" not in p.name for p in folder.iterdir())


class _CheckpointShipper:
    """Sends a task's training checkpoint to the mailbox each time a new one is in place on this node
    (checked every SHIP_EVERY_S, and once more when the task ends)."""

    def __init__(self, store: ArtifactStore, task: Task, mailbox, scratch: Path) -> None:
        self.store, self.task, self.mailbox, self.scratch = store, task, mailbox, scratch
        # The checkpoint the task received from the mailbox is not sent back: the head has it.
        folder = store.resume_folder(task.stage, task.key)
        self.sent: tuple | None = self._signature(folder) if folder.is_dir() else None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "_CheckpointShipper":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()
        self.ship()

    def _loop(self) -> None:
        while not self.stop.wait(SHIP_EVERY_S):
            self.ship()

    def _signature(self, folder: Path) -> tuple:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                            if p.is_file() and ".partial" not in p.name))

    def ship(self) -> None:
        import ray

        folder = self.store.resume_folder(self.task.stage, self.task.key)
        try:
            if not folder.is_dir() or self.store.lookup(self.task.stage, self.task.key) is not None:
                return
            signature = self._signature(folder)
            if not signature or signature == self.sent:
                return
            # A copy without the files being written, so the bundle's checksums hold.
            copy = ArtifactStore(self.scratch / f"ship-{uuid.uuid4().hex[:8]}")
            target = copy.resume_folder(self.task.stage, self.task.key)
            target.mkdir(parents=True)
            for name, _, _ in signature:
                shutil.copy2(folder / name, target / name)
            try:
                blob = _bundle_bytes(copy, [self.task], self.scratch, "checkpoint")
            finally:
                shutil.rmtree(copy.root, ignore_errors=True)
            ray.get(self.mailbox.put_checkpoint.remote(self.task.stage, self.task.key, blob))
            self.sent = signature
        except (OSError, ArtifactError):
            pass  # a checkpoint replaced while it was copied: the next look sends the new one


def _mailbox_progress(mailbox, task_id: str, node: str):
    """A stage's progress callback whose state goes to the mailbox, throttled as a --jobs task's."""
    from pipeline.task_worker import throttled_progress

    return throttled_progress(lambda state: mailbox.put_state.remote(task_id, state), node=node)


@contextlib.contextmanager
def stoppable_by_cancel():
    """Ray cancels a running task by raising SIGINT in its worker's main thread, which Python drops
    where SIGINT is ignored: so it is in every worker of a cluster started from a process that ignores
    it (a job a shell script started with ``&``), whose trainings would run on, deaf to a stop. Within
    this block SIGINT reaches Python, so that training stops between two steps with its checkpoint."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_on_node(spec: dict[str, Any], mailbox, *input_bundles: bytes) -> dict[str, Any]:
    """One task on a cluster node (a Ray task); returns its outcome and, where the node has its own
    artifacts folder, the artifact as a bundle. Errors come back as values, so that Ray retries only
    the tasks whose node or process died."""
    import ray

    task: Task = spec["task"]
    # The host, and Ray's node id where one host runs several nodes (a test cluster, a big machine).
    node = f"{platform.node()} {ray.get_runtime_context().get_node_id()[:8]}"
    shared = spec["copy"] is False and Path(spec["root"], "store", spec["marker"]).is_file()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
    here = os.getcwd()
    if Path(spec["cwd"]).is_dir():
        os.chdir(spec["cwd"])  # the profile's relative paths (datasets) mean what they mean on the head
    try:
        with tempfile.TemporaryDirectory(prefix="stochkd-node-") as scratch_name:
            scratch = Path(scratch_name)
            store = ArtifactStore(Path(spec["root"]) if shared else scratch / "artifacts")
            try:
                if not shared:
                    for blob in input_bundles:
                        _add_bundle(blob, store, scratch)
                    checkpoint = ray.get(mailbox.checkpoint.remote(task.stage, task.key))
                    if checkpoint is not None:
                        _add_bundle(checkpoint, store, scratch)
                inputs = {}
                for role, needed in task.needs.items():
                    inputs[role] = store.lookup(needed.stage, needed.key)
                    if inputs[role] is None:
                        raise ArtifactError(f"{task.id}: its input {needed.id} did not reach node {node}")
                runner = Runner(store, device=spec["device"], progress=_mailbox_progress(mailbox, task.id, node),
                                checkpoint_interval_s=spec["checkpoint_interval_s"],
                                estimates={task.id: spec.get("estimate")})
                shipper = contextlib.nullcontext() if shared else _CheckpointShipper(store, task, mailbox, scratch)
                with shipper, stoppable_by_cancel():
                    outcome = runner._execute(task, inputs, spec["forced"])
            except PipelineError as exc:
                return {"code": 2, "error": str(exc), "node": node}
            except KeyboardInterrupt as exc:
                return {"code": 130, "error": str(exc) or "stopped", "node": node}
            except Exception:  # noqa: BLE001 - returned whole, for the head's log
                return {"code": 1, "error": traceback.format_exc(), "node": node}
            blob = None if shared else _bundle_bytes(store, [task], scratch, "artifact")
            return {"code": 0, "ran": outcome.ran, "wall_s": outcome.wall_s, "node": node, "bundle": blob}
    finally:
        os.chdir(here)
        # Ray may count a cancelled task done before its function returns: the head waits for this word,
        # sent after the stop's checkpoint, before it leaves.
        with contextlib.suppress(Exception):
            ray.get(mailbox.end.remote(task.id), timeout=10)


class ClusterScheduler:
    """Runs a plan's tasks on a Ray cluster; the same interface as pipeline.scheduler.Scheduler."""

    def __init__(self, store: ArtifactStore, address: str, *, device: str = "auto",
                 checkpoint_interval_s: float = 60.0, gpus_per_training: float = 1.0, cpus_per_task: float = 1.0,
                 on_start: Callable[[Task], None] = lambda task: None,
                 on_done: Callable[[Outcome], None] = lambda outcome: None,
                 show: Callable[[list[tuple[str, dict]]], None] = lambda states: None,
                 estimates: dict[str, float | None] | None = None) -> None:
        self.store, self.address, self.device = store, address, device
        self.checkpoint_interval_s = checkpoint_interval_s
        self.gpus_per_training, self.cpus_per_task = gpus_per_training, cpus_per_task
        self.on_start, self.on_done, self.show = on_start, on_done, show
        self.estimates = estimates or {}
        self.copy = os.environ.get(COPY_ENV) == "1"
        self.outside = address.startswith("ray://")  # this process is a Ray Client, off the cluster

    # -- before anything runs ------------------------------------------------------------------------
    def _placement(self, tasks: list[Task]) -> dict[str, Any]:
        """Where each kind of task may run, or a refusal naming a task no node can run."""
        import ray

        nodes = alive_nodes()
        gpus = sum(node["Resources"].get("GPU", 0) for node in nodes)
        head = None if self.outside else ray.get_runtime_context().get_node_id()
        head_node = next((n for n in nodes if n["NodeID"] == head), None)
        on_gpu = self.device.startswith("cuda")
        task = next((t for t in tasks if t.stage in GPU_STAGES), None) if on_gpu else None
        if task is not None and not gpus:
            raise PipelineError(f"{task.id}: --device {self.device} trains on a GPU, and no node of the cluster at "
                                f"{self.address} has one (its nodes: {_describe(nodes)}); add a GPU node, or "
                                f"drop --device")
        if task is not None and min(1.0, self.gpus_per_training) > max(n["Resources"].get("GPU", 0) for n in nodes):
            raise PipelineError(f"{task.id}: asks for {self.gpus_per_training} GPU, more than any node has")
        return {"gpus": gpus, "head": head, "head_cpus": head_node["Resources"].get("CPU", 1) if head_node else 1}

    def _options(self, task: Task, place: dict[str, Any]) -> dict[str, Any]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        decl = STAGES[task.stage]
        options: dict[str, Any] = {"num_cpus": self.cpus_per_task, "num_gpus": 0, "max_retries": RETRIES}
        if task.stage in GPU_STAGES and self.device != "cpu" and place["gpus"]:
            options["num_gpus"] = min(1.0, self.gpus_per_training)
        if decl.hardware is not None:
            # Keyed for this machine: run on it. A benchmark holds all its CPUs, so it runs there alone.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(place["head"], soft=False)
            if decl.hardware == "machine":
                options["num_cpus"] = place["head_cpus"]
            if getattr(task.params.get("target"), "on_gpu", False) and place["gpus"]:
                options["num_gpus"] = 1
        return options

    # -- the run --------------------------------------------------------------------------------------
    def run(self, tasks: list[Task], forced: set[str] = frozenset()) -> list[Outcome]:
        import ray

        place = self._placement(tasks)
        stopped_by: list[int] = []
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

        def remember(signum, frame):
            stopped_by.append(signum)
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            raise Terminated(STOP_WORDS[signum], signum)

        for signum, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(signum, remember)
        marker = f".cluster-{uuid.uuid4().hex[:12]}"
        (self.store.root / "store").mkdir(parents=True, exist_ok=True)
        marker_path = self.store.root / "store" / marker
        marker_path.write_text("a stochkd-pipeline run on a Ray cluster: nodes that see this file share this folder\n")
        mailbox_options: dict[str, Any] = {"num_cpus": 0}
        if place["head"]:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            mailbox_options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(place["head"], soft=False)
        mailbox = ray.remote(_Mailbox).options(**mailbox_options).remote()
        remote = ray.remote(run_on_node)
        outcomes: dict[int, Outcome] = {}
        waiting = list(tasks)
        running: dict[Any, Task] = {}
        sent: dict[tuple[str, str], Any] = {}  # input bundles put once into the object store
        try:
            with tempfile.TemporaryDirectory(prefix="stochkd-cluster-") as scratch_name:
                scratch = Path(scratch_name)
                try:
                    while waiting or running:
                        self._start_ready(waiting, running, outcomes, forced, place, remote, mailbox, marker, sent,
                                          scratch)
                        if not running:
                            continue
                        done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                        self._collect(mailbox, running, scratch)
                        for ref in done:
                            task = running.pop(ref)
                            self._record(outcomes, self._finish(task, ref, scratch))
                except BaseException as exc:
                    self._cancel(running, mailbox, scratch)
                    if isinstance(exc, KeyboardInterrupt) and stopped_by and not isinstance(exc, Terminated):
                        # Ray's blocking calls turn whatever a signal handler raised into KeyboardInterrupt.
                        raise Terminated(STOP_WORDS[stopped_by[-1]], stopped_by[-1]) from None
                    raise
        finally:
            marker_path.unlink(missing_ok=True)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return [outcomes[id(t)] for t in tasks]

    def _record(self, outcomes: dict[int, Outcome], outcome: Outcome) -> None:
        outcomes[id(outcome.task)] = outcome
        self.on_done(outcome)

    def _start_ready(self, waiting, running, outcomes, forced, place, remote, mailbox, marker, sent, scratch) -> None:
        import ray

        from pipeline.scheduler import startable

        for task in startable(waiting, outcomes, lambda: list(running.values()), forced, self.store,
                              self._record):
            waiting.remove(task)
            if self.outside and STAGES[task.stage].hardware is not None:
                self._record(outcomes, self._run_here(task, outcomes, forced))
                continue
            if _has_checkpoint(self.store, task):  # left by an earlier run: a retry anywhere resumes from it
                ray.get(mailbox.put_checkpoint.remote(task.stage, task.key,
                                                      _bundle_bytes(self.store, [task], scratch, "checkpoint"),
                                                      True))
            bundles = []
            for needed in task.needs.values():
                entry = (needed.stage, needed.key)
                if entry not in sent:
                    sent[entry] = ray.put(_bundle_bytes(self.store, [needed], scratch, "input"))
                bundles.append(sent[entry])
            spec = {"task": task, "root": str(self.store.root.resolve()), "marker": marker, "copy": self.copy,
                    "cwd": os.getcwd(), "device": "auto" if self.device.startswith("cuda") else self.device,
                    "forced": task.id in forced, "checkpoint_interval_s": self.checkpoint_interval_s,
                    "estimate": self.estimates.get(task.id)}
            self.on_start(task)
            running[remote.options(**self._options(task, place)).remote(spec, mailbox, *bundles)] = task

    def _run_here(self, task: Task, outcomes, forced) -> Outcome:
        """An engine or benchmark run in this process, off the cluster (Ray Client): its key is this machine's."""
        self.on_start(task)
        inputs = {role: self.store.lookup(t.stage, t.key) for role, t in task.needs.items()}
        return Runner(self.store, device=self.device, checkpoint_interval_s=self.checkpoint_interval_s)._execute(
            task, inputs, task.id in forced)

    def _collect(self, mailbox, running: dict, scratch: Path) -> None:
        """Progress lines, and the training checkpoints that arrived, into this store."""
        import ray

        states, fresh = ray.get([mailbox.latest_states.remote(), mailbox.take_fresh_checkpoints.remote()])
        shown = []
        for task in running.values():
            state = states.get(task.id)
            if state:
                shown.append((task.id, {**state, "description": f"{state['description']} · on {state['node']}"}))
        self.show(shown)
        for (stage, key), blob in fresh.items():
            if self.store.lookup(stage, key) is None:
                _add_bundle(blob, self.store, scratch, replace_checkpoint=True)

    def _finish(self, task: Task, ref, scratch: Path) -> Outcome:
        import ray

        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise PipelineError(f"{task.id} could not finish on the cluster ({first_line(exc)}); its last "
                                f"checkpoint is kept, and rerunning the same command resumes it") from None
        code, node = result["code"], result["node"]
        if code == 0:
            if result["bundle"] is not None:
                _add_bundle(result["bundle"], self.store, scratch)
                # Finished: the checkpoints that came on the way have nothing left to resume.
                shutil.rmtree(self.store.resume_folder(task.stage, task.key), ignore_errors=True)
            artifact = self.store.lookup(task.stage, task.key)
            if artifact is None:
                raise ArtifactError(f"{task.id} finished on {node}, but its artifact is not in {self.store.root}")
            return Outcome(task, artifact, ran=result["ran"], wall_s=result["wall_s"])
        if code == 130:
            raise KeyboardInterrupt(result["error"])
        if code == 2:
            raise PipelineError(f"{task.id} (on {node}): {result['error']}")
        from pipeline.scheduler import write_failure_log

        log = write_failure_log(self.store, task, f"on node {node}\n{result['error']}")
        lines = result["error"].strip().splitlines() or ["no message"]
        raise PipelineError(f"{task.id} failed on {node} ({lines[-1]}); the cluster's other tasks were stopped "
                            f"with their checkpoints saved; its whole error is in {log}")

    def _cancel(self, running: dict, mailbox, scratch: Path, grace_s: float = 30.0) -> None:
        """Stop the cluster's running tasks (each saves its training checkpoint, as on Ctrl-C), wait for
        them, and keep the checkpoints they sent."""
        import ray

        for ref in running:
            ray.cancel(ref)
        deadline = time.monotonic() + grace_s
        pending = list(running)
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        try:
            # A cancelled task's ref can be done while its function still saves and sends its checkpoint;
            # those that started (they reported progress) are waited for until they say they have ended.
            started = set(ray.get(mailbox.latest_states.remote())) & {task.id for task in running.values()}
            while not started <= ray.get(mailbox.ended_tasks.remote()) and time.monotonic() < deadline:
                time.sleep(0.2)
            self._collect(mailbox, {}, scratch)
        except Exception as exc:  # noqa: BLE001 - the mailbox's node may be the one that failed
            # Said, not raised: the stop goes on, and the rerun resumes from what this folder holds.
            self.store.warn(f"the training checkpoints the stopped tasks sent could not all be kept here "
                            f"({first_line(exc)}); a rerun resumes from the last one {self.store.root} holds")


def _describe(nodes: list[dict[str, Any]]) -> str:
    return ", ".join(f"{n.get('NodeManagerAddress', '?')} ({n['Resources'].get('CPU', 0):g} CPUs, "
                     f"{n['Resources'].get('GPU', 0):g} GPUs)" for n in nodes) or "none alive"
