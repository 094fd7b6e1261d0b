import math

import pytest
import torch
import torch.nn.functional as F

from stages.nets.losses import kd_loss, kd_term


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _softmax(logits, t):
    exps = [math.exp(v / t) for v in logits]
    return [e / sum(exps) for e in exps]


def test_kd_term_matches_hand_computation():
    student, teacher, t = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0], 2.0
    expected = t * t * _kl(_softmax(teacher, t), _softmax(student, t))
    value = kd_term(torch.tensor([student]), torch.tensor([teacher]), t)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_individual_averages_the_kl_of_each_sample():
    student, t = [0.0, 1.0, 2.0], 3.0
    teachers = [[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]]
    expected = t * t * sum(_kl(_softmax(th, t), _softmax(student, t)) for th in teachers) / 2
    value = kd_term(torch.tensor([student]), torch.tensor(teachers).unsqueeze(1), t, "individual")
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_averaging_the_k_terms_and_averaging_the_k_distributions_teach_the_same():
    """Cross-entropy is linear in its target: KD against the mean of K distributions and the mean of K
    KD terms differ by a constant, so the student's gradient is the same."""
    torch.manual_seed(0)
    student = torch.randn(4, 10, requires_grad=True)
    teachers = torch.randn(3, 4, 10) * 2
    kd_term(student, teachers, 4.0, "individual").backward()
    individual = student.grad.clone()
    student.grad = None
    mean = F.softmax(teachers / 4.0, -1).mean(0)
    (16 * (mean * (mean.log() - F.log_softmax(student / 4.0, -1))).sum(-1).mean()).backward()
    torch.testing.assert_close(student.grad, individual, rtol=1e-5, atol=1e-7)


def test_logit_average_teaches_the_softmax_of_the_mean_logits():
    student, t = [0.0, 1.0, 2.0], 3.0
    teachers = [[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]]
    mean_logits = [(a + b) / 2 for a, b in zip(*teachers)]
    expected = t * t * _kl(_softmax(mean_logits, t), _softmax(student, t))
    value = kd_term(torch.tensor([student]), torch.tensor(teachers).unsqueeze(1), t, "logit_average")
    assert value.item() == pytest.approx(expected, rel=1e-5)
    individual = kd_term(torch.tensor([student]), torch.tensor(teachers).unsqueeze(1), t, "individual")
    assert abs(value.item() - individual.item()) > 0.1


def test_ensemble_is_refused_with_the_reason():
    from stages.common.config import DistillConfig

    with pytest.raises(ValueError, match="'ensemble' trained exactly as 'individual' does"):
        DistillConfig(aggregate="ensemble")


def test_kd_loss_weights_cross_entropy_and_kd():
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.5, 0.5, 0.0]])
    label = torch.tensor([2])
    ce = -math.log(_softmax([1.0, 0.0, -1.0], 1)[2])
    kd = 16 * _kl(_softmax([0.5, 0.5, 0.0], 4), _softmax([1.0, 0.0, -1.0], 4))
    assert kd_loss(student, teacher, label, 4.0, 0.9).item() == pytest.approx(0.1 * ce + 0.9 * kd, rel=1e-5)


def test_kd_term_is_zero_when_student_matches_teacher():
    logits = torch.randn(5, 7)
    assert kd_term(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_unknown_aggregate_is_refused():
    with pytest.raises(ValueError, match="aggregate"):
        kd_term(torch.zeros(1, 2), torch.zeros(1, 2), 1.0, "median")


def test_attention_map_is_the_normalized_channel_mean_of_squares():
    from stages.nets.losses import attention_map

    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (B=1, C=2, H=1, W=2)
    squares = [(1 + 9) / 2, (4 + 0) / 2]
    norm = math.sqrt(sum(v * v for v in squares))
    assert attention_map(features).flatten().tolist() == pytest.approx([v / norm for v in squares])


def test_attention_term_sums_groups_and_averages_samples():
    from stages.nets.losses import attention_map, attention_term

    torch.manual_seed(0)
    student = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    teachers = [torch.randn(3, 2, 6, 4, 4), torch.randn(3, 2, 7, 2, 2)]  # K = 3 samples
    expected = sum(
        sum(((attention_map(s) - attention_map(t[k])) ** 2).mean() for k in range(3)) / 3
        for s, t in zip(student, teachers))
    assert attention_term(student, teachers).item() == pytest.approx(expected.item(), rel=1e-5)
    assert attention_term(student, [t[0] for t in teachers]).item() >= 0
    with pytest.raises(ValueError, match="same resolution"):
        attention_term(student, [teachers[1], teachers[0]])
    with pytest.raises(ValueError, match="one to one"):
        attention_term(student, teachers[:1])
