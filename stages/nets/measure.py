"""Model size figures: parameters and multiply-accumulates of one forward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per image: MACs, weights and activation elements in and out of every conv and linear layer."""
    costs: list[dict[str, Any]] = []

    def record(name: str):
        def hook(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
                macs = output[0].numel() * kernel
            else:  # per token, for a transformer's (tokens, features) rows
                macs = output[0].numel() * module.in_features
            costs.append({"layer": name, "kind": type(module).__name__, "macs": int(macs),
                          "weights": int(module.weight.numel()), "inputs": int(inputs[0][0].numel()),
                          "outputs": int(output[0].numel())})
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return costs


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of convolutions and linear layers for one image (the layers that dominate the cost)."""
    return sum(layer["macs"] for layer in layer_costs(model, input_shape))
