"""The profile schema: frozen, typed sections, each field with a type, a default and a description.
Here the data, training and method sections; the target's in ``target_config``, the whole profile
in ``profile``.

Validation happens once, in ``pipeline.profiles``; stages receive plain, already-checked values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stages.nets.architectures import ARCHITECTURES, architecture, resolve_skips

Probability = Annotated[float, Field(gt=0.0, le=1.0)]
AreaFraction = Annotated[float, Field(gt=0.0, le=1.0)]
SKIPS_HELP = ("Skips around every block after the first of a plain network (vgg13, mobilenet): the identity, or "
              "where a block changes shape a parameter-free shortcut (subsample, zero-pad the new channels); "
              "null: exactly when its blocks are stochastic. Residual networks always have them.")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def skip_shortcuts(archs: tuple[str, ...] | list[str], p_last: float, skips: bool | None) -> dict:
    """A cache-key entry for plain networks built with skips: since their shape-changing blocks got
    zero-padding shortcuts, such networks compute something else than the artifacts made before."""
    added = [a for a in archs if not architecture(a).residual and resolve_skips(a, p_last, skips)]
    return {"skip_shortcuts": "zero_pad"} if added else {}


def each_once(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    if len(set(values)) != len(values):
        raise ValueError(f"each {what} at most once, got {list(values)}")
    return values


NETWORK_CHOICES = f"{', '.join(ARCHITECTURES)}, or timm/NAME for any network of PyTorch Image Models"


def _known_architecture(name: str) -> str:
    if name.startswith("timm/"):
        architecture(name)  # refuses a name timm does not know, with the closest ones
    elif name not in ARCHITECTURES:
        raise ValueError(f"unknown network {name!r}; allowed: {NETWORK_CHOICES}")
    return name


class Augmentation(Section):
    crop_padding: int = Field(4, ge=0, description="Zero padding before the random crop (pixels); 0 disables cropping.")
    horizontal_flip: bool = Field(True, description="Random horizontal flips.")
    random_resized_crop: tuple[AreaFraction, AreaFraction] | None = Field(
        None, description="Random resized crops, as ImageNet models train: each image a random region of this "
        "range of its area (e.g. [0.08, 1]) and an aspect ratio in [3/4, 4/3], resized to data.input_size (needs "
        "crop_padding 0). Null: off.")

    @model_validator(mode="after")
    def _one_kind_of_crop(self) -> "Augmentation":
        if self.random_resized_crop is not None:
            low, high = self.random_resized_crop
            if low > high:
                raise ValueError(f"augmentation.random_resized_crop {list(self.random_resized_crop)}: the smallest "
                                 f"area comes first")
            if self.crop_padding:
                raise ValueError(f"augmentation.random_resized_crop replaces the padded crop: set "
                                 f"augmentation.crop_padding to 0 (it is {self.crop_padding})")
        return self


FOLDER_DATASETS = ("tiny_imagenet", "folder")


class DataConfig(Section):
    dataset: Literal["digits", "cifar10", "cifar100", "tiny_imagenet", "folder", "npz"] = Field(
        "digits", description="digits (scikit-learn's bundled 8x8 digits, no download); cifar10 or cifar100 "
        "(an .npz or a torchvision folder); tiny_imagenet (its official folder, or an .npz packed from it); "
        "folder (root/train/<class>/*, root/test/<class>/*); npz (x_train, y_train, x_test, y_test, class_names).")
    root: str | None = Field(
        None, description="Where the data is: an .npz file, the dataset's folder, or a folder written by "
        "pack-dataset (memory-mapped: larger than memory is fine). Relative paths resolve from the current directory.")
    download: bool = Field(False, description="Let torchvision download cifar10/cifar100 into data.root.")
    image_size: int | None = Field(
        None, ge=8, description="Resize images read from files to this square size (null: keep their size).")
    classes: int | list[str] | None = Field(
        None, description="Train and test on some of the dataset's classes: the first N in its order, or those named "
        "(null: all). Labels are numbered in the subset's order; train_images, validation_images and test_images "
        "count images of these classes.")
    train_images: int | None = Field(
        None, ge=1, description="Use a class-balanced subset of this many training images (null: all).")
    test_images: int | None = Field(
        None, ge=1, description="Use a class-balanced subset of this many test images (null: all).")
    validation_images: int | None = Field(
        None, ge=1, description="Hold out a class-balanced validation split of this many training images (a fixed, "
        "seeded choice; train_images then counts the rest). Every trained model reports its accuracy on it, and a "
        "sweep chooses settings such as p_n by it, never by the test split (null: no validation split, unless a "
        "folder dataset brings its own: val/ beside train/ and test/).")
    augmentation: Augmentation = Field(default_factory=Augmentation, description="Training augmentation.")
    input_size: int | None = Field(
        None, ge=8, description="The networks' input size (square). Evaluation then shows each image's central "
        "crop_pct of its side resized to it, and training its augmented crops resized to it; images read from files "
        "are read as their centred square, data.image_size pixels wide (default: input_size / crop_pct). Null: the "
        "images as stored (a network given pretrained weights defaults to its pretrained input size).")
    crop_pct: float | None = Field(
        None, gt=0.0, le=1.0, description="With input_size: the fraction of each image's side that evaluation keeps "
        "(its centre), as timm's crop_pct (null: the pretrained configuration of a network given pretrained "
        "weights, else 1).")
    interpolation: Literal["bilinear", "bicubic"] | None = Field(
        None, description="With input_size: the filter that resizes evaluation images, and predict's (null: the "
        "pretrained configuration of a network given pretrained weights, else bilinear).")

    @property
    def class_count(self) -> int | None:
        """How many classes data.classes keeps (None: all of the dataset's)."""
        return self.classes if isinstance(self.classes, int) or self.classes is None else len(self.classes)

    @model_validator(mode="after")
    def _classes_are_a_subset(self) -> "DataConfig":
        if self.classes is None:
            return self
        if self.class_count < 2:
            raise ValueError(f"data.classes = {self.classes}: a classifier needs at least 2 classes")
        if isinstance(self.classes, list):
            repeated = sorted({name for name in self.classes if self.classes.count(name) > 1})
            if repeated:
                raise ValueError(f"data.classes names {', '.join(map(repr, repeated))} more than once")
        return self

    @model_validator(mode="after")
    def _root_fits_dataset(self) -> "DataConfig":
        if self.dataset == "digits" and self.root is not None:
            raise ValueError("data.root must be null for dataset 'digits' (it ships with scikit-learn)")
        if self.dataset == "npz" and (self.root is None or not self.root.endswith(".npz")):
            raise ValueError(f"dataset 'npz' needs data.root pointing at an .npz file, got {self.root!r}")
        if self.dataset in FOLDER_DATASETS and self.root is None:
            raise ValueError(f"dataset {self.dataset!r} needs data.root: its folder, or an .npz packed "
                             f"from it with `stochkd-pipeline pack-dataset`")
        if self.image_size is not None and (self.dataset not in FOLDER_DATASETS or self.root.endswith(".npz")):
            # Arrays (digits, CIFAR, any .npz) keep their size: the setting would change the key alone.
            source = "an .npz" if self.root and self.root.endswith(".npz") else f"dataset {self.dataset!r}"
            raise ValueError(f"data.image_size = {self.image_size} resizes images read from image files "
                             f"(tiny_imagenet and folder datasets), but {source} holds arrays, which keep their "
                             f"size; leave data.image_size out (data.input_size resizes what the networks see; "
                             f"pack-dataset --image-size resizes while packing)")
        return self


def check_input_size(data: DataConfig) -> None:
    """Settings that resize to data.input_size need one: checked on the whole profile, once a
    pretrained network may have filled it in."""
    if data.input_size is None and (data.crop_pct is not None or data.interpolation is not None):
        raise ValueError("data.crop_pct and data.interpolation say how images are resized to data.input_size, "
                         "which is not set; set data.input_size too")
    if data.augmentation.random_resized_crop is not None and data.input_size is None:
        raise ValueError("data.augmentation.random_resized_crop resizes its crops to data.input_size, which is "
                         "not set; set data.input_size")


class TrainingConfig(Section):
    epochs: int = Field(30, ge=1, description="Passes over the training set.")
    batch_size: int = Field(128, ge=1, description="Images per optimizer step.")
    lr: float = Field(0.1, gt=0, description="Initial SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay.")
    lr_schedule: Literal["step", "cosine"] = Field(
        "step", description="step: multiply by lr_gamma at each of lr_milestones; cosine: anneal to 0.")
    lr_milestones: tuple[int, ...] = Field((), description="Epochs at which a step schedule decays the LR.")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="Decay factor of the step schedule.")
    warmup_epochs: float | None = Field(
        None, gt=0, description="Ramp the LR up linearly over this many epochs (null: no warm-up). "
        "Very deep ResNets (110 layers) need it to start training at LR 0.1 (He et al. 2016).")
    precision: Literal["fp32", "bf16"] | None = Field(
        None, description="Arithmetic of the training step: bf16 autocast or fp32 (null: bf16 on a CUDA GPU, "
        "fp32 elsewhere).")
    compile: bool | None = Field(
        None, description="torch.compile the network for training (null: no). Its compile time is reported "
        "apart from the steady-state throughput.")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = Field(
        None, description="torch.compile's mode when compile is on (null: default). reduce-overhead captures "
        "CUDA graphs on a GPU; it needs drop_execution: mask, which leaves no host-side decision in a step.")
    compile_scope: Literal["network", "blocks"] | None = Field(
        None, description="What compile compiles (null: network): the whole network as one graph, or each block "
        "on its own (blocks), so that one compiled graph serves every block of the same shape and compile time "
        "stops growing with depth (ResNet-110 compiles as few graphs as ResNet-20), at the cost of fusing "
        "across block boundaries. Blocks then drop by masks (drop_execution null or mask); compile_mode default or "
        "max-autotune.")
    eval_each_epoch: bool | None = Field(
        None, description="Measure test (and validation) accuracy after every epoch, for the report's curves; its "
        "time is kept out of the training throughput (null: yes).")
    drop_execution: Literal["skip", "mask"] | None = Field(
        None, description="How stochastic blocks drop while training, and while a teacher is sampled for this "
        "recipe: skip (compute a block only for the rows that keep it, coins drawn on the CPU) or mask (compute "
        "every block and multiply by a mask drawn on the device, capturable). Same distribution (null: mask where "
        "capture_step replays the step on a GPU or compile_scope is blocks, skip elsewhere).")
    capture_step: bool | None = Field(
        None, description="On a CUDA GPU, record each full batch's whole step (forward, loss, backward, optimizer "
        "step) once as a CUDA graph and replay it, after a few eager steps; stochastic blocks then drop by masks "
        "(drop_execution null or mask). Ignored on a CPU, where the step runs eagerly (null: no).")

    @model_validator(mode="after")
    def _schedule_fits_the_epochs(self) -> "TrainingConfig":
        # A milestone past the last epoch, or a warm-up as long as training, changes nothing a user can
        # see until the accuracy comes out low: typical after shortening a 200-epoch recipe with --set.
        if self.lr_schedule == "step" and any(m < 1 for m in self.lr_milestones):
            raise ValueError(f"training.lr_milestones {list(self.lr_milestones)}: milestones are epochs, counted "
                             f"from 1")
        late = [m for m in self.lr_milestones if m >= self.epochs]
        if self.lr_schedule == "step" and late:
            raise ValueError(f"training.lr_milestones {list(self.lr_milestones)}: training ends after epoch "
                             f"{self.epochs} (training.epochs), so {', '.join(map(str, late))} would never decay "
                             f"the LR; scale the milestones with the epochs, or set lr_milestones to [] for a "
                             f"constant LR")
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            raise ValueError(f"training.warmup_epochs {self.warmup_epochs:g} is not shorter than training.epochs "
                             f"{self.epochs}, so the LR would never reach training.lr; shorten the warm-up, or "
                             f"set warmup_epochs to null")
        return self

    @model_validator(mode="after")
    def _capture_needs_masks(self) -> "TrainingConfig":
        if self.compile_mode == "reduce-overhead" and self.drop_execution != "mask":
            raise ValueError("training.compile_mode 'reduce-overhead' captures the step in CUDA graphs, which "
                             "host-side skipping breaks; set training.drop_execution: mask as well")
        if self.capture_step and self.drop_execution == "skip":
            raise ValueError("training.capture_step records the step as a CUDA graph, which host-side skipping "
                             "breaks; set training.drop_execution to mask or leave it out")
        if self.capture_step and self.compile_mode == "reduce-overhead":
            raise ValueError("training.capture_step already records the whole step as a CUDA graph; use "
                             "compile_mode default (or null) with it, not reduce-overhead")
        if self.compile_mode is not None and not self.compile:
            raise ValueError("training.compile_mode is set but training.compile is not; set compile: true")
        if self.compile_scope is not None and not self.compile:
            raise ValueError("training.compile_scope is set but training.compile is not; set compile: true")
        if self.compile_scope == "blocks":
            if self.drop_execution == "skip":
                raise ValueError("training.compile_scope 'blocks' shares one compiled graph between blocks, which "
                                 "host-side skipping breaks apart; set training.drop_execution to mask or leave it out")
            if self.compile_mode == "reduce-overhead":
                raise ValueError("training.compile_scope 'blocks' with compile_mode 'reduce-overhead' would record "
                                 "a CUDA graph per block; use capture_step: true for one graph of the whole step")
        return self


