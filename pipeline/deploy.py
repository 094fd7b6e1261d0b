"""``deploy``: from a profile's finished run, the folder a user takes away (stages.deploy.deployed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.output_paths import file_in_the_way
from stages.common.errors import ArtifactError, PipelineError


def choose(summary: list[dict[str, Any]], model: str | None, precision: str | None,
           form: str | None = None, unjudged: list[int] | tuple = (),
           validation: dict[str, float] | None = None) -> tuple[str, str, str | None, str]:
    """(model, precision, input form, why): what was asked, or the most accurate deployed engine within
    the target's budgets (of all, where none is within them), most accurate on the validation split
    where ``validation`` gives each model's accuracy there, else on the test split (and said so: the
    accuracy reported of a choice made on the test split is optimistic). ``form`` asks for "float" or
    "uint8" (raw pixels, export.preprocess: graph); the form returned is as the report's rows name it:
    None for normalized floats, "uint8" for raw pixels. ``unjudged``: batch sizes whose latency budget
    nothing measured, which a choice by budget names."""
    model, chosen, taken, why = _choose(summary, model, precision, form, validation or {})
    if unjudged and precision is None:
        batches = ", ".join(map(str, unjudged))
        why += (f" The latency budget at batch {batches} was not judged: the benchmark did not time that "
                f"batch (add it to benchmark.batch_sizes).")
    return model, chosen, taken, why


def _choose(summary: list[dict[str, Any]], model: str | None, precision: str | None,
            form: str | None, validation: dict[str, float]) -> tuple[str, str, str | None, str]:
    if model is not None:
        row = next((r for r in summary if r["model"] == model), None)
        if row is None:
            raise PipelineError(f"--model {model!r}: not a deployed model of this profile; choose one of "
                                f"{', '.join(r['model'] for r in summary)}")
        chosen = precision or row["precision"]
        taken = row.get("input") if form is None else as_row_input(form)
        pixels = f" on {taken} pixels" if taken else ""
        return model, chosen, taken, f"Asked for: {model}" + (
            f" at {precision}{pixels}." if precision else f", at its fastest engine within budget ({chosen}{pixels}).")
    within = [r for r in summary if r.get("budget") == "within"]
    pool = within or summary
    by_validation = all(r["model"] in validation for r in pool)
    best = max(pool, key=lambda r: validation[r["model"]] if by_validation else r["test_accuracy"])
    reason = ("the most accurate deployed engine within every budget of the target" if within else
              "the most accurate deployed engine (the target sets no budget, or none is met)")
    split = (f"chosen on the validation split ({100 * validation[best['model']]:.2f} % there, PyTorch fp32)"
             if by_validation else "chosen on the test split, as the profile holds out no validation split, so "
             "that figure flatters the choice")
    taken = best.get("input") if form is None else as_row_input(form)
    return best["model"], precision or best["precision"], taken, (
        f"Chosen as {reason}: {100 * best['test_accuracy']:.2f} % top-1 on the test split at {best['precision']}"
        + (f" on {best['input']} pixels" if best.get("input") else "") + f"; {split}.")


def as_row_input(form: str) -> str | None:
    """--input float or uint8 as the report's rows name the form: no name for floats."""
    return None if form == "float" else form


