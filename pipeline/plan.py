"""From a validated profile to the graph of tasks: which stage runs on which model, with exactly
which parameters, after which other tasks. Each task's cache key follows from that alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pipeline.config import Profile
from pipeline.fingerprint import digest, key_form
from pipeline.hardware import fingerprint
from pipeline.registry import STAGES
from stages.context import peer_folder

INT8_FLAVOUR = {"onnxruntime": "u8s8", "tensorrt": "s8s8"}


@dataclass(eq=False)
class Task:
    stage: str
    variant: str | None
    params: dict[str, Any]
    needs: dict[str, "Task"] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.variant}" if self.variant else self.stage

    @cached_property
    def key_material(self) -> dict[str, Any]:
        decl = STAGES[self.stage]
        material = {"stage": self.stage, "version": decl.version, "params": key_form(self.params),
                    "inputs": {role: task.key for role, task in sorted(self.needs.items())}}
        if decl.hardware:
            material["hardware"] = fingerprint(self.params["target"], decl.hardware)
        return material

    @cached_property
    def key(self) -> str:
        return digest(self.key_material)[:24]


def kd_tasks(profile: Profile) -> tuple[dict[str, tuple[Task, str | None]], Task]:
    """The teacher, the three students and the teacher analysis."""
    data, seed = profile.data, profile.seed
    teacher = Task("teacher", "teacher", {"seed": seed, "data": data, "teacher": profile.teacher})
    student_params = {"seed": seed, "data": data, "student": profile.student}
    # KD with dropping off is stochastic KD with one sample and every block kept.
    deterministic = profile.distill.model_copy(update={
        "teacher_samples": 1, "p_last": 1.0, "drop_mode": "batch", "aggregate": "individual"})
    transfer = profile.distill.transfer  # names the two transfer models: kd / stochastic_kd, at / stochastic_at
    trained = {
        "teacher": teacher,
        "student": Task("distill", "student", student_params),
        transfer: Task("distill", transfer, {**student_params, "distill": deterministic}, {"teacher": teacher}),
        f"stochastic_{transfer}": Task("distill", f"stochastic_{transfer}",
                                       {**student_params, "distill": profile.distill}, {"teacher": teacher}),
    }
    analysis = Task("analyze", None, {"seed": seed, "data": data, "images": profile.analysis.images,
                                      "samples": profile.analysis.samples}, {"teacher": teacher})
    return {model: (task, None) for model, task in trained.items()}, analysis


def dml_tasks(profile: Profile) -> dict[str, tuple[Task, str | None]]:
    """Conventional and proposed mutual learning; every peer becomes a model of its own."""
    trained = {}
    # Conventional peers never drop, so their key ignores the survival settings.
    conventional = profile.mutual.model_copy(update={"p_last": 1.0, "drop_mode": "batch"})
    for kind, cfg in (("conventional", conventional), ("proposed", profile.mutual)):
        task = Task("mutual", kind, {"seed": profile.seed, "data": profile.data, "mutual": cfg})
        for index in range(len(cfg.peers)):
            trained[f"dml_{kind}_{index + 1}"] = (task, peer_folder(index))
    return trained


def training_tasks(profile: Profile) -> tuple[dict[str, tuple[Task, str | None]], Task | None]:
    """Each trained model of the profile's methods: (its training task, its member folder or None),
    and the teacher analysis when there is a teacher."""
    trained: dict[str, tuple[Task, str | None]] = {}
    analysis = None
    if "kd" in profile.methods:
        kd_models, analysis = kd_tasks(profile)
        trained.update(kd_models)
    if "dml" in profile.methods:
        trained.update(dml_tasks(profile))
    return trained, analysis


def build_plan(profile: Profile) -> list[Task]:
    """Every task of the profile, in an order where each task follows the tasks it needs."""
    trained, analysis = training_tasks(profile)
    tasks: list[Task] = []
    report_needs: dict[str, Task] = {}
    if analysis is not None:
        tasks.append(analysis)
        report_needs["analysis"] = analysis
    data = profile.data
    precisions = list(profile.quantize.precisions)
    # Set only where they matter, so that other profiles' keys stay as they were.
    drop = profile.target.budgets.max_accuracy_drop
    gate = {"max_accuracy_drop": drop} if drop is not None else {}
    shapes = {"batch_sizes": list(profile.benchmark.batch_sizes)} if profile.target.backend == "tensorrt" else {}
    for model, (training, member) in trained.items():
        if training not in tasks:
            tasks.append(training)
        # A model inside a multi-model artifact (a DML peer) is named by its folder there.
        which = {"member": member} if member else {}
        export = Task("export", model, {"export": profile.export, "data": data, **which}, {"model": training})
        quantize = Task("quantize", model, {"quantize": profile.quantize, "data": data,
                                            "int8_flavour": INT8_FLAVOUR[profile.target.backend], **gate},
                        {"onnx": export})
        engine = Task("engine", model, {"target": profile.target, "precisions": precisions, **shapes},
                      {"onnx": export, "quantized": quantize})
        benchmark = Task("benchmark", model, {"benchmark": profile.benchmark, "target": profile.target,
                                              "data": data, **which}, {"model": training, "engines": engine})
        tasks += [export, quantize, engine, benchmark]
        report_needs[f"benchmark:{model}"] = benchmark
        report_needs[f"train:{model}"] = training
    members = {model: member for model, (_, member) in trained.items() if member}
    deployment = {"target": profile.target.name, "budgets": profile.target.budgets,
                  **({"hardware": profile.target.hardware} if profile.target.hardware else {})}
    tasks.append(Task("report", None, {"profile": profile.name, "models": list(trained), "deployment": deployment,
                                       **({"members": members} if members else {})}, report_needs))
    return sorted(tasks, key=lambda t: list(STAGES).index(t.stage))


def with_ancestors(tasks: list[Task], wanted: list[Task]) -> list[Task]:
    """``wanted`` and everything they need, in plan order."""
    keep: set[int] = set()
    stack = list(wanted)
    while stack:
        task = stack.pop()
        if id(task) not in keep:
            keep.add(id(task))
            stack.extend(task.needs.values())
    return [t for t in tasks if id(t) in keep]