TEACHER_READINGS = ("stochastic_depth", "plain")
PRETRAINED_HELP = ("Start from these weights and train (fine-tune) with the recipe: a checkpoint of this timm network, "
                   "saved by timm or torchvision (.safetensors, or .pth/.pt/.bin, read with weights_only), or a folder "
                   "holding one. The classifier starts fresh for the profile's classes. Its key is the file's content "
                   "hash; relative paths resolve from the current directory. Null: random initialization.")
Normalization = tuple[float, ...] | None
MEAN_HELP = ("Per-channel mean subtracted from pixels in [0, 1] (null: the pretrained configuration's, for a network "
             "given pretrained weights; else the training images').")
STD_HELP = ("Per-channel standard deviation pixels in [0, 1] are divided by (null: as for mean).")


def pretrained_only_for_timm(arch: str, pretrained: str | None, where: str) -> None:
    if pretrained is not None and not arch.startswith("timm/"):
        raise ValueError(f"{where}.pretrained starts a timm network from a checkpoint, but {where}.arch is {arch}; "
                         f"use a timm/NAME network, or import a finished teacher with teacher.checkpoint")


def pretrained_key(pretrained: str | None, where: str) -> dict:
    """A network's pretrained weights as they enter a key: their content, not their path."""
    if pretrained is None:
        return {}
    from stages.nets.pretrained import pretrained_hash

    return {"pretrained_sha256": pretrained_hash(Path(pretrained), f"{where}.pretrained")}


