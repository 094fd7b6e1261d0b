"""What a run will cost and where each task stands: the estimate a run says before it starts, and
the status command. Registered on the command line by pipeline.cli."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.cli_options import ArtifactsOpt, ProfileArg, SetOpt, artifacts_root, user_errors


def estimate_run(store, tasks, forced, profile, device: str, jobs: int = 1, mps: bool = False) -> dict:
    """Estimated seconds of the tasks still to run, said before they run (and measured first, once
    per machine); one line more where that is long for a CPU. With ``jobs``, what running them side
    by side changes, as far as it was measured."""
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
        counted = f"{len(known)} task{'s' if len(known) != 1 else ''}"
        ui.console.print(f"estimated {duration(total)} for {counted} to run on this {probe.device.upper()}"
                         + (f" ({unknown} more not estimated)" if unknown else "")
                         + (" one after another" if jobs > 1 else "") + _what_it_counts(pending, probe.device)
                         + _side_by_side(pending, estimates, jobs, mps, probe.device))
        if probe.device == "cpu" and total > LONG_ON_A_CPU_S:
            ui.warn(f"about {duration(total)} on this CPU: train on a GPU (--device cuda), use a CPU-sized profile "
                    f"(profiles/cifar100_cpu.yaml), or unbundle models trained elsewhere "
                    f"(stochkd-pipeline unbundle FILE.tar); going on")
    return estimates


def _what_it_counts(pending, device: str) -> str:
    from pipeline.estimate import compiled_or_captured

    faster = compiled_or_captured(pending, device)
    if not faster:
        return " (an estimate)"
    one = faster == 1
    return (f" (an estimate from eager steps: {faster} task{'' if one else 's'} compile{'s' if one else ''} or "
            f"capture{'s' if one else ''} {'its' if one else 'their'} training step, and it leaves out that compile "
            f"time and the faster steps after it)")


def _side_by_side(pending, estimates: dict, jobs: int, mps: bool, device: str) -> str:
    """What ``--jobs`` changes in the estimate: on several GPUs, the scheduler's order replayed with a
    GPU per task; on one GPU or a CPU, the tasks share it (measured in results/gpu_sharing.md)."""
    if jobs == 1:
        return ""
    from pipeline.estimate import duration, side_by_side_seconds
    from pipeline.scheduler import runs_alone, visible_gpus

    gpus = len(visible_gpus()) if device == "cuda" else 0
    if gpus > 1:
        slots = min(jobs, gpus)
        seconds = side_by_side_seconds(pending, estimates, slots, runs_alone)
        if seconds is None:
            return ""
        return f"; about {duration(seconds)} with --jobs {jobs} on {gpus} GPUs, a GPU per task"
    if gpus == 1:
        return ("; under --mps, three trainings side by side gave 1.6x the images/s of one alone on an H200" if mps
                else "; side by side on one GPU the tasks take turns, about as long in all")
    return "; side by side the tasks split the cores, about as long in all or longer"


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
