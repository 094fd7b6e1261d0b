"""From a validated profile to the graph of tasks: which stage runs on which model, with exactly
which parameters, after which other tasks. Each task's cache key follows from that alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from stages.common.config import DistillConfig, StudentConfig
from stages.common.profile import Profile
from pipeline.fingerprint import digest, key_form
from stages.common.hardware import fingerprint
from pipeline.registry import STAGES
from stages.context import peer_folder
from stages.deploy.input_contract import RAW_PIXELS_SUFFIX

def int8_flavour(target) -> str:
    """uint8 activations for ONNX Runtime on CPUs (its fastest integer kernels); symmetric int8 with
    float biases wherever TensorRT or ONNX Runtime's GPU providers run the graph (they support s8s8 only)."""
    return "u8s8" if target.backend == "onnxruntime" and not target.on_gpu else "s8s8"


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


READING_PREFIX = {"stochastic_depth": "", "plain": "plain_"}  # of the models each teacher reading adds


def teaching_settings(profile: Profile, reading: str, trained_p_last: float) -> DistillConfig:
    """Stochastic transfer from a teacher trained at ``trained_p_last``. Either reading teaches at
    ``distill.p_last``, or else the profile's ``teacher.p_last``; the plain reading names it, since its
    teacher was trained at 1. Where the teaching and trained p_n agree, the kept scale cannot matter
    and stays out of the key."""
    distill = profile.distill
    teaching = profile.teacher.p_last if distill.p_last is None else distill.p_last
    update: dict = {"p_last": teaching} if reading == "plain" else {}
    if teaching == trained_p_last:
        update["kept_scale"] = None
    return distill.model_copy(update=update)


def kd_tasks(profile: Profile) -> tuple[dict[str, tuple[Task, str | None]], list[Task]]:
    """The student alone, and for each teacher reading: the teacher, KD and stochastic KD from it,
    and its analysis."""
    data, seed = profile.data, profile.seed
    student_params = {"seed": seed, "data": data, "student": profile.student}
    # KD with dropping off is stochastic KD with one sample and every block kept.
    deterministic = profile.distill.model_copy(update={
        "teacher_samples": 1, "p_last": 1.0, "drop_mode": "batch", "aggregate": "individual", "kept_scale": None})
    transfer = profile.distill.transfer  # names the two transfer models: kd / stochastic_kd, at / stochastic_at
    trained: dict[str, Task] = {}
    analyses = []
    for reading in profile.teacher.readings:
        prefix = READING_PREFIX[reading]
        teacher_cfg = profile.teacher if reading == "stochastic_depth" else profile.teacher.trained_plain()
        teacher = Task("teacher", f"{prefix}teacher", {"seed": seed, "data": data, "teacher": teacher_cfg})
        teaching = teaching_settings(profile, reading, teacher_cfg.p_last)
        trained[f"{prefix}teacher"] = teacher
        if "student" not in trained:
            trained["student"] = Task("distill", "student", student_params)
        trained[f"{prefix}{transfer}"] = Task("distill", f"{prefix}{transfer}",
                                              {**student_params, "distill": deterministic}, {"teacher": teacher})
        trained[f"{prefix}stochastic_{transfer}"] = Task(
            "distill", f"{prefix}stochastic_{transfer}", {**student_params, "distill": teaching}, {"teacher": teacher})
        analyses.append(Task("analyze", f"{prefix}teacher", {
            "seed": seed, "data": data, "images": profile.analysis.images, "samples": profile.analysis.samples,
            "p_last": teaching.p_last, "drop_mode": teaching.drop_mode, "kept_scale": teaching.kept_scale},
            {"teacher": teacher}))
    return {model: (task, None) for model, task in trained.items()}, analyses
