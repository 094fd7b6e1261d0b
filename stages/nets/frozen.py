"""A trained network frozen for teaching: it only ever runs with BatchNorm in eval mode and no
gradients, so each BatchNorm that follows a convolution is an affine map that can be folded into that
convolution's weights and bias (one kernel fewer per layer, and no normalization pass over the
feature map), and on a GPU the weights can be cast to bfloat16 once instead of at every step.

Which BatchNorm follows which convolution is found by running the network once with hooks (any
network, timm's too, without knowing its code); the folded network is then checked against the
original on the same probe, and a network whose outputs moved is kept unfolded.
"""

from __future__ import annotations

import torch
from torch import nn

# How far a folded network's output may move, relative to the largest output: rounding of the folded
# weights (float32), orders of magnitude below what a wrongly folded layer changes.
FOLD_TOLERANCE = 1e-4


def fold_batchnorm(model: nn.Module, probe: torch.Tensor) -> int:
    """Fold every ``nn.BatchNorm2d`` fed directly by an ``nn.Conv2d`` into it (the BatchNorm becomes
    an identity), checked on ``probe``; returns the number folded (0 where the check failed and
    ``model`` was put back as it was). ``model`` is put in eval mode."""
    model.eval()
    places = _places(model)
    pairs, before = _conv_batchnorm_pairs(model, probe, places)
    if not pairs:
        return 0
    replaced = []
    for conv, norm in pairs:
        folded = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
        for old, new in ((conv, folded), (norm, nn.Identity())):
            parent, name = places[id(old)]
            setattr(parent, name, new)
            replaced.append((parent, name, old))
    with torch.no_grad():
        after = model(probe).float()
    before = before.float()
    scale = float(before.abs().max().clamp(min=1.0))
    if not torch.allclose(after, before, rtol=FOLD_TOLERANCE, atol=FOLD_TOLERANCE * scale):
        for parent, name, old in reversed(replaced):
            setattr(parent, name, old)
        return 0
    return len(pairs)


def cast_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Convolution and linear weights (and biases) in ``dtype``: what autocast would cast them to at
    every call, done once. Other parameters and buffers (BatchNorm, input normalization) stay as they
    are."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.to(dtype)
    return model


def _conv_batchnorm_pairs(model: nn.Module, probe: torch.Tensor, places: dict[int, tuple[nn.Module, str]]
                          ) -> tuple[list[tuple[nn.Conv2d, nn.BatchNorm2d]], torch.Tensor]:
    """(convolution, BatchNorm) pairs where the BatchNorm's input is the convolution's output, each
    module called once in a forward pass and found at one place in ``model`` (``places``); and the
    output of that pass, the unfolded network's on ``probe``."""
    produced: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    calls: dict[int, int] = {}
    pairs = []

    def after_conv(module, args, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        produced[id(output)] = (module, output)  # the tensor kept alive, so its id is not reused

    def before_norm(module, args):
        calls[id(module)] = calls.get(id(module), 0) + 1
        source = produced.get(id(args[0]))
        if source is not None and source[1] is args[0]:
            pairs.append((source[0], module))

    # Exact types: a subclass may do more in its forward (timm's BatchNormAct2d applies its activation).
    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if type(m) is nn.Conv2d]
    hooks += [m.register_forward_pre_hook(before_norm) for m in model.modules() if type(m) is nn.BatchNorm2d]
    try:
        with torch.no_grad():
            output = model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return [(conv, norm) for conv, norm in pairs
            if calls[id(conv)] == calls[id(norm)] == 1 and id(conv) in places and id(norm) in places
            and norm.track_running_stats and norm.running_mean is not None], output


def _places(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """Each submodule's parent and attribute name, for the modules found at exactly one place."""
    places: dict[int, tuple[nn.Module, str]] = {}
    shared: set[int] = set()
    for parent in model.modules():
        for name, child in parent.named_children():
            if id(child) in places:
                shared.add(id(child))
            places[id(child)] = (parent, name)
    return {key: place for key, place in places.items() if key not in shared}
