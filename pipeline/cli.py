"""The ``stochkd-pipeline`` command. Only typer is imported up front; everything heavy is imported by
the command that needs it, so ``--help`` and ``status`` answer at once."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.cli_artifacts import bundle, deploy, pack_dataset, predict, prune, unbundle
from pipeline.cli_status import estimate_run, status
from pipeline.cli_options import (ArtifactsOpt, CheckpointOpt, ClusterOpt, DeviceOpt, JobsOpt, LockstepOpt,
                                  MasterAddrOpt, MasterPortOpt, MpsOpt, NnodesOpt, NodeRankOpt, NprocOpt, ProfileArg,
                                  SetOpt, artifacts_root, check_stage, user_errors)
from pipeline.registry import STAGE_ORDER, STAGES, stage_index
from stages.common.errors import PipelineError

app = typer.Typer(
    help="Stochastic-depth knowledge distillation, from teacher training to a quantized, benchmarked "
         "deployment artifact. Every stage is cached by the hash of what it reads.",
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None)  # plain help text: it prints without importing rich's formatter

KNOWN_TO_EVERY_ONNX = 21  # the newest opset of onnx 1.16, the oldest that pyproject.toml allows
LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def _without_launch_options(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in LAUNCH_OPTIONS)):
            kept.append(arg)
    return kept


def _launch(profile: Optional[Path], overrides: List[str], device: str, nproc: int, nnodes: str, node_rank: int,
            master_addr: str, master_port: int) -> None:
    """Several processes asked for and not yet launched: run this command under torchrun instead."""
    from pipeline.profiles import load_profile
    from stages.common import distributed

    if distributed.launched():
        distributed.initialize(_check_device(device))
        return
    _check_nodes(nnodes, node_rank)
    if nproc > 1 or nnodes != "1":
        # A profile or a device that cannot work stops here, in one line, before any process starts.
        load_profile(profile, overrides)
        distributed.backend_for(_check_device(device), nproc)
        raise typer.Exit(distributed.relaunch(_without_launch_options(sys.argv[1:]), nproc, nnodes, node_rank,
                                              master_addr, master_port))


def _check_nodes(nnodes: str, node_rank: int) -> None:
    """--nnodes as torchrun takes it, N or MIN:MAX, and a --node-rank among them; torchrun itself
    would answer a bad one with a traceback."""
    import re

    found = re.fullmatch(r"([1-9][0-9]*)(?::([1-9][0-9]*))?", nnodes.strip())
    if found is None or (found.group(2) and int(found.group(2)) < int(found.group(1))):
        raise PipelineError(f"--nnodes {nnodes!r}: give a number of nodes, e.g. 2, or a range MIN:MAX with MIN up "
                            f"to MAX, e.g. 1:4")
    most = int(found.group(2) or found.group(1))
    if node_rank >= most:
        raise PipelineError(f"--node-rank {node_rank} with --nnodes {nnodes}: node ranks count from 0 to "
                            f"{most - 1}")


def _check_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise PipelineError(f"--device {device!r}: allowed: auto, cpu, cuda or cuda:N")
    return device


def _execute(profile_path: Optional[Path], overrides: List[str], *, only: Optional[str] = None,
             until: Optional[str] = None, start: Optional[str] = None, force: Optional[str] = None,
             device: str = "auto", artifacts: Optional[Path] = None, checkpoint_every: float = 60.0,
             jobs: int = 1, mps: bool = False, cluster: Optional[str] = None, lockstep: bool = False) -> None:
    from pipeline.plan import build_plan, with_ancestors
    from pipeline.profiles import load_profile
    from stages.common.hardware import check_benchmark_cores

    from stages.common import distributed

    _check_device(device)
    _check_mps(mps, jobs, device)
    _check_cluster(cluster, jobs, mps, device)
    _check_lockstep(lockstep, jobs, cluster)
    device = distributed.device_for_rank(device)
    profile = load_profile(profile_path, overrides)
    plan = build_plan(profile)
    last = stage_index(until) if until else len(STAGE_ORDER) - 1
    # A stage the profile has no task of, or one past --until, would otherwise end in "0 ran" or in
    # nothing recomputed, with exit code 0.
    for option, stage in (("", only), ("--force ", force)):
        if stage is not None and not any(t.stage == stage for t in plan):
            raise PipelineError(f"{option}{stage}: {_no_tasks(profile, stage)}")
    for option, stage in (("--from", start), ("--force", force)):
        if only is None and stage is not None and stage_index(stage) > last:
            raise PipelineError(f"{option} {stage} comes after --until {until}, so nothing would be recomputed; "
                                f"drop --until or choose a stage up to {until}")
    if only is not None:
        tasks = with_ancestors(plan, [t for t in plan if t.stage == only])
    else:
        tasks = [t for t in plan if stage_index(t.stage) <= last]
    first_forced = stage_index(start) if start else len(STAGE_ORDER)
    forced = {t.id for t in tasks if t.stage == force or stage_index(t.stage) >= first_forced}
    if any(t.stage == "benchmark" for t in tasks):
        check_benchmark_cores(profile.benchmark.cpu_affinity)
    if any(t.stage == "export" for t in tasks):
        _check_opset(profile.export.opset)
    root = artifacts_root(artifacts)
    with distributed.crash_logged(root / "logs"):
        _run(root, profile, tasks, forced, only=only, device=device, checkpoint_every=checkpoint_every, jobs=jobs,
             mps=mps, cluster=cluster, lockstep=lockstep)


def _run(root: Path, profile, tasks, forced, *, only: Optional[str], device: str, checkpoint_every: float,
         jobs: int, mps: bool, cluster: Optional[str] = None, lockstep: bool = False) -> None:
    from pipeline import ui
    from pipeline.runner import Runner, publish_report
    from pipeline.store import ArtifactStore

    from stages.common import distributed

    if distributed.rank() != 0:
        # One rank speaks for all of them.
        Runner(ArtifactStore(root), device=device, checkpoint_interval_s=checkpoint_every).run(tasks, forced)
        return
    store = ArtifactStore(root, warn=ui.warn)
    ranks = f" · {distributed.world_size()} processes" if distributed.active() else ""
    ui.console.print(f"[bold]{profile.name}[/] · {len(tasks)} task{'s' if len(tasks) != 1 else ''}{ranks} · "
                     f"artifacts in {root}")
    # This machine's speed says nothing of a cluster's.
    estimates = {} if cluster else estimate_run(store, tasks, forced, profile, device, jobs, mps)
    with _runner(store, jobs, device, checkpoint_every, estimates, mps, cluster, profile, lockstep) as runner:
        outcomes = runner.run(tasks, forced)
    published = publish_report(outcomes, root / profile.name)
    ran = sum(o.ran for o in outcomes)
    ui.console.print(f"{ran} ran, {len(outcomes) - ran} from the cache.")
    if published is not None:
        ui.console.print(ui.report_table(json.loads((published / "report.json").read_text())))
        ui.console.print(f"report: {published / 'report.md'}")
    elif only is not None and ran == 0:
        ui.console.print(f"{only}: every task was cached; add --force to recompute it.")


def _check_opset(opset: int) -> None:
    """An opset newer than the installed onnx knows, refused before training rather than at export."""
    if opset <= KNOWN_TO_EVERY_ONNX:
        return  # nothing to ask onnx, whose import would slow every cached rerun by 1 to 2 s
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise PipelineError(f"export.opset = {opset}: the installed onnx {onnx.__version__} knows opsets up to "
                            f"{newest}; choose one up to {newest}")


def _no_tasks(profile, stage: str) -> str:
    methods = ", ".join(profile.methods)
    needed = "dml" if stage == "mutual" else "kd"
    if needed not in profile.methods:
        return (f"{profile.name} has no {stage} task, which comes with methods including {needed} (its "
                f"methods: [{methods}]); add {needed} to methods, or choose another stage")
    return f"{profile.name} has no {stage} task"


def _check_mps(mps: bool, jobs: int, device: str) -> None:
    if not mps:
        return
    if jobs == 1:
        raise PipelineError("--mps lets tasks run side by side share a GPU; add --jobs 2 or more")
    if device == "cpu":
        raise PipelineError("--mps shares a GPU between tasks, and --device cpu uses none; drop --mps")
    # Asked before anything runs: the first run in an artifacts folder measures the machine's speed
    # for its estimate, and a refusal should not wait for that.
    from pipeline.scheduler import visible_gpus

    gpus = visible_gpus()
    if device.startswith("cuda:") and int(device[5:]) < len(gpus):
        gpus = [gpus[int(device[5:])]]  # --device cuda:N: that GPU alone, which the tasks then share
    if len(gpus) != 1:
        raise PipelineError("--mps shares one GPU between tasks, and none is visible here; drop --mps"
                            if not gpus else
                            f"--mps shares one GPU between tasks, and {len(gpus)} are visible, each "
                            f"task getting its own; drop --mps, or set CUDA_VISIBLE_DEVICES to one GPU")


def _check_lockstep(lockstep: bool, jobs: int, cluster: Optional[str]) -> None:
    for option, used in (("--jobs", jobs > 1), ("--cluster", cluster is not None)):
        if lockstep and used:
            raise PipelineError(f"--lockstep trains a row's models in this one process; {option} runs each task in "
                                f"a process of its own: drop one of them")


def _check_cluster(cluster: Optional[str], jobs: int, mps: bool, device: str) -> None:
    if cluster is None:
        return
    if not cluster.strip():
        raise PipelineError("--cluster '': give a Ray address (ray://HEAD:10001 or HEAD:6379), auto or local")
    for option, used in (("--jobs", jobs > 1), ("--mps", mps)):
        if used:
            raise PipelineError(f"--cluster lets Ray place every task on the cluster's nodes and GPUs; drop {option}")
    if device.startswith("cuda:"):
        raise PipelineError(f"--device {device} names a GPU of this machine; on a cluster, Ray gives each task its "
                            f"GPU: use --device cuda")


@contextmanager
def _runner(store, jobs: int, device: str, checkpoint_every: float, estimates=None, mps: bool = False,
            cluster: Optional[str] = None, profile=None, lockstep: bool = False):
    """The sequential runner (training a row's models together with ``lockstep``); with ``jobs`` > 1
    the scheduler that runs ready tasks side by side; with ``cluster`` the one that runs them on a Ray
    cluster (connected for the while)."""
    if cluster is None:
        yield _local_runner(store, jobs, device, checkpoint_every, estimates, mps, lockstep)
        return
    from pipeline import ui
    from pipeline.cluster import ClusterScheduler, connect, disconnect
    from stages.common import distributed

    if distributed.active():
        raise PipelineError("--cluster runs each task on a node Ray chooses; torchrun (--nproc-per-node) runs "
                            "every task here: leave one of them")
    ui.console.print(f"[dim]joining the Ray cluster at {cluster}...[/]")
    connect(cluster)
    try:
        settings = profile.cluster
        yield ClusterScheduler(store, cluster, device=device, checkpoint_interval_s=checkpoint_every,
                               gpus_per_training=settings.gpus_per_training, cpus_per_task=settings.cpus_per_task,
                               on_start=ui.stage_started, on_done=ui.stage_finished, show=ui.TaskLines(),
                               estimates=estimates)
    finally:
        disconnect()


def _local_runner(store, jobs: int, device: str, checkpoint_every: float, estimates=None, mps: bool = False,
                  lockstep: bool = False):
    from pipeline import ui
    from stages.common import distributed
    from pipeline.runner import Runner

    if jobs > 1:
        if distributed.active():
            raise PipelineError("--jobs runs tasks in processes of their own; under torchrun (--nproc-per-node) "
                                "each task already uses every process: leave --jobs at 1")
        from pipeline.scheduler import Scheduler

        return Scheduler(store, jobs, device=device, checkpoint_interval_s=checkpoint_every,
                         on_start=ui.stage_started, on_done=ui.stage_finished, show=ui.TaskLines(),
                         estimates=estimates, mps=mps)
    return Runner(store, device=device, progress=ui.progress_bar, on_start=ui.stage_started,
                  on_done=ui.stage_finished, checkpoint_interval_s=checkpoint_every, estimates=estimates,
                  lockstep=lockstep, on_wait=lambda task, holder: ui.warn(
                      f"{task.id}: another run (process {holder}) is building it; waiting for it"))


@app.command()
def run(profile: Optional[Path] = ProfileArg, set_: List[str] = SetOpt,
        until: Optional[str] = typer.Option(None, "--until", metavar="STAGE", help="Stop after this stage."),
        start: Optional[str] = typer.Option(None, "--from", metavar="STAGE",
                                            help="Recompute this stage and every later one."),
        force: Optional[str] = typer.Option(None, "--force", metavar="STAGE",
                                            help="Recompute this stage even if cached."),
        device: str = DeviceOpt, artifacts: Optional[Path] = ArtifactsOpt,
        checkpoint_every: float = CheckpointOpt, jobs: int = JobsOpt, mps: bool = MpsOpt,
        cluster: Optional[str] = ClusterOpt, lockstep: bool = LockstepOpt, nproc_per_node: int = NprocOpt,
        nnodes: str = NnodesOpt, node_rank: int = NodeRankOpt,
        master_addr: str = MasterAddrOpt, master_port: int = MasterPortOpt) -> None:
    """Run every stage of a profile; cached stages are looked up, not rerun."""
    with user_errors():
        for option, value in (("--until", until), ("--from", start), ("--force", force)):
            check_stage(option, value)
        _launch(profile, set_ or [], device, nproc_per_node, nnodes, node_rank, master_addr, master_port)
        _execute(profile, set_ or [], until=until, start=start, force=force, device=device,
                 artifacts=artifacts, checkpoint_every=checkpoint_every, jobs=jobs, mps=mps, cluster=cluster,
                 lockstep=lockstep)


def _stage_command(name: str):
    def command(profile: Optional[Path] = ProfileArg, set_: List[str] = SetOpt,
                force: bool = typer.Option(False, "--force", help="Recompute this stage even if cached."),
                device: str = DeviceOpt, artifacts: Optional[Path] = ArtifactsOpt,
                checkpoint_every: float = CheckpointOpt, jobs: int = JobsOpt, mps: bool = MpsOpt,
                cluster: Optional[str] = ClusterOpt, lockstep: bool = LockstepOpt, nproc_per_node: int = NprocOpt,
                nnodes: str = NnodesOpt, node_rank: int = NodeRankOpt,
                master_addr: str = MasterAddrOpt, master_port: int = MasterPortOpt) -> None:
        with user_errors():
            _launch(profile, set_ or [], device, nproc_per_node, nnodes, node_rank, master_addr, master_port)
            _execute(profile, set_ or [], only=name, force=name if force else None, device=device,
                     artifacts=artifacts, checkpoint_every=checkpoint_every, jobs=jobs, mps=mps, cluster=cluster,
                     lockstep=lockstep)

    command.__doc__ = f"{STAGES[name].help} Runs what it needs first, unless cached."
    return command


for _name in STAGE_ORDER:
    app.command(name=_name)(_stage_command(_name))


app.command()(status)


@app.command()
def sweep(profile: Optional[Path] = ProfileArg,
          over: List[str] = typer.Option(..., "--over", metavar="KEY=V1,V2,...",
                                         help="An axis of the grid, e.g. --over distill.p_last=0.5,0.7,0.9 "
                                              "or --over seed=0,1,2 (repeatable)."),
          set_: List[str] = SetOpt,
          until: str = typer.Option("mutual", "--until", metavar="STAGE",
                                    help="Last stage to run at each point (default: the last training stage)."),
          device: str = DeviceOpt, artifacts: Optional[Path] = ArtifactsOpt,
          checkpoint_every: float = CheckpointOpt, jobs: int = JobsOpt, mps: bool = MpsOpt,
          cluster: Optional[str] = ClusterOpt, lockstep: bool = LockstepOpt) -> None:
    """Run a profile at every point of a grid of settings and tabulate the models' accuracies."""
    with user_errors():
        from pipeline import ui
        from pipeline.plan import build_plan, training_tasks
        from pipeline.store import ArtifactStore
        from pipeline.sweep import (grid, last_training_accuracy, parse_axes, point_profile, point_values,
                                    refuse_points_that_differ_in_nothing, write_sweep)
        from stages.common.hardware import check_benchmark_cores
        from stages.context import member_metrics
        from stages.reporting.names import model_label
        from stages.reporting.recipe import recipes_of

        check_stage("--until", until)
        _check_device(device)
        _check_mps(mps, jobs, device)
        _check_cluster(cluster, jobs, mps, device)
        _check_lockstep(lockstep, jobs, cluster)
        if stage_index(until) < stage_index("mutual"):
            raise PipelineError(f"--until {until!r}: a sweep compares trained models; use mutual (the last "
                                f"training stage) or a later one")
        axes = parse_axes(over)
        points = grid(axes)
        # Every point validated before anything runs.
        profiles = [point_profile(profile, set_, point) for point in points]
        if stage_index(until) >= stage_index("benchmark"):
            for loaded in profiles:
                check_benchmark_cores(loaded.benchmark.cpu_affinity)
        plans = [[t for t in build_plan(loaded) if stage_index(t.stage) <= stage_index(until)] for loaded in profiles]
        refuse_points_that_differ_in_nothing(points, plans, until)
        root = artifacts_root(artifacts)
        store = ArtifactStore(root, warn=ui.warn)
        together = jobs > 1 or cluster is not None
        with _runner(store, jobs, device, checkpoint_every, mps=mps, cluster=cluster, profile=profiles[0],
                     lockstep=lockstep) as runner:
            if together:
                # Every point's tasks in one schedule, so points run side by side; shared tasks once.
                unique = {}
                for task in sorted((t for plan in plans for t in plan), key=lambda t: stage_index(t.stage)):
                    unique.setdefault((task.stage, task.key), task)
                runner.run(list(unique.values()))
            else:
                for number, (point, plan) in enumerate(zip(points, plans), 1):
                    ui.console.print(f"[bold]point {number}/{len(points)}[/]: "
                                     + " ".join(f"{k}={v}" for k, v in point.items()))
                    runner.run(plan)
        results = []
        for point, loaded in zip(points, profiles):
            trained, _ = training_tasks(loaded)
            artifacts_of = {model: store.lookup(task.stage, task.key) for model, (task, _) in trained.items()}
            metrics = {model: member_metrics(artifacts_of[model].metrics, member)
                       for model, (_, member) in trained.items()}
            result = {"point": point_values(point), "accuracy": {m: v["test_accuracy"] for m, v in metrics.items()},
                      "recipes": recipes_of(artifacts_of, metrics),
                      "tasks": {model: task.key for model, (task, _) in trained.items()}}
            if all("validation_accuracy" in v for v in metrics.values()):
                result["validation"] = {m: v["validation_accuracy"] for m, v in metrics.items()}
            training = {m: last_training_accuracy(artifacts_of[m], member) for m, (_, member) in trained.items()}
            if any(v is not None for v in training.values()):
                result["training"] = {m: v for m, v in training.items() if v is not None}
            results.append(result)
        models = list(results[0]["accuracy"])
        slug = "+".join(k for k, _ in axes)
        printed = None
        if profiles[0].paper is not None:
            from stages.common.paper import printed_beside

            printed = printed_beside(profiles[0].paper, models, profiles[0].mutual.peers)
        written = write_sweep(root / profiles[0].name / f"sweep-{slug}", results, axes, profiles[0].name,
                              models, {m: model_label(m) for m in models}, printed)
        print(written[1].read_text())
        for path in written:
            ui.console.print(f"wrote {path}")


# The commands for artifacts, deployed folders and datasets (pipeline.cli_artifacts), in help order.
app.command()(bundle)
app.command()(unbundle)
app.command()(deploy)
app.command()(predict)
app.command("pack-dataset")(pack_dataset)
app.command()(prune)


@app.command()
def schema() -> None:
    """Print every profile key with its type, default and description."""
    from pipeline.schema import describe

    typer.echo(describe())


def main() -> None:
    app()
