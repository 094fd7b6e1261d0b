import pytest
import torch

from stages.nets.architectures import build_model, resolve_skips
from stages.nets.models.base import ZeroPadShortcut
from stages.nets.models.plain import SkipBlock
from stages.nets.models.wide_resnet import WideBlock
from stages.nets.stochastic_depth import drop_paths, fixed_subnetwork, survival_probabilities


def test_skips_go_around_every_block_after_the_first():
    for name in ("vgg13", "mobilenet"):
        net = build_model(name, 10, 3, skips=True)
        blocks = [m for m in net.modules() if isinstance(m, SkipBlock)]
        assert [b.skip for b in blocks] == [False] + [True] * (len(blocks) - 1)
        for block in blocks[1:]:
            convs = [m for m in block.body if isinstance(m, torch.nn.Conv2d)]
            keeps_shape = convs[0].stride == (1, 1) and convs[0].in_channels == convs[-1].out_channels
            assert isinstance(block.shortcut, torch.nn.Identity if keeps_shape else ZeroPadShortcut)


@pytest.mark.parametrize("name, droppable", [("vgg13", 9), ("mobilenet", 12)])
def test_every_block_after_the_first_of_a_stochastic_plain_network_drops(name, droppable):
    assert len(drop_paths(build_model(name, 10, 3, p_last=0.5))) == droppable


def test_a_dropped_shape_changing_skip_block_is_its_zero_padding_shortcut():
    body = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, stride=2, padding=1), torch.nn.ReLU())
    block = SkipBlock(body, ZeroPadShortcut(4, 8, 2), 0.5)
    x = torch.randn(2, 4, 5, 5)
    with fixed_subnetwork(torch.nn.Sequential(block), [False]):
        out = block(x)
    assert out.shape == (2, 8, 3, 3)
    assert torch.equal(out[:, 2:6], x[:, :, ::2, ::2])
    assert out[:, :2].abs().sum() == 0 and out[:, 6:].abs().sum() == 0


def test_plain_networks_without_skips_are_the_conventional_ones():
    net = build_model("vgg13", 10, 3)
    assert not any(m.skip for m in net.modules() if isinstance(m, SkipBlock))
    assert drop_paths(net) == []


def test_stochastic_plain_network_follows_eq_2_by_depth():
    net = build_model("mobilenet", 10, 3, p_last=0.5)  # skips null: on, since blocks are stochastic
    blocks = list(net.blocks)
    expected = survival_probabilities(len(blocks), 0.5)
    for block, p in zip(blocks, expected):
        if p < 1:
            assert block.drop.survival == pytest.approx(p)
        else:
            assert block.drop is None


def test_a_dropped_skip_block_is_the_identity():
    block = SkipBlock(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU()),
                      torch.nn.Identity(), 0.5)
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
    from stages.nets.stochastic_depth import sample_logits

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
    from stages.nets.architectures import ARCHITECTURES

    net = build_model(name, 10, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, groups = net.forward_with_groups(x)
        assert torch.allclose(logits, net(x), atol=1e-6)
    assert [g.shape[-1] for g in groups] == resolutions
    assert len(groups) == ARCHITECTURES[name].groups


def test_sampled_groups_come_from_the_same_sub_networks_as_the_logits():
    from stages.nets.stochastic_depth import sample_with_groups

    torch.manual_seed(0)
    net = build_model("resnet14", 10, 3, p_last=0.5)
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(1)
    logits, groups = sample_with_groups(net, x, k=4)
    assert logits.shape == (4, 2, 10) and groups[-1].shape == (4, 2, 64, 4, 4)
    # The last group's output, pooled and classified, gives back each sample's logits.
    head = torch.stack([net.head(g) for g in groups[-1]])
    assert torch.allclose(head, logits, atol=1e-5)