def mean_and_std_together(mean: Normalization, std: Normalization, where: str) -> None:
    if (mean is None) != (std is None):
        raise ValueError(f"{where}.mean and {where}.std go together: set both or neither")
    if mean is not None and len(mean) != len(std):
        raise ValueError(f"{where}.mean has {len(mean)} channels but {where}.std {len(std)}")
    if std is not None and any(s <= 0 for s in std):
        raise ValueError(f"{where}.std {list(std)}: every value must be above 0")


class TeacherConfig(Section):
    arch: str = Field("resnet20", description=f"Teacher network: {NETWORK_CHOICES} "
                      f"(e.g. timm/resnet50).")
    p_last: Probability = Field(
        0.5, description="Survival probability p_n of the deepest block (eq. 2); 1 disables dropping.")
    drop_mode: Literal["batch", "sample"] = Field(
        "batch", description="While training: drop a block for the whole batch, or per image.")
    skips: bool | None = Field(None, description=SKIPS_HELP)
    readings: tuple[Literal[TEACHER_READINGS], ...] = Field(  # type: ignore[valid-type]
        ("stochastic_depth",), min_length=1,
        description="Which teachers teach, each with its own KD baseline: stochastic_depth (trained with "
        "dropping at p_last) and/or plain (trained without dropping, its blocks dropped only while it teaches, "
        "at distill.p_last or else p_last; skips added to plain networks as for stochastic_depth).")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Teacher recipe.")
    checkpoint: str | None = Field(
        None, description="Import this teacher instead of training one: a state dict (.pt, .pth or .safetensors) "
        "of teacher.arch, or a teacher artifact folder. p_last says how it was trained (1: without dropping). "
        "Its key is the file's content hash; its accuracy is measured on the test split. Relative paths resolve "
        "from the current directory.")
    pretrained: str | None = Field(None, description=PRETRAINED_HELP)
    mean: Normalization = Field(None, description=MEAN_HELP)
    std: Normalization = Field(None, description=STD_HELP)

    _arch = field_validator("arch")(_known_architecture)

    @model_validator(mode="after")
    def _weights_fit(self) -> "TeacherConfig":
        pretrained_only_for_timm(self.arch, self.pretrained, "teacher")
        mean_and_std_together(self.mean, self.std, "teacher")
        if self.pretrained is not None and self.checkpoint is not None:
            raise ValueError("teacher.checkpoint imports a finished teacher and teacher.pretrained fine-tunes one "
                             "from a start: set one of them")
        return self

    @field_validator("readings")
    @classmethod
    def _distinct_readings(cls, readings: tuple[str, ...]) -> tuple[str, ...]:
        return each_once(readings, "reading")

    def cache_form(self) -> dict:
        """What training the teacher reads: not which readings the profile compares. An imported
        teacher is its weights' content, not its path, and no recipe."""
        if self.checkpoint is not None:
            from stages.training.import_teacher import content_hash

            return {**self.model_dump(mode="json", exclude={"readings", "training", "checkpoint"}, exclude_none=True),
                    "checkpoint_sha256": content_hash(Path(self.checkpoint)),
                    **skip_shortcuts([self.arch], self.p_last, self.skips)}
        return {**self.model_dump(mode="json", exclude={"readings", "pretrained"}, exclude_none=True),
                **pretrained_key(self.pretrained, "teacher"), **skip_shortcuts([self.arch], self.p_last, self.skips)}

    def trained_plain(self) -> "TeacherConfig":
        """The plain reading's teacher: the same network and recipe, trained without dropping, with
        the skips the stochastic one has (so that its blocks can drop while it teaches)."""
        return self.model_copy(update={"p_last": 1.0, "drop_mode": "batch",
                                       "skips": resolve_skips(self.arch, self.p_last, self.skips)})

    @model_validator(mode="after")
    def _skips_fit(self) -> "TeacherConfig":
        resolve_skips(self.arch, self.p_last, self.skips)
        return self

    @model_validator(mode="after")
    def _one_imported_teacher(self) -> "TeacherConfig":
        if self.checkpoint is not None and "plain" in self.readings:
            raise ValueError("teacher.checkpoint imports one teacher, but teacher.readings includes plain, which "
                             "trains a second one; use readings [stochastic_depth] with the imported teacher's own "
                             "p_last (1 for one trained without dropping)")
        return self