def deploy(profile, store, output: Path, model: str | None = None, precision: str | None = None,
           form: str | None = None) -> dict[str, Any]:
    from stages.common.hardware import package_versions
    from pipeline.plan import build_plan
    from stages.common.checksums import file_records
    from stages.deploy.deployed import CARD_FILE, DEPLOY_FILE, model_card
    from stages.engine import ENGINES_FILE
    from stages.export import INPUT_NAME, ONNX_FILE
    from stages.deploy.input_contract import RAW_PIXELS, RAW_PIXELS_SUFFIX, read_contract
    from stages.reporting.names import model_label

    _check_output(output)
    plan = build_plan(profile)
    report_task = next(t for t in plan if t.stage == "report")
    report_artifact = store.lookup("report", report_task.key)
    if report_artifact is None:
        raise ArtifactError(f"{profile.name}: no finished run to deploy from in {store.root}; run it first "
                            f"(stochkd-pipeline run PROFILE)")
    report = json.loads(report_artifact.file("report.json").read_text())
    validation = {m: t["validation_accuracy"] for m, t in report["training"].items() if "validation_accuracy" in t}
    model, precision, form, why = choose(report["summary"], model, precision, form,
                                         report.get("unjudged_latency_budgets", ()), validation)
    tasks = {(t.stage, t.variant): t for t in plan}
    variant = model + (RAW_PIXELS_SUFFIX if form == RAW_PIXELS else "")
    if ("engine", variant) not in tasks:
        raise PipelineError(f"--input {form}: {profile.name} makes no raw-pixel models; set export.preprocess: "
                            f"graph and run it again")
    engines_artifact = store.lookup("engine", tasks["engine", variant].key)
    export_artifact = store.lookup("export", tasks["export", variant].key)
    built = json.loads(engines_artifact.file(ENGINES_FILE).read_text())
    if precision not in built["engines"]:
        raise PipelineError(f"--precision {precision!r}: {model} has engines in {', '.join(built['engines'])}")
    engine = built["engines"][precision]

    def measured(wanted: str) -> list[dict[str, Any]]:
        return [r for r in report["rows"] if r["model"] == model and r["runtime"] == built["backend"]
                and r["precision"] == wanted and r.get("input") == form]

    rows, fp32 = measured(precision), next(iter(measured("fp32")), None)
    if output.exists() and any(output.iterdir()) and not (output / DEPLOY_FILE).is_file():
        raise PipelineError(f"{output}: not empty; deploy into a new folder (or one written by deploy)")
    try:
        output.mkdir(parents=True, exist_ok=True)
        _remove_earlier_deploy(output)
        copied = [Path(shutil.copy(engines_artifact.file(engine["file"]), output / engine["file"]))]
        for extra in engines_artifact.path.glob(engine["file"] + ".*"):  # the TensorRT provider's options
            copied.append(Path(shutil.copy(extra, output / extra.name)))
        cache = engines_artifact.path / "tensorrt_provider_cache"
        if cache.is_dir():
            shutil.copytree(cache, output / cache.name, dirs_exist_ok=True)
            copied += [p for p in sorted((output / cache.name).rglob("*")) if p.is_file()]
    except OSError as exc:
        # A folder left part-copied holds no new deploy.json: predict refuses it, deploy fills it again.
        raise _unwritable(output, exc) from exc
    training = report["training"][model]
    trained_task = tasks.get(("distill", model)) or tasks.get(("teacher", model)) or tasks.get(("mutual", model))
    package = {
        "profile": profile.name, "model": model, "label": model_label(model), "arch": report["archs"][model],
        "precision": precision, "compute_precision": engine["compute_precision"], "why": why,
        "backend": built["backend"], "target": built["target"], "target_name": report["target"],
        "file": engine["file"], "files": file_records(output, copied), "input_name": INPUT_NAME,
        "input_contract": read_contract(export_artifact.file(ONNX_FILE)),
        "test_accuracy": rows[0]["test_accuracy"] if rows else training["test_accuracy"],
        "drop_from_fp32_points": (100 * (rows[0]["test_accuracy"] - fp32["test_accuracy"])
                                  if rows and fp32 else None),
        "latency": [{k: r[k] for k in ("batch_size", "latency_p50_ms", "latency_p99_ms", "throughput_images_per_s",
                                       "peak_memory_mb")} for r in rows],
        "method": _method(model, trained_task),
        "training": _recipe(trained_task, report.get("recipes", {}).get(model)),
        "machine": f"{report['machine']['cpu']} ({report['machine']['cores']} cores)",
        "versions": {**report["versions"], **{k: v for k, v in package_versions().items()
                                              if k not in report["versions"]}},
        **({"stand_in_for": rows[0]["stand_in_for"]} if rows and "stand_in_for" in rows[0] else {}),
    }
    try:
        (output / DEPLOY_FILE).write_text(json.dumps(package, indent=1))
        (output / CARD_FILE).write_text(model_card(package))
    except OSError as exc:
        raise _unwritable(output, exc) from exc
    return package