def dml_tasks(profile: Profile) -> dict[str, tuple[Task, str | None]]:
    """Independent learning (each distinct peer network trained alone with the profile's student
    recipe, the paper's baseline column: its Independent figures are its other tables', trained at LR
    0.1, where mutual learning trains at 0.01), conventional and proposed mutual learning; every peer
    becomes a model of its own."""
    trained = {}
    for arch in dict.fromkeys(profile.mutual.peers):
        # A student-alone task: where the student is the same network, one artifact.
        alone = StudentConfig(arch=arch, training=profile.student.training)
        trained[f"independent_{arch}"] = (Task("distill", f"independent_{arch}",
                                               {"seed": profile.seed, "data": profile.data, "student": alone}), None)
    # Conventional peers never drop, so their key ignores the survival settings.
    conventional = profile.mutual.model_copy(update={"p_last": 1.0, "drop_mode": "batch"})
    for kind, cfg in (("conventional", conventional), ("proposed", profile.mutual)):
        task = Task("mutual", kind, {"seed": profile.seed, "data": profile.data, "mutual": cfg})
        for index in range(len(cfg.peers)):
            trained[f"dml_{kind}_{index + 1}"] = (task, peer_folder(index))
    return trained


def training_tasks(profile: Profile) -> tuple[dict[str, tuple[Task, str | None]], list[Task]]:
    """Each trained model of the profile's methods: (its training task, its member folder or None),
    and the analysis of every teacher."""
    trained: dict[str, tuple[Task, str | None]] = {}
    analyses: list[Task] = []
    if "kd" in profile.methods:
        kd_models, analyses = kd_tasks(profile)
        trained.update(kd_models)
    if "dml" in profile.methods:
        trained.update(dml_tasks(profile))
    return trained, analyses


def build_plan(profile: Profile) -> list[Task]:
    """Every task of the profile, in an order where each task follows the tasks it needs."""
    trained, analyses = training_tasks(profile)
    tasks: list[Task] = list(analyses)
    report_needs: dict[str, Task] = {f"analysis:{a.variant}": a for a in analyses}
    data = profile.data
    precisions = list(profile.quantize.precisions)
    # Set only where they matter, so that other profiles' keys stay as they were.
    drop = profile.target.budgets.max_accuracy_drop
    gate = {"max_accuracy_drop": drop} if drop is not None else {}
    shapes = {"batch_sizes": list(profile.benchmark.batch_sizes)} if profile.target.uses_tensorrt else {}
    # The float form's export keys stay as they were before raw-pixel models existed.
    forms = [("", profile.export.model_copy(update={"preprocess": None}))]
    if profile.export.preprocess == "graph":
        forms.append((RAW_PIXELS_SUFFIX, profile.export))
    for model, (training, member) in trained.items():
        if training not in tasks:
            tasks.append(training)
        report_needs[f"train:{model}"] = training
        # A model inside a multi-model artifact (a DML peer) is named by its folder there.
        which = {"member": member} if member else {}
        for suffix, export_cfg in forms:
            variant = model + suffix
            export = Task("export", variant, {"export": export_cfg, "data": data, **which}, {"model": training})
            quantize = Task("quantize", variant, {"quantize": profile.quantize, "data": data,
                                                  "int8_flavour": int8_flavour(profile.target), **gate},
                            {"onnx": export})
            # The engine stage judges the deployed INT8 engine itself, and re-quantizes where it misses.
            engine_gate = {"quantize": profile.quantize, "data": data, "int8_flavour": int8_flavour(profile.target),
                           **gate} if gate and "int8" in precisions else {}
            engine = Task("engine", variant, {"target": profile.target, "precisions": precisions, **shapes,
                                              **engine_gate}, {"onnx": export, "quantized": quantize})
            benchmark = Task("benchmark", variant, {"benchmark": profile.benchmark, "target": profile.target,
                                                    "data": data, **which}, {"model": training, "engines": engine})
            tasks += [export, quantize, engine, benchmark]
            report_needs[f"benchmark:{variant}"] = benchmark
            # Read for their estimated and measured times only.
            report_needs.update({f"export:{variant}": export, f"quantize:{variant}": quantize,
                                 f"engine:{variant}": engine})
    members = {model: member for model, (_, member) in trained.items() if member}
    deployment = {"target": profile.target.name, "budgets": profile.target.budgets,
                  **({"hardware": profile.target.hardware} if profile.target.hardware else {})}
    paper = {"paper": profile.paper, "peers": list(profile.mutual.peers)} if profile.paper else {}
    tasks.append(Task("report", None, {"profile": profile.name, "models": list(trained), "deployment": deployment,
                                       **({"members": members} if members else {}), **paper}, report_needs))
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