class StudentConfig(Section):
    arch: str = Field("resnet8", description=f"Student network: {NETWORK_CHOICES} "
                      f"(e.g. timm/mobilenetv3_large_100).")
    skips: bool | None = Field(None, description=SKIPS_HELP)
    training: TrainingConfig = Field(
        default_factory=TrainingConfig,
        description="One recipe for every student: alone, KD and stochastic KD.")
    pretrained: str | None = Field(None, description=PRETRAINED_HELP)
    mean: Normalization = Field(None, description=MEAN_HELP)
    std: Normalization = Field(None, description=STD_HELP)

    _arch = field_validator("arch")(_known_architecture)

    @model_validator(mode="after")
    def _skips_fit(self) -> "StudentConfig":
        resolve_skips(self.arch, 1.0, self.skips)
        pretrained_only_for_timm(self.arch, self.pretrained, "student")
        mean_and_std_together(self.mean, self.std, "student")
        return self

    def cache_form(self) -> dict:
        return {**self.model_dump(mode="json", exclude={"pretrained"}, exclude_none=True),
                **pretrained_key(self.pretrained, "student"), **skip_shortcuts([self.arch], 1.0, self.skips)}


class DistillConfig(Section):
    transfer: Literal["kd", "at"] = Field(
        "kd", description="kd: match the teacher's softened outputs (Hinton et al.); at: match its attention "
        "maps at every group boundary (Zagoruyko & Komodakis), teacher and student groups at equal resolutions.")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the KD term.")
    kd_weight: float = Field(0.9, ge=0, le=1, description="Weight of the KD term; the label CE gets 1 - kd_weight.")
    at_weight: float = Field(1000.0, ge=0, description="beta of attention transfer: the loss adds beta/2 times "
                             "the attention distance (Zagoruyko & Komodakis use 1000).")
    teacher_samples: int = Field(4, ge=1, description="K: teacher sub-networks sampled per batch (stochastic KD).")
    p_last: Probability | None = Field(
        None, description="Survival p_n while the teacher teaches; null: the teacher's own p_last.")
    drop_mode: Literal["batch", "sample"] = Field(
        "batch", description="batch: each of the K samples is one sub-network for the whole batch; "
        "sample: an independent mask per image.")
    aggregate: Literal["individual", "logit_average"] = Field(
        "individual", description="individual: average the K per-sample KD (or AT) terms, which gives the same "
        "gradient as KD against the average of the K distributions (cross-entropy is linear in its target); "
        "logit_average: average the K teachers' logits (for AT, their feature maps) before the softmax (the "
        "attention map), a target that does differ.")

    @field_validator("aggregate", mode="before")
    @classmethod
    def _ensemble_was_individual(cls, value):
        if value == "ensemble":
            raise ValueError("'ensemble' trained exactly as 'individual' does: averaging the K KD terms and KD against "
                             "the average of the K distributions give the student the same gradient (cross-entropy "
                             "is linear in its target); use individual, or logit_average for a teacher whose K "
                             "logits are averaged before the softmax")
        return value
    kept_scale: Literal["trained", "expectation"] = Field(
        "trained", description="How a sampled teacher's surviving blocks are scaled when it teaches at another "
        "p_n than it was trained with: trained (the scale each block was trained with, the paper's sub-network: "
        "the trained network with the dropped blocks removed) or expectation (divided by the teaching survival, "
        "so the expected output is the full network's).")

    def cache_form(self) -> dict:
        """The settings that the chosen transfer reads, and no others."""
        unused = {"at_weight"} if self.transfer == "kd" else {"temperature", "kd_weight"}
        return self.model_dump(mode="json", exclude=unused, exclude_none=True)


