"""timm networks as teachers and students: their own DropPath positions are the stochastic blocks."""

import pytest
import torch

timm = pytest.importorskip("timm")

from stages.nets.architectures import architecture, build_model  # noqa: E402
from stages.nets.checkpoint import ModelSpec, load_model, save_model  # noqa: E402
from stages.nets.stochastic_depth import (BranchDropPath, draw_subnetwork, drop_paths, fixed_subnetwork,  # noqa: E402
                                          sample_with_groups, survival_probabilities)
from stages.nets.teaching import teaching_teacher  # noqa: E402

# Windowed attention needs its windows to tile the image; the others take any size.
SIZES = {"test_coatnet": 160, "test_maxvit": 160}


def _size(name: str) -> int:
    return SIZES.get(name, 32)


# timm's tiny test networks with at least one stochastic block (test_efficientnet's DropPaths sit
# on blocks without a skip, which never run them: it has none).
DROPPING = [n for n in timm.list_models("test_*") if architecture(f"timm/{n}").stochastic_blocks]


def test_the_tiny_test_networks_cover_convolutions_and_transformers():
    assert {"test_resnet", "test_convnext", "test_vit", "test_byobnet", "test_nfnet"} <= set(DROPPING)
    assert architecture("timm/test_efficientnet").stochastic_blocks == 0


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    with torch.no_grad():  # running statistics that are not the identity, which sampling must use
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


def _saved(tmp_path, name: str, trained_p_last: float):
    torch.manual_seed(0)
    spec = ModelSpec(f"timm/{name}", 10, 3, _size(name), trained_p_last, "batch", (0.5,) * 3, (0.25,) * 3)
    model = spec.build()
    _randomize_batchnorm(model)
    save_model(model, spec, tmp_path)
    return tmp_path


class ZeroBranch(torch.nn.Module):
    def forward(self, branch):
        return torch.zeros_like(branch)


@pytest.mark.parametrize("name", DROPPING)
def test_a_plain_models_sub_network_is_the_model_with_exactly_those_residual_branches_removed(tmp_path, name):
    from stages.nets.frozen import fold_batchnorm

    folder = _saved(tmp_path, name, 1.0)
    teacher = teaching_teacher(folder, 0.5, "batch", "trained", torch.device("cpu"))
    drops = drop_paths(teacher)
    assert len(drops) == architecture(f"timm/{name}").stochastic_blocks
    assert [d.kept_factor for d in drops] == [1.0] * len(drops)  # trained plain: kept blocks at scale 1
    by_module = {id(module): path for path, module in teacher.model.named_modules()}
    positions = [by_module[id(d)] for d in drops]
    x = torch.randn(2, 3, _size(name), _size(name))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        keep = draw_subnetwork(teacher, generator)
        with fixed_subnetwork(teacher, keep):
            sampled = teacher(x)
        # plain: its DropPath positions are identities; folded as the teacher is, and in its memory
        # format, so that the same convolution kernels run
        reference = load_model(folder)
        fold_batchnorm(reference, torch.randn(2, 3, _size(name), _size(name)))
        reference = reference.to(memory_format=torch.channels_last)
        for path, kept in zip(positions, keep):
            if not kept:
                parent, _, child = path.rpartition(".")
                setattr(reference.model.get_submodule(parent), child, ZeroBranch())
        with torch.inference_mode():
            expected = reference(x)
        torch.testing.assert_close(sampled, expected, rtol=0, atol=0)


def _call_order(model: torch.nn.Module, x: torch.Tensor) -> list[BranchDropPath]:
    order: list[BranchDropPath] = []
    hooks = [d.register_forward_pre_hook(lambda m, args: order.append(m)) for d in drop_paths(model)]
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    return order


