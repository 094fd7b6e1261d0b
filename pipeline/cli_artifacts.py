"""Commands for what a run leaves behind: bundles between machines, deployed folders and their
predictions, and datasets packed once. Registered on the command line by pipeline.cli."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.cli_options import (ArtifactsOpt, ProfileArg, SetOpt, artifacts_root, check_stage,
                                  user_errors)
from pipeline.registry import STAGE_ORDER, stage_index
from stages.common.errors import PipelineError


def bundle(profile: Optional[Path] = ProfileArg,
           output: Path = typer.Option(..., "-o", "--output", metavar="FILE.tar", help="The bundle to write."),
           set_: List[str] = SetOpt,
           until: Optional[str] = typer.Option(None, "--until", metavar="STAGE",
                                               help="Bundle the stages up to this one (default: all)."),
           over: List[str] = typer.Option(None, "--over", metavar="KEY=V1,V2,...",
                                          help="Bundle every point of a sweep grid, as sweep --over takes it."),
           artifacts: Optional[Path] = ArtifactsOpt) -> None:
    """Pack what a profile has produced so far (and the checkpoints of unfinished training) into one
    tar file that unbundle adds to another artifacts folder."""
    with user_errors():
        from pipeline import ui
        from pipeline.bundle import pack
        from pipeline.plan import build_plan
        from pipeline.store import ArtifactStore
        from pipeline.sweep import grid, parse_axes, point_profile

        check_stage("--until", until)
        points = grid(parse_axes(over)) if over else [{}]
        profiles = [point_profile(profile, set_, point) for point in points]
        last = stage_index(until) if until else len(STAGE_ORDER) - 1
        tasks = {}
        for loaded in profiles:
            for task in build_plan(loaded):
                if stage_index(task.stage) <= last:
                    tasks.setdefault((task.stage, task.key), task)
        store = ArtifactStore(artifacts_root(artifacts), warn=ui.warn)
        index = pack(store, list(tasks.values()), output, profiles[0].name)
        finished = sum(e["kind"] == "artifact" for e in index["entries"])
        resumable = len(index["entries"]) - finished
        size = output.stat().st_size / (1 << 20)
        typer.echo(f"{output}: {finished} finished tasks" + (f", {resumable} training checkpoints"
                                                             if resumable else "") + f", {size:.1f} MiB")
        if index["not_bundled"]:
            typer.echo(f"not produced yet, so not bundled: {', '.join(index['not_bundled'])}")


def unbundle(bundle_file: Path = typer.Argument(..., metavar="FILE.tar", help="A bundle made by bundle."),
             artifacts: Optional[Path] = ArtifactsOpt) -> None:
    """Check every file of a bundle, then add what this artifacts folder lacks; a rerun of the
    profile takes it from the cache."""
    with user_errors():
        from pipeline import ui
        from pipeline.bundle import unpack
        from pipeline.store import ArtifactStore

        store = ArtifactStore(artifacts_root(artifacts), warn=ui.warn)
        outcome = unpack(bundle_file, store)
        typer.echo(f"{bundle_file}: added {len(outcome['added'])} entries to {store.root}"
                   + (f"; {len(outcome['present'])} were here already" if outcome["present"] else ""))
        for task in outcome["added"]:
            typer.echo(f"  + {task}")


def prune(profiles: List[Path] = typer.Argument(..., metavar="PROFILE...", show_default=False,
                                                help="The profiles whose tasks to keep: every profile that still "
                                                     "uses this artifacts folder."),
          set_: List[str] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                         help="Override a key of every profile given, as run --set does "
                                              "(repeatable)."),
          over: List[str] = typer.Option(None, "--over", metavar="KEY=V1,V2,...",
                                         help="Keep every point of a sweep grid of every profile given, as sweep "
                                              "--over takes it."),
          delete: bool = typer.Option(False, "--delete", help="Remove what is listed; without it, only list."),
          artifacts: Optional[Path] = ArtifactsOpt) -> None:
    """List what the artifact store holds that none of the given profiles uses (the entries of
    settings since changed, checkpoints of trainings given up, leftovers of killed runs), and remove
    it with --delete."""
    with user_errors():
        from pipeline import ui
        from pipeline.prune import KINDS, age_text, entries_text, remove, size_text, survey
        from pipeline.store import ArtifactStore
        from pipeline.sweep import grid, parse_axes, point_profile
        from stages.context import training_progress

        store = ArtifactStore(artifacts_root(artifacts), warn=ui.warn)
        if not (store.root / "store").is_dir():
            raise PipelineError(f"{store.root}: holds no artifact store (no store/ folder); pass --artifacts with "
                                f"the folder your runs wrote")
        points = grid(parse_axes(over)) if over else [{}]
        loaded = [point_profile(profile, set_, point) for profile in profiles for point in points]
        found = survey(store, loaded)
        names = ", ".join(dict.fromkeys(p.name for p in loaded))
        for entry in found.held:
            ui.warn(f"{entry.path}: not used by {names}, but a running process holds it; left")
        if not found.unused:
            typer.echo(f"{store.root}: nothing to remove; {names} use{'s' if len(profiles) == 1 else ''} "
                       f"{len(found.kept)} of its {len(found.kept) + len(found.held)} entries")
            return
        from rich.table import Table

        table = Table(title=f"not used by {names} · {store.root}")
        for column in ("task", "key", "what", "size", "written"):
            table.add_column(column, justify="right" if column == "size" else "left")
        for entry in found.unused:
            progress = training_progress(entry.path) if entry.kind == "checkpoint" else None
            what = KINDS[entry.kind] + (f", {progress['done']:.0%} done" if progress else "")
            table.add_row(entry.task, entry.key[:12], what, size_text(entry.size), age_text(entry.written))
        ui.console.print(table)
        total = f"{entries_text(len(found.unused))}, {size_text(found.unused_bytes)}"
        if not delete:
            typer.echo(f"{total} not used; kept: {entries_text(len(found.kept))} the profiles use. Rerun with "
                       f"--delete to remove them")
            return
        removed, left = remove(store, found.unused)
        freed = size_text(sum(e.size for e in removed))
        typer.echo(f"removed {entries_text(len(removed))}, {freed}; kept {len(found.kept)} that the profiles use")
        for entry in left:
            ui.warn(f"{entry.path}: not removed (a run took it meanwhile, or a file could not be deleted)")
        if left:
            raise typer.Exit(1)


def deploy(profile: Optional[Path] = ProfileArg,
           output: Path = typer.Option(..., "-o", "--output", metavar="DIR", help="The folder to write."),
           set_: List[str] = SetOpt,
           model: Optional[str] = typer.Option(None, "--model", help="Which model (default: the most accurate "
                                               "within the target's budgets)."),
           precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or int8 (default: the "
                                                   "model's fastest engine within budget)."),
           input_form: Optional[str] = typer.Option(None, "--input", metavar="float|uint8", help="The model "
                                                    "taking normalized floats, or raw uint8 pixels (made with "
                                                    "export.preprocess: graph). Default: as chosen."),
           artifacts: Optional[Path] = ArtifactsOpt) -> None:
    """Write a finished run's deployed model as a folder of its own: the engine, deploy.json and a
    model card; predict runs it."""
    with user_errors():
        from pipeline import ui
        from pipeline.deploy import deploy as write_deployment
        from pipeline.profiles import load_profile
        from pipeline.store import ArtifactStore

        if input_form not in (None, "float", "uint8"):
            raise PipelineError(f"--input {input_form!r}: choose float or uint8")
        loaded = load_profile(profile, set_ or [])
        package = write_deployment(loaded, ArtifactStore(artifacts_root(artifacts), warn=ui.warn), output,
                                   model, precision, input_form)
        typer.echo(f"{output}: {package['label']} ({package['arch']}) at {package['precision']} on "
                   f"{package['backend']}, {100 * package['test_accuracy']:.2f} % top-1. {package['why']}")


def predict(folder: Path = typer.Argument(..., metavar="DIR", help="A folder written by deploy."),
            images: List[Path] = typer.Argument(..., metavar="IMAGE...", help="Image files, or folders of them."),
            top_k: int = typer.Option(5, "--top-k", min=1, help="Classes to show per image."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON, for scripts.")) -> None:
    """Classify images with a deployed model, reading only its folder."""
    with user_errors():
        from stages.deploy.deployed import predict as run_predict

        results = run_predict(folder, images, top_k)
    if as_json:
        typer.echo(json.dumps(results, indent=1))
        return
    for result in results:
        best = ", ".join(f"{t['class']} {100 * t['probability']:.1f} %" for t in result["top"])
        typer.echo(f"{result['image']}: {best}" + (f" ({'; '.join(result['notes'])})" if "notes" in result else ""))


def pack_dataset(dataset: str = typer.Argument(..., metavar="DATASET", help="tiny_imagenet or folder."),
                 root: Path = typer.Argument(..., metavar="ROOT", help="The dataset's folder."),
                 destination: Path = typer.Argument(..., metavar="OUT", help="An .npz to write (decoded into "
                                                    "memory), or a folder (memory-mapped arrays, any size)."),
                 image_size: Optional[int] = typer.Option(None, "--image-size", metavar="N", min=1,
                                                          help="An .npz: resize every image to N x N. A folder: "
                                                               "store each image's centred square at N x N "
                                                               "(required)."),
                 interpolation: str = typer.Option("bilinear", "--interpolation",
                                                   help="A folder: the resize filter, bilinear or bicubic."),
                 workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                                       help="A folder: processes that decode (default: every core).")
                 ) -> None:
    """Decode an image-folder dataset once: into an .npz, or into a folder of memory-mapped arrays that
    trains without fitting in memory. data.root can name either."""
    with user_errors():
        from stages.common.config import FOLDER_DATASETS

        if dataset not in FOLDER_DATASETS:
            raise PipelineError(f"pack-dataset {dataset!r}: allowed: {', '.join(FOLDER_DATASETS)}")
        if not root.is_dir():
            raise PipelineError(f"{root}: no such folder")
        # Decoding a large dataset takes minutes: learn that the output cannot be written before, not after.
        folder = destination.parent
        if not folder.is_dir():
            raise PipelineError(f"{destination}: the folder {folder} does not exist; create it or write elsewhere")
        if not os.access(folder, os.W_OK):
            raise PipelineError(f"{destination}: the folder {folder} is not writable; write elsewhere")
        if destination.suffix == ".npz":
            from stages.training.image_folders import load_class_folders, load_tiny_imagenet, pack_npz

            loader = load_tiny_imagenet if dataset == "tiny_imagenet" else load_class_folders
            arrays = loader(root, image_size)
            pack_npz(arrays, destination)
            print(f"{destination}: {len(arrays[0])} training and {len(arrays[2])} test images of "
                  f"{arrays[0].shape[1]}x{arrays[0].shape[2]}, {len(arrays[4])} classes")
            return
        if image_size is None:
            raise PipelineError(f"{destination}: a packed folder stores every image at one size: give --image-size N "
                                f"(at least data.input_size / crop_pct, e.g. 256 for 224 at 0.875)")
        if interpolation not in ("bilinear", "bicubic"):
            raise PipelineError(f"--interpolation {interpolation!r}: allowed: bilinear, bicubic")
        if destination.exists() and not (destination / "pack.json").is_file():
            raise PipelineError(f"{destination}: exists and is not a packed dataset; name a new folder")
        from stages.training.image_folders import FolderReading, ReadNotes, list_class_folders, list_tiny_imagenet
        from stages.training.packed import pack_folder
        from pipeline.ui import progress_bar

        notes = ReadNotes()
        listing = (list_tiny_imagenet if dataset == "tiny_imagenet" else list_class_folders)(root, notes)
        described = pack_folder(listing, destination, FolderReading(image_size, True, interpolation), notes,
                                workers or os.cpu_count() or 1, progress_bar)
        counts = described["images"]
        validation = f", {counts['val']} validation" if "val" in counts else ""
        print(f"{destination}: {counts['train']} training{validation} and {counts['test']} test images of "
              f"{image_size}x{image_size}, {len(described['class_names'])} classes"
              + "".join(f"; {n}" for n in described["notes"]))