class MutualConfig(Section):
    peers: tuple[str, ...] = Field(
        ("resnet32", "resnet32"), min_length=2,
        description="Deep Mutual Learning: networks trained together from scratch, each learning from the others.")
    p_last: Probability = Field(
        0.5, description="Survival p_n of the deepest block of every proposed peer (eq. 2); conventional "
        "peers never drop.")
    drop_mode: Literal["batch", "sample"] = Field("batch", description="How proposed peers drop blocks.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of the mimicry term (DML uses 1).")
    mimicry_weight: float = Field(1.0, ge=0, description="Weight of the mean KL to the other peers (CE weighs 1).")
    update: Literal["simultaneous", "sequential"] = Field(
        "simultaneous", description="simultaneous: every peer steps on the same batch's predictions; sequential: "
        "peers step one after another, each learning from the others' latest predictions (DML's Algorithm 1; "
        "one process only).")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="One recipe for every peer.")

    @field_validator("peers")
    @classmethod
    def _known_peers(cls, peers: tuple[str, ...]) -> tuple[str, ...]:
        for name in peers:
            _known_architecture(name)
        return peers

    @model_validator(mode="after")
    def _proposed_peers_can_drop(self) -> "MutualConfig":
        for name in dict.fromkeys(self.peers):
            resolve_skips(name, self.p_last, None)
        return self

    def cache_form(self) -> dict:
        # The default update stays out, so keys made before it was a setting stay valid.
        unused = {"update"} if self.update == "simultaneous" else set()
        return {**self.model_dump(mode="json", exclude=unused, exclude_none=True),
                **skip_shortcuts(self.peers, self.p_last, None)}