@pytest.mark.parametrize("name", DROPPING)
def test_k_samples_in_one_batched_pass_equal_k_separate_passes_with_the_same_coins(name):
    torch.manual_seed(0)
    model = build_model(f"timm/{name}", 10, 3, p_last=0.5, image_size=_size(name))
    _randomize_batchnorm(model)
    x = torch.randn(2, 3, _size(name), _size(name))
    k = 3
    order = _call_order(model, x)
    drops = drop_paths(model)
    for seed in range(2):
        torch.manual_seed(seed)
        batched, _ = sample_with_groups(model, x, k, groups=False, batched=True)
        # The coins the batched pass drew: one per sub-network at each block, in the order it runs them.
        torch.manual_seed(seed)
        coins = {id(d): (torch.rand(k) < d.survival).tolist() for d in order}
        for sample in range(k):
            with fixed_subnetwork(model, [coins[id(d)][sample] for d in drops]):
                separate = model(x)
            torch.testing.assert_close(batched[sample], separate, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_group_maps_come_with_the_same_logits(name):
    torch.manual_seed(0)
    model = build_model(f"timm/{name}", 10, 3, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        logits, maps = model.forward_with_groups(x)
        torch.testing.assert_close(logits, model(x))
    assert len(maps) == architecture(f"timm/{name}").groups and all(m.dim() == 4 for m in maps)


def test_survival_follows_eq_2_over_timms_depths():
    # test_resnet: four blocks, the first never dropped; test_vit: attention and MLP branches of a
    # block share its depth.
    resnet = build_model("timm/test_resnet", 10, 3, p_last=0.6)
    assert [d.survival for d in drop_paths(resnet)] == pytest.approx(survival_probabilities(4, 0.6)[1:])
    vit = build_model("timm/test_vit", 10, 3, p_last=0.5, image_size=32)
    depths = survival_probabilities(6, 0.5)[1:]
    assert [d.survival for d in drop_paths(vit)] == pytest.approx([p for p in depths for _ in range(2)])
    assert drop_paths(build_model("timm/test_resnet", 10, 3, p_last=1.0)) == []


def test_a_stochastic_block_trains_at_the_inverted_scale_as_timms_own_drop_path():
    model = build_model("timm/test_resnet", 10, 3, p_last=0.5)
    drop = drop_paths(model)[-1]
    drop.train()
    branch = torch.ones(64, 4, 2, 2)
    torch.manual_seed(0)
    out = drop(branch)
    assert set(out.unique().tolist()) <= {0.0, 2.0}  # kept rows divided by survival 0.5, as scale_by_keep does
    drop.eval()
    assert torch.equal(drop(branch), branch)


def test_the_built_model_has_the_profiles_classes_and_channels():
    model = build_model("timm/test_resnet", 7, 1).eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_an_unknown_name_gets_the_closest_timm_names():
    with pytest.raises(ValueError, match="closest: .*timm/mobilenetv3_large_100"):
        architecture("timm/mobilenetv3_large")


def test_a_network_without_residual_blocks_is_a_student_or_plain_teacher_only():
    from stages.common.profile import Profile

    Profile.model_validate({"teacher": {"arch": "timm/test_efficientnet", "p_last": 1.0}, "distill": {"p_last": 1.0},
                            "student": {"arch": "timm/test_efficientnet"}})
    for profile in ({"teacher": {"arch": "timm/test_efficientnet", "p_last": 0.5}},
                    {"teacher": {"arch": "timm/test_efficientnet", "p_last": 1.0}, "distill": {"p_last": 0.5}},
                    {"methods": ["dml"], "mutual": {"peers": ["timm/test_efficientnet", "resnet8"]}}):
        with pytest.raises(ValueError, match="has no stochastic blocks"):
            Profile.model_validate(profile)


def test_timm_networks_get_no_skips_added():
    from stages.common.profile import Profile

    with pytest.raises(ValueError, match="keeps timm's own blocks"):
        Profile.model_validate({"student": {"arch": "timm/test_efficientnet", "skips": True}})


def test_masks_drawn_on_the_device_drop_token_branches_per_image_and_match_skipping():
    """Captured steps drop by masks; sample mode draws a coin per image, on a ViT's (images, tokens,
    channels) branches as on feature maps."""
    from stages.nets.stochastic_depth import use_drop_execution

    torch.manual_seed(0)
    model = build_model("timm/test_vit", 10, 3, p_last=0.5, drop_mode="sample", image_size=32)
    x = torch.randn(6, 3, 32, 32)
    keep = [True, False] * (len(drop_paths(model)) // 2)
    outputs = {}
    for execution in ("skip", "mask"):
        use_drop_execution(model, execution)
        with fixed_subnetwork(model, keep):
            outputs[execution] = model(x)
    torch.testing.assert_close(outputs["mask"], outputs["skip"])
    drop = drop_paths(model)[-1]
    drop.train()
    branch = torch.ones(64, 5, 8)
    torch.manual_seed(1)
    out = drop(branch)
    assert set(out[:, 0, 0].tolist()) == {0.0, 2.0}  # images differ
    assert torch.equal(out.amin((1, 2)), out.amax((1, 2)))  # the tokens of one image share its coin


def test_attention_transfer_and_mutual_learning_take_timm_networks(tmp_path):
    from stages.common.config import (Augmentation, DataConfig, DistillConfig, MutualConfig, StudentConfig,
                                      TrainingConfig)
    from stages.context import StageContext, StageInput
    from stages.distill import train_student
    from stages.mutual import train_peers
    from stages.training.data import load_dataset

    data_cfg = DataConfig(dataset="digits", input_size=32, train_images=64, test_images=32,
                          augmentation=Augmentation(crop_padding=1, horizontal_flip=False))
    data = load_dataset(data_cfg)
    torch.manual_seed(0)
    spec = ModelSpec("timm/test_resnet", 10, 1, 32, 1.0, "batch", data.mean, data.std)
    (tmp_path / "teacher").mkdir()
    save_model(spec.build(), spec, tmp_path / "teacher")
    recipe = TrainingConfig(epochs=1, batch_size=32)
    params = {"seed": 0, "data": data_cfg, "student": StudentConfig(arch="timm/test_byobnet", training=recipe),
              "distill": DistillConfig(transfer="at", teacher_samples=2, p_last=0.5)}
    (tmp_path / "at").mkdir()
    metrics = train_student(StageContext(params=params, inputs={"teacher": StageInput(tmp_path / "teacher", {})},
                                         output=tmp_path / "at", variant="stochastic_at"))
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    (tmp_path / "dml").mkdir()
    mutual = MutualConfig(peers=("timm/test_vit", "timm/test_convnext"), p_last=0.5, training=recipe)
    metrics = train_peers(StageContext(params={"seed": 0, "data": data_cfg, "mutual": mutual}, inputs={},
                                       output=tmp_path / "dml", variant="proposed"))
    assert len(metrics["members"]) == 2
