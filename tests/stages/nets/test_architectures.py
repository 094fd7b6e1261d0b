import pytest
import torch

from stages.nets.architectures import ARCHITECTURES, build_model, register
from stages.nets.measure import count_macs, count_parameters


@pytest.mark.parametrize("name, params_m, macs_m", [
    ("resnet20", 0.27, 41), ("resnet32", 0.47, 69), ("resnet56", 0.86, 126), ("resnet110", 1.7, 253)])
def test_cifar100_resnets_match_published_sizes(name, params_m, macs_m):
    model = build_model(name, num_classes=100, in_channels=3)
    assert count_parameters(model) / 1e6 == pytest.approx(params_m, rel=0.03)
    assert count_macs(model, (3, 32, 32)) / 1e6 == pytest.approx(macs_m, rel=0.02)


@pytest.mark.parametrize("name, params_m", [
    # WRN paper (28-10: 36.5M), RepDistiller (40-2: 2.26M, 16-2: 0.70M, vgg13: 9.46M), WRN-40-4: 8.9M,
    # Deep Mutual Learning (MobileNet: 3.3M); all with a 100-class head.
    ("wrn28_10", 36.5), ("wrn40_4", 8.9), ("wrn40_2", 2.26), ("wrn16_2", 0.70), ("vgg13", 9.46), ("mobilenet", 3.3)])
def test_other_networks_match_published_parameter_counts(name, params_m):
    assert count_parameters(build_model(name, num_classes=100, in_channels=3)) / 1e6 == pytest.approx(params_m, rel=0.02)


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register("resnet20", "stages.nets.models.resnet:cifar_resnet", True, 3, depth=20)
    with pytest.raises(ValueError, match="unknown architecture 'resnet21'"):
        build_model("resnet21", 10, 3)
    assert "resnet8" in ARCHITECTURES


def test_grayscale_small_images_work():
    model = build_model("resnet8", num_classes=10, in_channels=1).eval()
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_depth_must_be_6n_plus_2():
    from stages.nets.models.resnet import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21, 10)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_fresh_networks_outputs_do_not_grow_as_the_classes_get_fewer(name):
    """He's fan-out rule on the classifier (a spread of sqrt(2 / classes)) started a ten-class ResNet-20
    at a loss of 8.7, and it trained to half a ResNet-8's accuracy. A network's initial logits should be
    as large for ten classes as for a hundred."""
    def spread(classes: int) -> float:
        torch.manual_seed(0)
        network = build_model(name, num_classes=classes, in_channels=3).train()
        with torch.no_grad():
            return network(torch.randn(16, 3, 32, 32)).std().item()

    assert spread(10) < 1.5 * spread(100)