class AnalysisConfig(Section):
    images: int = Field(2000, ge=1, description="Test images (class-balanced) for the teacher analysis.")
    samples: int = Field(8, ge=1, description="Sub-networks sampled to compare with the deterministic teacher.")


class ExportConfig(Section):
    opset: int = Field(18, ge=13, description="ONNX opset. PyTorch's exporter writes 18 and converts to others; "
                       "below 18 it cannot convert the Pad of the zero-padding shortcuts, and export then fails "
                       "naming the opset it wrote.")
    tolerance: float = Field(1e-3, gt=0, description="Largest logit difference ONNX Runtime vs PyTorch accepted, "
                             "relative to the largest logit where that exceeds 1.")
    preprocess: Literal["graph"] | None = Field(
        None, description="graph: also export every model taking raw pixels (uint8, N x H x W x C) and normalizing "
        "them inside the graph, so an engine fuses the preprocessing and a client sends the image as it is. That "
        "form is quantized, built and benchmarked beside the float one, as MODEL_uint8 (null: the float form only).")


class QuantizeConfig(Section):
    precisions: tuple[Literal["int8", "fp16"], ...] = Field(
        ("int8", "fp16"), description="Reduced precisions to produce next to fp32.")
    calibration_images: int = Field(512, ge=1, description="Training images used to calibrate INT8.")
    calibration_method: Literal["minmax", "entropy", "percentile"] | None = Field(
        None, description="How INT8 activation ranges are chosen from the calibration images (null: minmax, "
        "or percentile for ONNX Runtime's quantizer writing a graph for TensorRT; chosen by measurement, see "
        "results/int8_for_tensorrt.md). Model Optimizer takes minmax (its max) and entropy.")
    per_channel: bool = Field(True, description="Per-channel weight scales (ONNX Runtime's quantizer; Model "
                              "Optimizer always uses them).")
    int8_tool: Literal["onnxruntime", "modelopt"] | None = Field(
        None, description="Who writes the INT8 graph (null: NVIDIA Model Optimizer where TensorRT runs the model, "
        "its Q/DQ placement being the one TensorRT fuses; ONNX Runtime's quantizer for ONNX Runtime on CPUs).")

    @model_validator(mode="after")
    def _modelopt_calibrates_its_way(self) -> "QuantizeConfig":
        if self.int8_tool == "modelopt" and self.calibration_method == "percentile":
            raise ValueError("quantize.calibration_method 'percentile' is not one of Model Optimizer's (minmax, "
                             "entropy); choose one of those, or quantize.int8_tool: onnxruntime")
        return self
