import pytest
import torch

from stages.architectures import build_model, resolve_skips
from stages.models.plain import SkipBlock
from stages.models.wide_resnet import WideBlock
from stages.stochastic_depth import drop_paths, fixed_subnetwork, survival_probabilities


def test_skips_go_exactly_around_shape_preserving_blocks():
    net = build_model("vgg13", 10, 3, skips=True)
    blocks = [m for m in net.modules() if isinstance(m, SkipBlock)]
    shapes = [(b.body[0].in_channels, b.body[0].out_channels) for b in blocks]
    assert [b.skip for b in blocks] == [a == c for a, c in shapes]
    mobile = build_model("mobilenet", 10, 3, skips=True)
    for block in mobile.blocks:
        depthwise, pointwise = block.body[0], block.body[3]
        assert block.skip == (depthwise.stride == (1, 1) and pointwise.in_channels == pointwise.out_channels)


def test_plain_networks_without_skips_are_the_conventional_ones():
    net = build_model("vgg13", 10, 3)
    assert not any(m.skip for m in net.modules() if isinstance(m, SkipBlock))
    assert drop_paths(net) == []


def test_stochastic_plain_network_follows_eq_2_by_depth():
    net = build_model("mobilenet", 10, 3, p_last=0.5)  # skips null: on, since blocks are stochastic
    blocks = list(net.blocks)
    expected = survival_probabilities(len(blocks), 0.5)
    for block, p in zip(blocks, expected):
        if block.skip and p < 1:
            assert block.drop.survival == pytest.approx(p)
        else:
            assert block.drop is None


def test_a_dropped_skip_block_is_the_identity():
    block = SkipBlock(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU()), True, 0.5)
    x = torch.randn(2, 4, 5, 5)
    with fixed_subnetwork(torch.nn.Sequential(block), [False]):
        assert torch.equal(block(x), x)


def test_wide_resnet_never_drops_a_projecting_block():
    net = build_model("wrn16_2", 10, 3, p_last=0.5)
    blocks = [m for m in net.modules() if isinstance(m, WideBlock)]
    assert [b.drop is None for b in blocks if b.changes_shape] == [True] * 3
    assert len(drop_paths(net)) == 3
    x = torch.randn(2, 16 * 2, 8, 8)
    block = blocks[1]
    with fixed_subnetwork(torch.nn.Sequential(block), [False]):
        assert torch.equal(block(x), x)


def test_skips_rules_are_explained():
    with pytest.raises(ValueError, match="residual network: its skip connections cannot be removed"):
        resolve_skips("resnet20", 1.0, False)
    with pytest.raises(ValueError, match="vgg13 needs identity skips for stochastic blocks"):
        resolve_skips("vgg13", 0.5, False)
    assert resolve_skips("vgg13", 0.5, None) and not resolve_skips("vgg13", 1.0, None)


@pytest.mark.parametrize("name", ["vgg13", "mobilenet", "wrn16_2"])
def test_sampling_draws_different_sub_networks(name):
    from stages.stochastic_depth import sample_logits

    torch.manual_seed(0)
    net = build_model(name, 10, 3, p_last=0.5)
    logits = sample_logits(net, torch.randn(2, 3, 32, 32), k=6)
    assert logits.shape == (6, 2, 10)
    # Untrained bodies add little beside the skips, so compare exactly rather than rounded.
    assert len({tuple(sample.flatten().tolist()) for sample in logits}) > 1


@pytest.mark.parametrize("name, resolutions", [
    ("resnet20", [32, 16, 8]), ("wrn16_2", [32, 16, 8]), ("vgg13", [32, 16, 8, 4, 2]),
    ("mobilenet", [32, 16, 8, 4, 2])])
def test_group_outputs_end_each_resolution(name, resolutions):
    from stages.architectures import ARCHITECTURES

    net = build_model(name, 10, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, groups = net.forward_with_groups(x)
        assert torch.allclose(logits, net(x), atol=1e-6)
    assert [g.shape[-1] for g in groups] == resolutions
    assert len(groups) == ARCHITECTURES[name].groups


def test_sampled_groups_come_from_the_same_sub_networks_as_the_logits():
    from stages.stochastic_depth import sample_with_groups

    torch.manual_seed(0)
    net = build_model("resnet14", 10, 3, p_last=0.5)
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(1)
    logits, groups = sample_with_groups(net, x, k=4)
    assert logits.shape == (4, 2, 10) and groups[-1].shape == (4, 2, 64, 4, 4)
    # The last group's output, pooled and classified, gives back each sample's logits.
    head = torch.stack([net.head(g) for g in groups[-1]])
    assert torch.allclose(head, logits, atol=1e-5)
