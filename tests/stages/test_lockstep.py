"""A row's students trained in lockstep in one process: the weights, histories and checkpoints of
their separate trainings, to the bit on a CPU."""

import os
import signal

import pytest
import torch

from stages.common.config import Augmentation, DataConfig, DistillConfig, StudentConfig, TrainingConfig
from stages.context import StageContext, StageInput
from stages.distill import train_student, train_students_together
from stages.training.lockstep import Member, OutOfStep, _restore
from stages.training.resume import TrainingInterrupted, load_state
from tests.stages.test_distill import teacher  # noqa: F401 (an untrained ResNet-14 teacher, saved)

DATA = DataConfig(dataset="digits", train_images=200, test_images=100, validation_images=50,
                  augmentation=Augmentation(crop_padding=1, horizontal_flip=True))
STUDENT = StudentConfig(arch="resnet8", training=TrainingConfig(epochs=2, batch_size=64, lr_schedule="step",
                                                                lr_milestones=(1,)))
# The tasks of a row: the student alone, KD, stochastic KD (two sub-networks per batch, drawn from
# the global generators) and attention transfer from a sampled teacher.
ROW = {"student": None,
       "kd": DistillConfig(p_last=1.0),
       "stochastic_kd": DistillConfig(p_last=0.5, teacher_samples=2),
       "stochastic_at": DistillConfig(transfer="at", p_last=0.7)}


def contexts(root, teacher, variants=tuple(ROW), device: str = "cpu", **training) -> list[StageContext]:
    student = STUDENT.model_copy(update={"training": STUDENT.training.model_copy(update=training)}) \
        if training else STUDENT
    made = []
    for variant in variants:
        out, checkpoints = root / variant, root / f"{variant}.resume"
        out.mkdir(parents=True, exist_ok=True)
        params = {"seed": 3, "data": DATA, "student": student}
        if ROW[variant] is not None:
            params["distill"] = ROW[variant]
        made.append(StageContext(params=params, inputs={"teacher": StageInput(teacher, {"test_accuracy": 0.5})},
                                 output=out, variant=variant, checkpoints=checkpoints, checkpoint_interval_s=0,
                                 device=device))
    return made


def trained(ctx: StageContext) -> tuple[dict, str]:
    return torch.load(ctx.output / "model.pt", weights_only=True), (ctx.output / "history.json").read_text()


@pytest.fixture(scope="module")
def separately(tmp_path_factory, teacher):
    """Each task of the row trained on its own, as the pipeline trains them one at a time."""
    made = contexts(tmp_path_factory.mktemp("separately"), teacher)
    metrics = [train_student(ctx) for ctx in made]
    return {ctx.variant: (trained(ctx), m) for ctx, m in zip(made, metrics)}


def assert_as_separately(made: list[StageContext], metrics: list[dict], separately) -> None:
    for ctx, m in zip(made, metrics):
        (weights, history), alone = trained(ctx), separately[ctx.variant]
        assert weights.keys() == alone[0][0].keys()
        assert all(torch.equal(weights[k], alone[0][0][k]) for k in weights), ctx.variant  # BatchNorm statistics too
        assert history == alone[0][1], ctx.variant
        for key in ("test_accuracy", "validation_accuracy", "final_train_loss", "teacher_test_accuracy"):
            assert m.get(key) == alone[1].get(key), (ctx.variant, key)


def test_a_row_trained_in_lockstep_equals_its_tasks_trained_one_at_a_time(tmp_path, teacher, separately):
    made = contexts(tmp_path, teacher)
    metrics = train_students_together(made)
    assert_as_separately(made, metrics, separately)
    assert {m["as_run"]["lockstep_models"] for m in metrics} == {len(ROW)}
    assert all(load_state(ctx.checkpoints / "training.pt")["epoch"] == 2 for ctx in made)  # each task's own


def test_a_stopped_lockstep_row_resumes_to_the_same_weights_together_or_one_at_a_time(
        tmp_path, teacher, separately, monkeypatch):
    """SIGTERM in the row's fifth step: every task's checkpoint stands after that step; two tasks then
    resume in lockstep and two on their own, all to their uninterrupted weights."""
    import stages.distill as distill

    made = contexts(tmp_path, teacher)
    losses, outside = [], signal.getsignal(signal.SIGTERM)
    original = distill.distillation_loss

    def counting(teacher_model, config):
        loss = original(teacher_model, config)

        def counted(logits, images, labels):
            losses.append(1)
            if len(losses) == 5:  # its fifth step (the second epoch's first); the others finish that step
                os.kill(os.getpid(), signal.SIGTERM)
            return loss(logits, images, labels)
        return counted if config.p_last == 1.0 else loss

    monkeypatch.setattr(distill, "distillation_loss", counting)
    with pytest.raises(TrainingInterrupted):
        train_students_together(made[:3])  # alone, KD, stochastic KD: the KD member counts its steps
    assert signal.getsignal(signal.SIGTERM) is outside
    monkeypatch.setattr(distill, "distillation_loss", original)
    states = [load_state(ctx.checkpoints / "training.pt") for ctx in made[:3]]
    assert {(s["epoch"], s["step"]) for s in states} == {(1, 1)}  # four steps an epoch: after the fifth
    together = train_students_together(made[:2])
    one = train_student(made[2])
    assert_as_separately(made[:3], [*together, one], separately)
    assert all(len(m["train_resumed_at"]) == 1 for m in [*together, one])


