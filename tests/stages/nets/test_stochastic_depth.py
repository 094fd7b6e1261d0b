import pytest
import torch

from stages.nets.models.resnet import BasicBlock, CifarResNet
from stages.nets.stochastic_depth import (DropPath, computing_rows, draw_subnetwork, drop_paths, fixed_subnetwork,
                                          keep_scale, row_coins, sample_logits, sampling, survival_probabilities)


def test_survival_probabilities_follow_eq_2():
    # p_i = 1 - (i-1)/(n-1) * (1 - p_n), computed by hand for n = 5, p_n = 0.5
    assert survival_probabilities(5, 0.5) == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5])
    assert survival_probabilities(3, 1.0) == [1.0, 1.0, 1.0]
    assert survival_probabilities(1, 0.5) == [1.0]


@pytest.mark.parametrize("p_last", [0.0, -0.1, 1.5])
def test_survival_outside_unit_interval_is_refused(p_last):
    with pytest.raises(ValueError, match="p_last must be in"):
        survival_probabilities(4, p_last)


def test_network_blocks_get_eq_2_survivals_and_no_dropper_when_certain():
    net = CifarResNet(20, 10, p_last=0.5)
    expected = survival_probabilities(9, 0.5)
    assert net.blocks[0].drop is None  # p_1 = 1: no dropper at all
    assert [d.survival for d in drop_paths(net)] == pytest.approx(expected[1:])
    assert drop_paths(CifarResNet(20, 10, p_last=1.0)) == []


def test_a_dropped_block_is_the_identity():
    torch.manual_seed(0)
    block = BasicBlock(16, 16, stride=1, survival=0.5)
    x = torch.relu(torch.randn(4, 16, 8, 8))  # blocks receive the output of a ReLU
    with fixed_subnetwork(torch.nn.Sequential(block), [False]):
        assert torch.equal(block(x), x)


