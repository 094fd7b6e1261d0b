"""A whole profile: every section, checked together (what a setting implies for another)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from stages.common.config import (AnalysisConfig, DataConfig, DistillConfig, ExportConfig, MutualConfig,
                                  QuantizeConfig, Section, StudentConfig, TeacherConfig, check_input_size, each_once)
from stages.nets.architectures import architecture, resolve_skips, stochastic_role_refused
from stages.common.errors import PipelineError
from stages.common.paper import PaperRow
from stages.common.target_config import BenchmarkConfig, TargetConfig

FOLDER_NAME_CHARACTERS = "A-Za-z0-9._-"  # a profile name's, as a regex character range


def plain_folder_name(text: str) -> str:
    """``text`` made a valid profile name: "my profile" becomes "my_profile"."""
    return re.sub(rf"[^{FOLDER_NAME_CHARACTERS}]", "_", text).lstrip("._-") or "profile"


class ClusterConfig(Section):
    gpus_per_training: float = Field(1.0, gt=0, le=1, description="With --cluster: the share of one GPU each "
                                     "training (and teacher analysis) asks Ray for; 0.25 lets four small trainings "
                                     "share a GPU. Not part of any key.")
    cpus_per_task: float = Field(1.0, gt=0, description="With --cluster: the CPUs each task asks Ray for (a CPU "
                                 "training uses that many threads); a benchmark takes every CPU of its node. Not "
                                 "part of any key.")


class Profile(Section):
    name: str = Field("", description="Report folder name under artifacts/ (default: the profile's file name).")
    seed: int = Field(0, description="Seed of every random choice in training.")
    methods: tuple[Literal["kd", "dml"], ...] = Field(
        ("kd",), min_length=1, description="kd: teacher, then the student alone, KD and stochastic KD; "
        "dml: Deep Mutual Learning, conventional peers against stochastic ones.")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Stochastic-depth teacher.")
    student: StudentConfig = Field(default_factory=StudentConfig, description="Student network and recipe.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Knowledge transfer.")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig,
                                     description="The teacher's entropy with blocks dropped (Fig. 3).")
    mutual: MutualConfig = Field(default_factory=MutualConfig, description="Deep Mutual Learning (methods: dml).")
    export: ExportConfig = Field(default_factory=ExportConfig, description="ONNX export.")
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig, description="Quantization.")
    target: TargetConfig = Field(default_factory=TargetConfig, description="Deployment target.")
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig, description="Benchmark settings.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig,
                                   description="How tasks ask a Ray cluster for resources (--cluster).")
    paper: PaperRow | None = Field(None, description="The paper's row this profile reproduces: its printed figures, "
                                   "which the report and sweeps set beside the measured ones.")

    @model_validator(mode="after")
    def _pretrained_networks_see_what_they_were_pretrained_on(self) -> "Profile":
        """Fill in what a network given pretrained weights expects and the profile leaves open: the
        input size, evaluation crop and filter (the student's first, the deployed model's), and each
        such network's normalization. Written into the profile, so the key and the report show them."""
        pretrained = [(role, cfg) for role, cfg in (("student", self.student), ("teacher", self.teacher))
                      if cfg.pretrained is not None]
        if not pretrained:
            return self
        from stages.nets.models.timm_network import pretrained_config, timm_name

        configs = {role: pretrained_config(timm_name(cfg.arch)) for role, cfg in pretrained}
        first = configs[pretrained[0][0]]
        data: dict = {}
        if self.data.input_size is None and first.get("input_size"):
            data["input_size"] = int(first["input_size"][-1])
        if self.data.input_size is not None or data:
            if self.data.crop_pct is None and first.get("crop_pct"):
                data["crop_pct"] = float(first["crop_pct"])
            if self.data.interpolation is None and first.get("interpolation") in ("bilinear", "bicubic"):
                data["interpolation"] = first["interpolation"]
        update: dict = {"data": self.data.model_copy(update=data)} if data else {}
        for role, cfg in pretrained:
            if cfg.mean is None and configs[role].get("mean"):
                update[role] = cfg.model_copy(update={"mean": tuple(configs[role]["mean"]),
                                                      "std": tuple(configs[role]["std"])})
        return self.model_copy(update=update) if update else self

    @model_validator(mode="after")
    def _resizing_has_an_input_size(self) -> "Profile":
        check_input_size(self.data)
        return self

    @model_validator(mode="after")
    def _timm_networks_take_the_input_size(self) -> "Profile":
        size = self.data.input_size
        networks = [self.teacher.arch, self.student.arch, *(self.mutual.peers if "dml" in self.methods else ())]
        if size is not None:
            for arch in dict.fromkeys(a for a in networks if a.startswith("timm/")):
                from stages.nets.timm_catalog import check_input_size as fits

                try:
                    fits(arch, size)
                except PipelineError as exc:
                    raise ValueError(str(exc)) from None
        return self

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, name: str) -> str:
        # It names a folder under artifacts/: a path here could write reports anywhere.
        if name and (not re.fullmatch(rf"[A-Za-z0-9][{FOLDER_NAME_CHARACTERS}]*", name) or name == "store"):
            raise ValueError("must be a plain folder name (letters, digits, '.', '_', '-'; not 'store'): "
                             "the report is written to artifacts/<name>/")
        return name

    @field_validator("methods")
    @classmethod
    def _distinct(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        return each_once(methods, "method")

    @model_validator(mode="after")
    def _attention_groups_pair_up(self) -> "Profile":
        if self.distill.transfer == "at":
            teacher, student = architecture(self.teacher.arch), architecture(self.student.arch)
            if teacher.groups != student.groups:
                raise ValueError(f"distill.transfer = 'at' pairs group outputs one to one, but teacher "
                                 f"{teacher.name} has {teacher.groups} groups and student {student.name} "
                                 f"{student.groups}; choose networks with as many groups, or transfer 'kd'")
        return self

    @model_validator(mode="after")
    def _engine_tuned_within_its_batches(self) -> "Profile":
        tensorrt, sizes = self.target.tensorrt, self.benchmark.batch_sizes
        tuned = tensorrt.optimization_batch
        if self.target.backend != "tensorrt" or tuned is None:
            return self
        if not min(sizes) <= tuned <= max(sizes):
            raise ValueError(f"target.tensorrt.optimization_batch = {tuned} lies outside benchmark.batch_sizes "
                             f"{list(sizes)}; an engine runs only the batch sizes between their smallest and largest")
        if tensorrt.dla_core is not None:
            raise ValueError(f"target.tensorrt.optimization_batch = {tuned} asks for one dynamic profile, but the DLA "
                             f"(target.tensorrt.dla_core) runs only static shapes; leave optimization_batch unset "
                             f"to get one profile per benchmark batch size")
        return self

    @model_validator(mode="after")
    def _plain_teacher_drops_while_teaching(self) -> "Profile":
        teaching = self.teacher.p_last if self.distill.p_last is None else self.distill.p_last
        if "plain" in self.teacher.readings and "kd" in self.methods and teaching == 1.0:
            raise ValueError("teacher.readings has 'plain', a teacher that drops blocks only while it teaches, "
                             "but the teaching p_n is 1 (distill.p_last, or else teacher.p_last): set one "
                             "below 1")
        return self

    @model_validator(mode="after")
    def _teacher_can_be_sampled(self) -> "Profile":
        teaching = self.distill.p_last
        if teaching is not None and teaching < 1.0 and architecture(self.teacher.arch).stochastic_blocks == 0:
            raise ValueError(stochastic_role_refused(self.teacher.arch, f"distill.p_last = {teaching}, the teacher "
                                                     f"drops blocks while it teaches"))
        if teaching is not None and teaching < 1.0 and not resolve_skips(
                self.teacher.arch, self.teacher.p_last, self.teacher.skips):
            raise ValueError(f"distill.p_last = {teaching} drops teacher blocks, but teacher {self.teacher.arch} "
                             f"has no identity skips: set teacher.skips to true")
        return self
