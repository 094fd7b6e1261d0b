"""The ``stochkd-pipeline`` command. Only typer is imported up front; everything heavy is imported by
the command that needs it, so ``--help`` and ``status`` answer at once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.cli_artifacts import bundle, deploy, pack_dataset, predict, unbundle
from pipeline.cli_options import (ArtifactsOpt, CheckpointOpt, DeviceOpt, JobsOpt, MasterAddrOpt, MasterPortOpt,
                                  MpsOpt, NnodesOpt, NodeRankOpt, NprocOpt, ProfileArg, SetOpt, artifacts_root,
                                  check_stage, user_errors)
from pipeline.registry import STAGE_ORDER, STAGES, stage_index
from stages.common.errors import PipelineError

app = typer.Typer(
    help="Stochastic-depth knowledge distillation, from teacher training to a quantized, benchmarked "
         "deployment artifact. Every stage is cached by the hash of what it reads.",
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None)  # plain help text: it prints without importing rich's formatter

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


def _launch(device: str, nproc: int, nnodes: str, node_rank: int, master_addr: str, master_port: int) -> None:
    """Several processes asked for and not yet launched: run this command under torchrun instead."""
    from stages.common import distributed

    if distributed.launched():
        distributed.initialize(_check_device(device))
    elif nproc > 1 or nnodes != "1":
        distributed.backend_for(_check_device(device), nproc)  # a device that cannot work stops here, once
        raise typer.Exit(distributed.relaunch(_without_launch_options(sys.argv[1:]), nproc, nnodes, node_rank,
                                              master_addr, master_port))


def _check_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise PipelineError(f"--device {device!r}: allowed: auto, cpu, cuda or cuda:N")
    return device


def _execute(profile_path: Optional[Path], overrides: List[str], *, only: Optional[str] = None,
             until: Optional[str] = None, start: Optional[str] = None, force: Optional[str] = None,
             device: str = "auto", artifacts: Optional[Path] = None, checkpoint_every: float = 60.0,
             jobs: int = 1, mps: bool = False) -> None:
    from pipeline import ui
    from pipeline.plan import build_plan, with_ancestors
    from pipeline.profiles import load_profile
    from pipeline.runner import Runner, publish_report
    from pipeline.store import ArtifactStore

    from stages.common import distributed

    _check_device(device)
    _check_mps(mps, jobs, device)
    device = distributed.device_for_rank(device)
    profile = load_profile(profile_path, overrides)
    plan = build_plan(profile)
    if only is not None:
        tasks = with_ancestors(plan, [t for t in plan if t.stage == only])
    else:
        last = stage_index(until) if until else len(STAGE_ORDER) - 1
        tasks = [t for t in plan if stage_index(t.stage) <= last]
    first_forced = stage_index(start) if start else len(STAGE_ORDER)
    forced = {t.id for t in tasks if t.stage == force or stage_index(t.stage) >= first_forced}
    root = artifacts_root(artifacts)
    if distributed.rank() != 0:
        # One rank speaks for all of them.
        Runner(ArtifactStore(root), device=device, checkpoint_interval_s=checkpoint_every).run(tasks, forced)
        return
    store = ArtifactStore(root, warn=ui.warn)
    ranks = f" · {distributed.world_size()} processes" if distributed.active() else ""
    ui.console.print(f"[bold]{profile.name}[/] · {len(tasks)} tasks{ranks} · artifacts in {root}")
    estimates = _estimate_run(store, tasks, forced, profile, device)
    runner = _runner(store, jobs, device, checkpoint_every, estimates, mps)
    outcomes = runner.run(tasks, forced)
    published = publish_report(outcomes, root / profile.name)
    ran = sum(o.ran for o in outcomes)
    ui.console.print(f"{ran} ran, {len(outcomes) - ran} from the cache.")
    if published is not None:
        ui.console.print(ui.report_table(json.loads((published / "report.json").read_text())))
        ui.console.print(f"report: {published / 'report.md'}")
    elif only is not None and ran == 0:
        ui.console.print(f"{only}: every task was cached; add --force to recompute it.")


def _check_mps(mps: bool, jobs: int, device: str) -> None:
    if mps and jobs == 1:
        raise PipelineError("--mps lets tasks run side by side share a GPU; add --jobs 2 or more")
    if mps and device == "cpu":
        raise PipelineError("--mps shares a GPU between tasks, and --device cpu uses none; drop --mps")


def _runner(store, jobs: int, device: str, checkpoint_every: float, estimates=None, mps: bool = False):
    """The sequential runner, or with ``jobs`` > 1 the scheduler that runs ready tasks side by side."""
    from pipeline import ui
    from stages.common import distributed
    from pipeline.runner import Runner

    if jobs > 1:
        if distributed.active():
            raise PipelineError("--jobs runs tasks in processes of their own; under torchrun (--nproc-per-node) "
                                "each task already uses every process: leave --jobs at 1")
        from pipeline.scheduler import Scheduler

        scheduler = Scheduler(store, jobs, device=device, checkpoint_interval_s=checkpoint_every,
                              on_start=ui.stage_started, on_done=ui.stage_finished, show=ui.TaskLines(),
                              estimates=estimates, mps=mps)
        if mps and len(scheduler.gpus) != 1:
            raise PipelineError("--mps shares one GPU between tasks, and none is visible here; drop --mps"
                                if not scheduler.gpus else
                                f"--mps shares one GPU between tasks, and {len(scheduler.gpus)} are visible, each "
                                f"task getting its own; drop --mps, or set CUDA_VISIBLE_DEVICES to one GPU")
        return scheduler
    return Runner(store, device=device, progress=ui.progress_bar, on_start=ui.stage_started,
                  on_done=ui.stage_finished, checkpoint_interval_s=checkpoint_every, estimates=estimates,
                  on_wait=lambda task, holder: ui.warn(
                      f"{task.id}: another run (process {holder}) is building it; waiting for it"))


def _estimate_run(store, tasks, forced, profile, device: str) -> dict:
    """Estimated seconds of the tasks still to run, said before they run (and measured first, once
    per machine); one line more where that is long for a CPU."""
    from pipeline import ui
    from pipeline.estimate import (LONG_ON_A_CPU_S, duration, estimate_plan, load_probe, measure_probe,
                                   probe_file, save_probe)

    # Whether a folder is there is enough to estimate; the runner verifies each artifact it uses.
    pending = [t for t in tasks if t.id in forced or not store.folder(t.stage, t.key).is_dir()]
    if not pending:
        return {}
    path = probe_file(store.root, device)
    probe = load_probe(path)
    if probe is None:
        ui.console.print("[dim]measuring this machine's training and inference speed once, for estimates...[/]")
        probe = measure_probe(device)
    estimates = estimate_plan(pending, probe, profile.data)
    save_probe(probe, path)  # with the networks counted on the way
    known = [s for s in estimates.values() if s is not None]
    if known:
        total = sum(known)
        unknown = len(estimates) - len(known)
        ui.console.print(f"estimated {duration(total)} for {len(known)} tasks to run on this {probe.device.upper()}"
                         + (f" ({unknown} more not estimated)" if unknown else "") + " (an estimate)")
        if probe.device == "cpu" and total > LONG_ON_A_CPU_S:
            ui.warn(f"about {duration(total)} on this CPU: train on a GPU (--device cuda), use a CPU-sized profile "
                    f"(profiles/cifar100_cpu.yaml), or unbundle models trained elsewhere "
                    f"(stochkd-pipeline unbundle FILE.tar); going on")
    return estimates


@app.command()
def run(profile: Optional[Path] = ProfileArg, set_: List[str] = SetOpt,
        until: Optional[str] = typer.Option(None, "--until", metavar="STAGE", help="Stop after this stage."),
        start: Optional[str] = typer.Option(None, "--from", metavar="STAGE",
                                            help="Recompute this stage and every later one."),
        force: Optional[str] = typer.Option(None, "--force", metavar="STAGE",
                                            help="Recompute this stage even if cached."),
        device: str = DeviceOpt, artifacts: Optional[Path] = ArtifactsOpt,
        checkpoint_every: float = CheckpointOpt, jobs: int = JobsOpt, mps: bool = MpsOpt,
        nproc_per_node: int = NprocOpt, nnodes: str = NnodesOpt, node_rank: int = NodeRankOpt,
        master_addr: str = MasterAddrOpt, master_port: int = MasterPortOpt) -> None:
    """Run every stage of a profile; cached stages are looked up, not rerun."""
    with user_errors():
        for option, value in (("--until", until), ("--from", start), ("--force", force)):
            check_stage(option, value)
        _launch(device, nproc_per_node, nnodes, node_rank, master_addr, master_port)
        _execute(profile, set_ or [], until=until, start=start, force=force, device=device,
                 artifacts=artifacts, checkpoint_every=checkpoint_every, jobs=jobs, mps=mps)


def _stage_command(name: str):
    def command(profile: Optional[Path] = ProfileArg, set_: List[str] = SetOpt,
                force: bool = typer.Option(False, "--force", help="Recompute this stage even if cached."),
                device: str = DeviceOpt, artifacts: Optional[Path] = ArtifactsOpt,
                checkpoint_every: float = CheckpointOpt, jobs: int = JobsOpt, mps: bool = MpsOpt,
                nproc_per_node: int = NprocOpt, nnodes: str = NnodesOpt, node_rank: int = NodeRankOpt,
                master_addr: str = MasterAddrOpt, master_port: int = MasterPortOpt) -> None:
        with user_errors():
            _launch(device, nproc_per_node, nnodes, node_rank, master_addr, master_port)
            _execute(profile, set_ or [], only=name, force=name if force else None, device=device,
                     artifacts=artifacts, checkpoint_every=checkpoint_every, jobs=jobs, mps=mps)

    command.__doc__ = f"{STAGES[name].help} Runs what it needs first, unless cached."
    return command


for _name in STAGE_ORDER:
    app.command(name=_name)(_stage_command(_name))


@app.command()
def status(profile: Optional[Path] = ProfileArg, set_: List[str] = SetOpt,
           artifacts: Optional[Path] = ArtifactsOpt,
           as_json: bool = typer.Option(False, "--json", help="Print the tasks as JSON, for scripts."),
           estimate: bool = typer.Option(False, "--estimate", help="Measure this machine's speed now (once; a few "
                                         "seconds) and estimate every task to run. Without it, estimates show once "
                                         "a run or --estimate has measured this machine.")) -> None:
    """Show each task of a profile: cached or not, its key, its headline figure, and for tasks to
    run an estimated wall time on this machine."""
    from pipeline import ui
    from pipeline.plan import build_plan
    from pipeline.profiles import load_profile
    from pipeline.runner import Outcome
    from pipeline.store import ArtifactStore
    from stages.context import TRAINING_CHECKPOINT, training_progress

    with user_errors():
        loaded = load_profile(profile, set_ or [])
        store = ArtifactStore(artifacts_root(artifacts), warn=ui.warn)
        tasks = []
        plan = build_plan(loaded)
        for task in plan:
            artifact = store.lookup(task.stage, task.key)
            entry = {"task": task.id, "stage": task.stage, "variant": task.variant, "key": task.key}
            if artifact is None:
                resume = store.resume_folder(task.stage, task.key)
                saved = (resume / TRAINING_CHECKPOINT).is_file()
                entry.update(state="resumable" if saved else "to run", headline=None, folder=None,
                             checkpoint=training_progress(resume) if saved else None)
            else:
                entry.update(state="cached", headline=Outcome(task, artifact, False, 0).headline,
                             folder=str(artifact.path), checkpoint=None)
            tasks.append(entry)
        times = _status_estimates(store, loaded, [t for t, e in zip(plan, tasks) if e["state"] != "cached"],
                                  estimate)
        for entry in tasks:
            entry["estimated_s"] = times.get(entry["task"])
            if entry["estimated_s"] is not None and entry["checkpoint"]:
                entry["estimated_s"] *= 1 - entry["checkpoint"]["done"]  # what is left of a task that resumes
    if as_json:
        typer.echo(json.dumps({"profile": loaded.name, "artifacts": str(store.root), "tasks": tasks}, indent=1))
        return
    from rich.table import Table

    from pipeline.estimate import duration

    table = Table(title=f"{loaded.name} · {store.root}")
    for column in ("task", "state", "key", "result"):
        table.add_column(column)
    for entry in tasks:
        if entry["state"] == "cached":
            table.add_row(entry["task"], "[green]cached[/]", entry["key"][:12], entry["headline"])
        else:
            guess = f"about {duration(entry['estimated_s'])}" if entry["estimated_s"] is not None else ""
            resumes = "resumes from its training checkpoint" if entry["state"] == "resumable" else ""
            if entry["checkpoint"] is not None:
                resumes += f" ({progress_text(entry['checkpoint'])})"
            table.add_row(entry["task"], "[yellow]to run[/]", entry["key"][:12], "; ".join(filter(None, [resumes,
                                                                                                          guess])))
    ui.console.print(table)
    pending = [e["estimated_s"] for e in tasks if e["state"] != "cached"]
    if pending and all(s is not None for s in pending):
        ui.console.print(f"to run: about {duration(sum(pending))} on this machine (an estimate)")
    elif pending:
        ui.console.print("estimates: measured on this machine by a first run, or now with status --estimate")


def progress_text(checkpoint: dict) -> str:
    """"37% done, at 9,663 images/s on NVIDIA H200": where a resumable task stands and how fast it went."""
    text = f"{checkpoint['done']:.0%} done"
    if checkpoint["images_per_second"]:
        text += f", at {checkpoint['images_per_second']:,.0f} images/s"
        if checkpoint["device"]:
            text += f" on {checkpoint['device']}"
    return text


def _status_estimates(store, profile, pending, measure: bool) -> dict:
    """Estimated seconds of the tasks to run: from what this machine's probe knows, without importing
    a framework; with ``measure``, measuring and counting what it does not."""
    from pipeline.estimate import estimate_plan, known_only, load_probe, measure_probe, probe_file, save_probe

    path = probe_file(store.root, "auto")
    probe = load_probe(path)
    if measure:
        probe = probe or measure_probe("auto")
        estimates = estimate_plan(pending, probe, profile.data)
        save_probe(probe, path)
        return estimates
    return known_only(pending, probe, profile.data) if probe is not None else {}


@app.command()
def sweep(profile: Optional[Path] = ProfileArg,
          over: List[str] = typer.Option(..., "--over", metavar="KEY=V1,V2,...",
                                         help="An axis of the grid, e.g. --over distill.p_last=0.5,0.7,0.9 "
                                              "or --over seed=0,1,2 (repeatable)."),
          set_: List[str] = SetOpt,
          until: str = typer.Option("mutual", "--until", metavar="STAGE",
                                    help="Last stage to run at each point (default: the last training stage)."),
          device: str = DeviceOpt, artifacts: Optional[Path] = ArtifactsOpt,
          checkpoint_every: float = CheckpointOpt, jobs: int = JobsOpt, mps: bool = MpsOpt) -> None:
    """Run a profile at every point of a grid of settings and tabulate the models' accuracies."""
    with user_errors():
        from pipeline import ui
        from pipeline.plan import build_plan, training_tasks
        from pipeline.profiles import load_profile
        from pipeline.store import ArtifactStore
        from pipeline.sweep import grid, parse_axes, point_values, write_sweep
        from stages.context import member_metrics
        from stages.reporting.names import model_label

        check_stage("--until", until)
        _check_device(device)
        _check_mps(mps, jobs, device)
        if stage_index(until) < stage_index("mutual"):
            raise PipelineError(f"--until {until!r}: a sweep compares trained models; use mutual (the last "
                                f"training stage) or a later one")
        axes = parse_axes(over)
        points = grid(axes)
        profiles = [load_profile(profile, [*(set_ or []), *(f"{k}={v}" for k, v in point.items())])
                    for point in points]  # every point validated before anything runs
        root = artifacts_root(artifacts)
        store = ArtifactStore(root, warn=ui.warn)
        runner = _runner(store, jobs, device, checkpoint_every, mps=mps)
        plans = [[t for t in build_plan(loaded) if stage_index(t.stage) <= stage_index(until)] for loaded in profiles]
        if jobs > 1:
            # Every point's tasks in one schedule, so points run side by side; shared tasks once.
            unique = {}
            for task in sorted((t for plan in plans for t in plan), key=lambda t: stage_index(t.stage)):
                unique.setdefault((task.stage, task.key), task)
            runner.run(list(unique.values()))
        results = []
        for number, (point, loaded) in enumerate(zip(points, profiles), 1):
            ui.console.print(f"[bold]point {number}/{len(points)}[/]: "
                             + " ".join(f"{k}={v}" for k, v in point.items()))
            if jobs == 1:
                runner.run(plans[number - 1])
            trained, _ = training_tasks(loaded)
            metrics = {model: member_metrics(store.lookup(task.stage, task.key).metrics, member)
                       for model, (task, member) in trained.items()}
            result = {"point": point_values(point), "accuracy": {m: v["test_accuracy"] for m, v in metrics.items()}}
            if all("validation_accuracy" in v for v in metrics.values()):
                result["validation"] = {m: v["validation_accuracy"] for m, v in metrics.items()}
            results.append(result)
        models = list(results[0]["accuracy"])
        slug = "+".join(k for k, _ in axes)
        written = write_sweep(root / profiles[0].name / f"sweep-{slug}", results, axes, profiles[0].name,
                              models, {m: model_label(m) for m in models})
        print(written[1].read_text())
        for path in written:
            ui.console.print(f"wrote {path}")


# The commands for artifacts, deployed folders and datasets (pipeline.cli_artifacts), in help order.
app.command()(bundle)
app.command()(unbundle)
app.command()(deploy)
app.command()(predict)
app.command("pack-dataset")(pack_dataset)


@app.command()
def schema() -> None:
    """Print every profile key with its type, default and description."""
    from pipeline.schema import describe

    typer.echo(describe())


def main() -> None:
    app()