def _unwritable(output: Path, exc: OSError) -> PipelineError:
    from pipeline.store import DISK_FULL

    fix = "free space there or deploy elsewhere" if exc.errno in DISK_FULL else "deploy into a writable folder"
    return PipelineError(f"-o {output}: cannot write the deployed model there ({exc.strerror or exc}); {fix}")


def _check_output(output: Path) -> None:
    """Refuses an -o that cannot become the deployed folder before any work is done."""
    if output.exists() and not output.is_dir():
        raise PipelineError(f"-o {output}: a file, not a folder; deploy into a folder (one that is missing is "
                            f"created)")
    in_the_way = file_in_the_way(output)
    if in_the_way is not None:
        raise PipelineError(f"-o {output}: {in_the_way} is a file, not a folder; deploy elsewhere")


def _remove_earlier_deploy(output: Path) -> None:
    """Deletes the files an earlier deploy copied into ``output``, as its deploy.json lists them, so a
    folder deployed again holds one model and not the engines of the last one beside it. Files a user
    added stay. The old deploy.json stays until the new one replaces it, so an interrupted deploy leaves
    a folder that predict refuses (a listed file is missing) and that deploy accepts again."""
    from stages.deploy.deployed import DEPLOY_FILE

    try:
        earlier = json.loads((output / DEPLOY_FILE).read_text())
        listed = set(earlier.get("files", {})) | {earlier["file"]}
    except (OSError, ValueError, KeyError, TypeError):
        return
    inside = output.resolve()
    for name in listed:
        path = (output / name).resolve()
        if path.is_relative_to(inside) and path.is_file():
            path.unlink()
            for folder in path.parents:
                if folder == inside or any(folder.iterdir()):
                    break
                folder.rmdir()


def _method(model: str, task) -> str:
    if task is not None and task.stage == "teacher":
        teacher = task.params["teacher"]
        if teacher.checkpoint:
            return f"the teacher, imported from {Path(teacher.checkpoint).name}"
        return ("the teacher, trained with stochastic depth (p_n " + f"{teacher.p_last:g})" if teacher.p_last < 1
                else "the teacher, trained without dropping blocks")
    distill = task.params.get("distill") if task is not None else None
    if distill is None:
        return "trained alone on the labels" if task is None or task.stage != "mutual" else "deep mutual learning"
    if distill.teacher_samples == 1 and distill.p_last == 1.0:
        return f"{distill.transfer.upper()} from the teacher with every block kept (T = {distill.temperature:g})"
    return (f"stochastic {distill.transfer.upper()}: {distill.teacher_samples} sub-networks of the teacher sampled "
            f"per batch at p_n {distill.p_last if distill.p_last is not None else 'of the teacher'} "
            f"(T = {distill.temperature:g})")


def _recipe(task, recorded: dict | None) -> str:
    """The model's training in a phrase: its schedule and seed from the task, and the training images
    and what the machine chose from the report's recipe, where the artifact recorded them."""
    from stages.reporting.recipe import as_run, schedule

    if task is None:
        return "unknown"
    if task.stage == "teacher" and task.params["teacher"].checkpoint:
        return "imported, not trained by this pipeline"
    cfg = task.params.get("student") or task.params.get("teacher") or task.params.get("mutual")
    recipe = cfg.training
    text = (f"{recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}, batch {recipe.batch_size}, SGD lr {recipe.lr:g} "
            f"({schedule(recipe.model_dump())}), seed {task.params['seed']}")
    if recorded and "images" in recorded:
        text += f", on {recorded['images']['train']:,} training images"
    if recorded and "as_run" in recorded:
        text += f", run in {as_run(recorded)}"
    return text