def test_a_dropped_downsampling_block_is_its_zero_padding_shortcut():
    block = BasicBlock(16, 32, stride=2, survival=0.5)
    x = torch.relu(torch.randn(2, 16, 8, 8))
    with fixed_subnetwork(torch.nn.Sequential(block), [False]):
        out = block(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_expected_sampled_block_output_equals_its_evaluation_output():
    """Inverted scaling: E[keep / p * f(x) + x] = f(x) + x before the final ReLU."""
    torch.manual_seed(0)
    block = BasicBlock(8, 8, stride=1, survival=0.6).eval()
    x = torch.relu(torch.randn(1, 8, 4, 4))
    with torch.no_grad():
        residual = block.residual(x)  # deterministic in eval mode: only the keep decision varies
        block.drop.sampling = True
        draws = torch.stack([residual * block.drop.scale(1, x.device) + x for _ in range(20000)])
    assert torch.allclose(draws.mean(0), residual + x, atol=0.03 * residual.abs().max().item())
    # A single draw is either the identity or the residual scaled by 1/p.
    assert torch.allclose(draws[0], x) or torch.allclose(draws[0], residual / 0.6 + x)


def test_sampling_freezes_batchnorm_and_records_no_gradients():
    torch.manual_seed(0)
    net = CifarResNet(14, 10, p_last=0.5).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with sampling(net):
        out = net(torch.randn(8, 3, 16, 16) * 3 + 1)
        assert not net.training  # BatchNorm uses running statistics while sampling
    assert not out.requires_grad
    assert net.training  # the mode is restored afterwards
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(d.sampling for d in drop_paths(net))


def test_evaluation_mode_does_not_drop():
    net = CifarResNet(14, 10, p_last=0.3).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_k_samples_are_different_whole_sub_networks_from_one_forward():
    torch.manual_seed(1)
    net = CifarResNet(14, 10, p_last=0.5)  # 5 stochastic blocks: 32 possible sub-networks
    x = torch.randn(3, 3, 16, 16)
    logits = sample_logits(net, x, k=6)
    assert logits.shape == (6, 3, 10)
    assert len({tuple(logits[i].flatten().round(decimals=4).tolist()) for i in range(6)}) > 1
    # Every group of the batched forward is one whole sub-network applied to the whole batch.
    subnetworks = {}
    for code in range(2 ** 5):
        keep = [bool(code >> b & 1) for b in range(5)]
        with fixed_subnetwork(net, keep):
            subnetworks[code] = net(x)
    for sample in logits:
        assert any(torch.allclose(sample, out, atol=1e-5) for out in subnetworks.values())


def test_batch_mode_groups_draw_one_decision_per_group():
    torch.manual_seed(0)
    scales = [keep_scale(6, 0.5, "batch", 3, torch.device("cpu")) for _ in range(50)]
    for scale in scales:
        if isinstance(scale, torch.Tensor):
            rows = scale.flatten()
            assert torch.equal(rows[0::2], rows[1::2])  # rows of a group share the decision
    assert any(isinstance(s, torch.Tensor) for s in scales)


def test_sample_mode_draws_per_example():
    torch.manual_seed(0)
    scale = keep_scale(1000, 0.7, "sample", 1, torch.device("cpu"))
    kept = (scale.flatten() > 0).float().mean().item()
    assert 0.65 < kept < 0.75
    assert torch.allclose(scale.flatten()[scale.flatten() > 0], torch.tensor(1 / 0.7))


@pytest.mark.parametrize("slices", [[(0, 5), (5, 10)], [(0, 4), (4, 7), (7, 10)]], ids=["two-ranks", "three-uneven"])
@pytest.mark.parametrize("copies", [1, 3], ids=["one-copy", "k-3"])
def test_per_row_coins_of_the_ranks_slices_are_the_coins_one_process_draws(slices, copies):
    """Under torchrun every rank's generator is in one state; each slice must still get its own rows'
    coins, so that together they are one process's draw (and rows of different ranks independent)."""
    total, drawn = 10, []
    for start, stop in slices:
        torch.manual_seed(7)
        with computing_rows(start, stop, total):
            drawn.append(row_coins(copies * (stop - start), 0.5, torch.device("cpu")).view(copies, -1))
    torch.manual_seed(7)
    whole = row_coins(copies * total, 0.5, torch.device("cpu")).view(copies, total)
    assert torch.equal(torch.cat(drawn, dim=1), whole)
    assert not torch.equal(drawn[0][:, :3], drawn[1][:, :3])  # seed 7: the ranks' first rows differ


def test_a_sampling_layer_inside_a_slice_draws_through_it_and_refuses_rows_that_are_not_copies_of_it():
    drop = DropPath(0.5, "sample").train()
    torch.manual_seed(1)
    with computing_rows(2, 4, 6):
        sliced = drop.scale(2, torch.device("cpu")).flatten()
        masked = drop.mask(2, torch.device("cpu")).flatten()
        with pytest.raises(ValueError, match="3 rows are not copies of this process's 2 rows"):
            row_coins(3, 0.5, torch.device("cpu"))
    torch.manual_seed(1)
    assert torch.equal(sliced, (row_coins(6, 0.5, torch.device("cpu")) * 2.0)[2:4])
    assert torch.equal(masked, (row_coins(6, 0.5, torch.device("cpu")) * 2.0)[2:4])


def test_drop_path_rejects_a_bad_survival():
    with pytest.raises(ValueError, match="survival must be in"):
        DropPath(1.2)


def test_draw_subnetwork_is_seeded():
    net = CifarResNet(32, 10, p_last=0.5)
    a = draw_subnetwork(net, torch.Generator().manual_seed(3))
    b = draw_subnetwork(net, torch.Generator().manual_seed(3))
    assert a == b and len(a) == len(drop_paths(net))


def test_kept_groups_draw_what_keep_scale_draws_and_name_the_kept_rows():
    from stages.nets.stochastic_depth import KeptRows, kept_groups

    for seed in range(30):
        torch.manual_seed(seed)
        scale = keep_scale(6, 0.5, "batch", 3, torch.device("cpu"))
        torch.manual_seed(seed)
        rows = kept_groups(6, 0.5, 3, torch.device("cpu"))
        if isinstance(scale, float):
            assert rows == scale
        else:
            assert isinstance(rows, KeptRows) and rows.factor == 2.0
            assert torch.equal(rows.index, (scale.flatten() > 0).nonzero().flatten())


def test_branches_are_computed_only_for_the_sub_networks_that_keep_them():
    from stages.nets.stochastic_depth import stochastic_sum

    drop = DropPath(0.5)
    drop.sampling, drop.groups = True, 4
    seen = []

    def residual(x):
        seen.append(len(x))
        return x * 3

    x = torch.randn(8, 2, 3, 3)
    for seed in range(20):
        torch.manual_seed(seed)
        out = stochastic_sum(residual, x, x, drop)
        torch.manual_seed(seed)
        kept = (torch.rand(4) < 0.5).repeat_interleave(2)
        expected = x + kept.view(-1, 1, 1, 1) * x * 3 / 0.5
        assert torch.allclose(out, expected)
        assert seen[-1] == int(kept.sum()) or not kept.any() or kept.all()


ARCHITECTURE_NAMES = sorted(__import__("stages.nets.architectures", fromlist=["ARCHITECTURES"]).ARCHITECTURES)
# Networks run on 8x8 images to keep a CPU test short; the plain ones, whose pooling halves the
# image at every group, on 16x16.
SMALL_IMAGES = {"vgg13": 16, "mobilenet": 16}


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_k_sub_networks_in_one_batched_pass_equal_k_separate_passes_with_the_same_coins(name):
    """The batched path a GPU takes, forced on the CPU: each block computed only on the rows of the
    sub-networks that keep it. With the coins it drew (one per sub-network at each block, in depth
    order), each of its K outputs is that sub-network run alone."""
    from stages.nets.architectures import build_model
    from stages.nets.stochastic_depth import sample_with_groups

    torch.manual_seed(0)
    net = build_model(name, 10, 3, p_last=0.5)
    _randomize_batchnorm(net)
    size = SMALL_IMAGES.get(name, 8)
    x = torch.randn(2, 3, size, size)
    drops, k = drop_paths(net), 3
    for seed in range(2):  # draws where some, all or none of the K sub-networks keep a block
        torch.manual_seed(seed)
        logits, groups = sample_with_groups(net, x, k=k, batched=True)
        assert all(g.shape[:2] == (k, 2) for g in groups)
        torch.manual_seed(seed)
        coins = [(torch.rand(k) < d.survival).tolist() for d in drops]
        for sample in range(k):
            with fixed_subnetwork(net, [c[sample] for c in coins]):
                alone = net(x.contiguous(memory_format=torch.channels_last))
            # A batch of another size takes other convolution kernels: rounding, growing with depth,
            # while a single different coin changes the logits by orders of magnitude more.
            scale = float(alone.abs().max().clamp(min=1.0))
            torch.testing.assert_close(logits[sample], alone, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
@pytest.mark.parametrize("execution", ["skip", "mask"])
def test_one_pass_of_the_deterministic_and_k_sampled_rows_equals_the_two_passes(name, execution):
    """A shared teacher's pass (the GPU's path, forced on the CPU): its first rows are the
    deterministic network (the same network built without stochastic blocks), the rest the K
    sub-networks a sampled pass alone draws with the same coins."""
    from stages.nets.architectures import build_model, resolve_skips
    from stages.nets.stochastic_depth import deterministic_and_sampled, sample_with_groups, use_drop_execution

    torch.manual_seed(0)
    net = use_drop_execution(build_model(name, 10, 3, p_last=0.5), execution)
    _randomize_batchnorm(net)
    plain = build_model(name, 10, 3, p_last=1.0, skips=resolve_skips(name, 0.5, None))  # as a teacher's spec keeps them
    plain.load_state_dict(net.state_dict())
    size = SMALL_IMAGES.get(name, 8)
    x = torch.randn(2, 3, size, size)
    for seed in range(2):
        torch.manual_seed(seed)
        (logits, groups), (sampled, sampled_groups) = deterministic_and_sampled(net, x, 3, batched=True)
        torch.manual_seed(seed)
        alone, alone_groups = sample_with_groups(net, x, 3, batched=True)
        deterministic, deterministic_groups = sample_with_groups(plain, x, 1)
        for got, want in [(logits, deterministic), (sampled, alone), *zip(groups, deterministic_groups),
                          *zip(sampled_groups, alone_groups)]:
            assert got.shape == want.shape
            scale = float(want.abs().max().clamp(min=1.0))  # other batch sizes, other kernels: rounding
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    with torch.no_grad():  # running statistics that are not the identity, which sampling must use
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


class ZeroBranch(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(())  # broadcasts onto the shortcut: the block is its shortcut alone


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_a_plain_networks_sub_network_is_the_network_with_exactly_those_residual_branches_removed(tmp_path, name):
    from stages.nets.architectures import resolve_skips
    from stages.nets.checkpoint import ModelSpec, load_model, save_model
    from stages.nets.frozen import fold_batchnorm
    from stages.nets.teaching import teaching_teacher

    torch.manual_seed(0)
    spec = ModelSpec(name, 10, 3, SMALL_IMAGES.get(name, 8), 1.0, "batch", (0.5,) * 3, (0.25,) * 3,
                     resolve_skips(name, 0.5, None))
    model = spec.build()
    _randomize_batchnorm(model)
    save_model(model, spec, tmp_path)
    teacher = teaching_teacher(tmp_path, 0.5, "batch", "trained", torch.device("cpu"))
    assert [d.kept_factor for d in drop_paths(teacher)] == [1.0] * len(drop_paths(teacher))
    owners = [path for path, m in teacher.named_modules() if isinstance(getattr(m, "drop", None), DropPath)]
    size = SMALL_IMAGES.get(name, 8)
    x = torch.randn(3, 3, size, size).contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        keep = draw_subnetwork(teacher, generator)
        with fixed_subnetwork(teacher, keep):
            sampled = teacher(x)
        reference = load_model(tmp_path)  # plain: no dropper at all; folded as the teacher is
        fold_batchnorm(reference, torch.randn(2, 3, size, size))
        reference = reference.to(memory_format=torch.channels_last)
        for path, kept in zip(owners, keep):
            block = reference.get_submodule(path)
            if not kept:
                if isinstance(getattr(block, "body", None), torch.nn.Module):
                    block.body = ZeroBranch()  # a plain network's block: its body is the branch
                else:  # a residual block's branch is a method: shadow it on the instance
                    object.__setattr__(block, "residual", ZeroBranch())
        with torch.inference_mode():
            torch.testing.assert_close(sampled, reference(x), rtol=0, atol=0)


def _saved_teacher(tmp_path, trained_p_last: float):
    from stages.nets.checkpoint import ModelSpec, save_model

    torch.manual_seed(0)
    spec = ModelSpec("resnet20", 10, 3, 16, trained_p_last, "batch", (0.5,) * 3, (0.25,) * 3)
    model = spec.build()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    save_model(model, spec, tmp_path)
    return tmp_path


def test_kept_blocks_keep_the_scale_they_were_trained_with(tmp_path):
    from stages.nets.teaching import teaching_teacher

    folder = _saved_teacher(tmp_path, 0.8)
    trained = survival_probabilities(9, 0.8)[1:]
    teaching = survival_probabilities(9, 0.5)[1:]
    teacher = teaching_teacher(folder, 0.5, "batch", "trained", torch.device("cpu"))
    assert [d.survival for d in drop_paths(teacher)] == pytest.approx(teaching)  # the coins: p_i
    assert [d.kept_factor for d in drop_paths(teacher)] == pytest.approx([1 / q for q in trained])
    expectation = teaching_teacher(folder, 0.5, "batch", "expectation", torch.device("cpu"))
    assert [d.kept_factor for d in drop_paths(expectation)] == pytest.approx([1 / p for p in teaching])


def test_teaching_at_the_trained_p_n_is_the_same_under_both_kept_scales(tmp_path):
    from stages.nets.teaching import teaching_teacher

    folder = _saved_teacher(tmp_path, 0.5)
    x = torch.randn(4, 3, 16, 16)
    outputs = []
    for kept_scale in ("trained", "expectation"):
        teacher = teaching_teacher(folder, 0.5, "batch", kept_scale, torch.device("cpu"))
        assert [d.kept_factor for d in drop_paths(teacher)] == [1 / d.survival for d in drop_paths(teacher)]
        torch.manual_seed(3)
        outputs.append(sample_logits(teacher, x, 4))
    assert torch.equal(*outputs)


def test_masks_drop_as_often_as_skipping_and_give_the_same_sub_networks():
    """The mask execution draws the same Bernoulli coins on the device (other generators): the same
    drop frequencies, and for the same decisions, the same outputs."""
    from stages.nets.architectures import build_model
    from stages.nets.stochastic_depth import drop_paths, fixed_subnetwork, use_drop_execution

    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3, p_last=0.5)
    x = torch.randn(4, 3, 16, 16)
    keep = [True, False, True][:len(drop_paths(model))]
    with fixed_subnetwork(model, keep):
        skipped = model(x)
    use_drop_execution(model, "mask")
    with fixed_subnetwork(model, keep):
        masked = model(x)
    torch.testing.assert_close(masked, skipped)
    for mode in ("batch", "sample"):
        drop = drop_paths(model)[-1]
        drop.mode, drop.groups = mode, 4
        kept = torch.stack([drop.mask(400, torch.device("cpu")).view(-1) > 0 for _ in range(2000)]).float()
        assert abs(kept.mean().item() - drop.survival) < 0.025  # 4 sigma of 8,000 group coins
        if mode == "batch":  # each of the 4 groups of 100 rows keeps or drops as one
            assert bool((kept.view(2000, 4, 100).std(-1) == 0).all())


@pytest.mark.parametrize("execution", ["skip", "mask"])
def test_what_a_training_step_does_to_a_dropped_block_depends_on_the_execution(execution):
    """The forward pass is the same either way (above); the side effects on a dropped block are not.
    Masked, its branch is computed and multiplied by 0: its BatchNorm running statistics update and
    SGD's weight decay and momentum move its weights, as with torchvision's and timm's stochastic
    depth. Skipped, it is not computed and gets no gradient: neither happens that step."""
    from stages.nets.architectures import build_model
    from stages.nets.stochastic_depth import drop_paths, use_drop_execution

    torch.manual_seed(0)
    model = use_drop_execution(build_model("resnet8", 4, 1, p_last=0.5), execution).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    dropped = [block for block in model.modules() if getattr(block, "drop", None) in drop_paths(model)]
    assert len(dropped) == 2  # ResNet-8's second and third blocks; the first always survives
    before = [{k: v.clone() for k, v in block.state_dict().items()} for block in dropped]
    for drop in drop_paths(model):
        drop.forced = False  # this training step drops every stochastic block
    model(torch.randn(8, 1, 8, 8)).logsumexp(1).mean().backward()
    optimizer.step()
    for block, old in zip(dropped, before):
        moved = {k for k, v in block.state_dict().items() if not torch.equal(v, old[k])}
        if execution == "skip":
            assert moved == set()
        else:
            assert {"conv1.weight", "conv2.weight", "bn1.running_mean", "bn2.running_var"} <= moved


def test_a_masked_network_compiles_without_graph_breaks_and_a_skipping_one_does_not():
    """No host-side decision is left in a masked training step: what CUDA-graph capture needs."""
    from stages.nets.architectures import build_model
    from stages.nets.stochastic_depth import use_drop_execution

    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3, p_last=0.5).train()
    x = torch.randn(4, 3, 16, 16)
    torch._dynamo.reset()
    masked = torch.compile(use_drop_execution(model, "mask"), fullgraph=True, backend="eager")
    assert masked(x).shape == (4, 10)
    torch._dynamo.reset()
    skipping = torch.compile(use_drop_execution(model, "skip"), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="(?i)graph break|data-dependent|Unsupported|generic_jump"):
        skipping(x)
    torch._dynamo.reset()


def test_a_compiled_forward_follows_the_slice_it_is_told_each_step():
    """torch.compile under torchrun: a graph traced for one slice must not reuse it for another (the
    last batch's), so the slice is guarded on, not baked in."""
    def coins(x):
        return x * row_coins(x.shape[0], 0.5, x.device)

    torch._dynamo.reset()
    compiled = torch.compile(coins, fullgraph=True, backend="eager")
    for start, stop, total in [(0, 4, 8), (4, 8, 8), (2, 4, 5)]:
        torch.manual_seed(3)
        with computing_rows(start, stop, total):
            got = compiled(torch.ones(stop - start))
        torch.manual_seed(3)
        assert torch.equal(got, (torch.rand(total) < 0.5).float()[start:stop]), (start, stop, total)
    torch._dynamo.reset()


def _masked_resnet20(mode: str):
    from stages.nets.architectures import build_model
    from stages.nets.stochastic_depth import use_drop_execution

    torch.manual_seed(0)
    return use_drop_execution(build_model("resnet20", 10, 3, p_last=0.5, drop_mode=mode), "mask")


def _counting_rand(monkeypatch) -> list:
    calls, rand = [], torch.rand

    def counted(*args, **kwargs):
        calls.append(args)
        return rand(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", counted)
    return calls


@pytest.mark.parametrize("mode,groups", [("batch", 1), ("batch", 3), ("sample", 1), ("sample", 3)])
def test_a_masked_forward_draws_every_blocks_coins_in_one_call_and_the_same_coins_as_block_by_block(
        monkeypatch, mode, groups):
    """One generator call per forward pass (here 8 stochastic blocks), and on a CPU the very numbers
    the blocks drew one at a time (what compiled code draws), so the outputs agree to the bit."""
    model = _masked_resnet20(mode)
    x = torch.randn(6, 3, 16, 16)
    calls = _counting_rand(monkeypatch)
    outputs = []
    for together in (True, False):
        if not together:
            for drop in drop_paths(model):
                drop.plan = None
        calls.clear()
        torch.manual_seed(1)
        with sampling(model, groups=groups):
            outputs.append(torch.cat([model(x) for _ in range(5)]))
        assert len(calls) == 5 * (1 if together else len(drop_paths(model))) == 5 * (1 if together else 8)
    assert torch.equal(*outputs)


def test_per_row_masks_in_one_call_keep_each_block_at_its_survival_and_follow_the_batch_slice(monkeypatch):
    model = _masked_resnet20("sample").train()
    drops = drop_paths(model)
    calls = _counting_rand(monkeypatch)
    kept = []
    for _ in range(100):
        calls.clear()
        rows = [drop.mask(64, torch.device("cpu")).view(-1) for drop in drops]
        assert len(calls) == 1
        assert all((r == 0).logical_or(r == d.kept_factor).all() for r, d in zip(rows, drops))
        kept.append(torch.stack(rows) > 0)
    frequency = torch.stack(kept).float().mean((0, 2))
    assert (frequency - torch.tensor([d.survival for d in drops])).abs().max() < 0.03  # 6,400 coins a block
    # Under torchrun each rank's rows are its slice of the coins one process draws for the whole batch.
    torch.manual_seed(2)
    whole = torch.stack([drop.mask(10, torch.device("cpu")).view(-1) for drop in drops])
    for start, stop in [(0, 4), (4, 10)]:
        torch.manual_seed(2)
        with computing_rows(start, stop, 10):
            part = torch.stack([drop.mask(stop - start, torch.device("cpu")).view(-1) for drop in drops])
        assert torch.equal(part, whole[:, start:stop])


def test_a_masked_training_step_trains_what_block_by_block_masks_train():
    """The plan changes how the coins are drawn, not the step: same coins, same weights."""
    from stages.nets.architectures import build_model
    from stages.nets.stochastic_depth import use_drop_execution

    weights = []
    for together in (True, False):
        torch.manual_seed(0)
        model = use_drop_execution(build_model("resnet8", 4, 1, p_last=0.5), "mask").train()
        if not together:
            for drop in drop_paths(model):
                drop.plan = None
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(4):
            model(torch.randn(8, 1, 8, 8)).logsumexp(1).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        weights.append(torch.cat([p.flatten() for p in model.state_dict().values() if p.is_floating_point()]))
    assert torch.equal(*weights)


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_a_frozen_teachers_batchnorm_folded_into_its_convolutions_gives_the_same_sub_networks(name):
    """Every BatchNorm fed by a convolution is folded (the pre-activation networks' first BatchNorm of
    a block is fed by the block's input, not a convolution, and stays); deterministic and sampled
    outputs are the unfolded network's, with the same coins, to float32 rounding."""
    import copy

    from stages.nets.architectures import build_model
    from stages.nets.frozen import fold_batchnorm
    from stages.nets.stochastic_depth import sample_with_groups

    torch.manual_seed(0)
    net = build_model(name, 10, 3, p_last=0.5)
    _randomize_batchnorm(net)
    original = copy.deepcopy(net).eval()
    size = SMALL_IMAGES.get(name, 8)
    x = torch.randn(2, 3, size, size)
    folded = fold_batchnorm(net, x)
    norms = [m for m in original.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    left = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert folded > 0 and folded + len(left) == len(norms)
    assert len(left) == (sum(1 for n, _ in original.named_modules() if n.endswith(".bn1")) if name.startswith("wrn")
                         else 0)
    for k in (1, 3):
        torch.manual_seed(k)
        want, want_groups = sample_with_groups(original, x, k)
        torch.manual_seed(k)
        got, got_groups = sample_with_groups(net, x, k)
        for a, b in [(got, want), *zip(got_groups, want_groups)]:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max().clamp(min=1.0)))


def test_a_convolution_whose_output_feeds_more_than_its_batchnorm_is_left_unfolded():
    """The probe catches a fold that would change the network (a hook sees only the BatchNorm's input,
    not the other uses of the convolution's output): the network is put back as it was."""
    from stages.nets.frozen import fold_batchnorm

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return (self.norm(y) + y).mean((2, 3))

    torch.manual_seed(0)
    net = Both()
    _randomize_batchnorm(net)
    x = torch.randn(2, 3, 8, 8)
    before = net.eval()(x)
    assert fold_batchnorm(net, x) == 0
    assert isinstance(net.norm, torch.nn.BatchNorm2d) and type(net.conv) is torch.nn.Conv2d
    assert torch.equal(net(x), before)


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_a_frozen_teacher_with_bf16_weights_runs_under_autocast_beside_its_float32_batchnorm(name):
    """A GPU's teacher: convolution and linear weights cast to bf16 once, the BatchNorms that were
    not folded (pre-activation blocks) left in float32. Checked under the CPU's autocast, the nearest
    this machine has: it runs, and gives the float32 outputs to bf16's precision."""
    from stages.nets.architectures import build_model
    from stages.nets.frozen import cast_weights, fold_batchnorm

    torch.manual_seed(0)
    net = build_model(name, 10, 3, p_last=0.5).eval()
    _randomize_batchnorm(net)
    size = SMALL_IMAGES.get(name, 8)
    x = torch.randn(4, 3, size, size).contiguous(memory_format=torch.channels_last)
    fold_batchnorm(net, x[:2])
    with torch.inference_mode():
        want = net(x)
        cast_weights(net, torch.bfloat16)
        assert all(m.weight.dtype == torch.bfloat16 for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(x)
    torch.testing.assert_close(got.float(), want, rtol=0, atol=3e-2 * float(want.abs().max()))