def test_checkpoints_at_different_points_resume_one_task_at_a_time(tmp_path, teacher, separately):
    made = contexts(tmp_path, teacher, ("student", "kd"))
    [finished] = contexts(tmp_path / "done", teacher, ("student",))
    train_student(finished)  # a checkpoint at the end of training, beside a task not started
    made[0].checkpoints.mkdir(parents=True)
    os.replace(finished.checkpoints / "training.pt", made[0].checkpoints / "training.pt")
    members = [Member(f"{ctx.variant} resnet8", torch.nn.Linear(1, 1), None, {}, ctx.training_checkpoint)
               for ctx in made]
    with pytest.raises(OutOfStep, match="^student resnet8: epoch 3, batch 0, kd resnet8: not started$"):
        _restore(members, STUDENT.training, torch.Generator(), torch.device("cpu"), 4)
    metrics = train_students_together(made)
    assert_as_separately(made, metrics, separately)
    assert all("lockstep_models" not in m["as_run"] for m in metrics)  # each trained on its own


def test_a_recipe_that_compiles_is_refused_in_lockstep_in_one_line(tmp_path, teacher):
    from stages.common.errors import PipelineError

    with pytest.raises(PipelineError, match=r"^--lockstep: the students' recipe compiles its training step "
                                            r"\(student.training.compile: true\), one model at a time; set that "
                                            r"off, or drop --lockstep$"):
        train_students_together(contexts(tmp_path, teacher, ("student", "kd"), compile=True))


@pytest.fixture
def deterministic_cudnn():
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU; none is visible")
def test_a_captured_row_replays_one_graph_and_trains_its_coinless_students_as_alone(
        tmp_path, teacher, deterministic_cudnn):
    """capture_step on a GPU: the row's whole step is one graph. The student alone draws no coins, so it
    trains as it does captured alone (to capture's own tolerance, fp32). KD draws none either, but its
    teacher's outputs come from the pass it shares with stochastic KD, a batch of (1 + K) B rows in
    bf16 instead of K B: other kernels, other rounding, so only its loss is compared, to 1 %. The
    sampled students share one stream of coins there: other coins of the same distribution."""
    settings = {"epochs": 3, "capture_step": True, "precision": "fp32"}
    made = contexts(tmp_path / "together", teacher, device="cuda", **settings)
    together = train_students_together(made)
    alone = contexts(tmp_path / "alone", teacher, ("student", "kd"), device="cuda", **settings)
    separate = [train_student(ctx) for ctx in alone]
    assert all(m["as_run"]["captured_step"] and m["as_run"]["lockstep_models"] == len(ROW) for m in together)
    (weights, _), (reference, _) = trained(made[0]), trained(alone[0])
    difference = max(float((weights[k].float() - reference[k].float()).abs().max()) for k in weights)
    assert difference <= 1e-5, difference
    for ours, theirs, tolerance in zip(together, separate, (1e-5, 1e-2)):
        assert ours["final_train_loss"] == pytest.approx(theirs["final_train_loss"], rel=tolerance)
    assert all(m["final_train_loss"] == m["final_train_loss"] for m in together)  # finite, sampled ones too


def test_one_teacher_pass_a_step_serves_its_deterministic_and_its_sampled_student(
        tmp_path, teacher, separately, monkeypatch):
    """KD and stochastic KD from one teacher: one teacher built, one shared pass a step (which the
    sampled student runs, with its own coins), and still each task's separate training to the bit."""
    import stages.distill as distill
    import stages.nets.teaching as teaching

    built, passes = [], []
    build, fused = distill.teaching_teacher, teaching.deterministic_and_sampled

    def building(folder, p_last, *args, **kwargs):
        built.append(p_last)
        return build(folder, p_last, *args, **kwargs)

    def passing(model, images, k, *args, **kwargs):
        passes.append(k)
        return fused(model, images, k, *args, **kwargs)

    monkeypatch.setattr(distill, "teaching_teacher", building)
    monkeypatch.setattr(teaching, "deterministic_and_sampled", passing)
    made = contexts(tmp_path, teacher, ("student", "kd", "stochastic_kd"))
    metrics = train_students_together(made)
    assert built == [0.5]  # the stochastic KD task's teacher, shared with KD
    assert passes == [2] * 8  # K = 2; two epochs of four steps
    assert_as_separately(made, metrics, separately)
