"""Stage: what the stochastic teacher teaches with (the paper's Fig. 3).

The teacher is rebuilt as it teaches (its teaching p_n and kept scale, see stages.nets.teaching). For
each block that can drop: the deterministic network with exactly that block removed, its mean
softmax entropy and its accuracy. Then K sampled sub-networks against the deterministic teacher:
the mean entropy of each sample's outputs, and the entropy of their average (what an ensemble of
the K samples would teach).
"""

from __future__ import annotations

import torch

from stages.nets.checkpoint import read_spec
from stages.context import StageContext
from stages.training.data import balanced_subset, load_dataset
from stages.nets.stochastic_depth import drop_paths, sample_logits, without_block
from stages.nets.teaching import teaching_survival, teaching_teacher
from stages.training.loop import select_device


def mean_entropy(logits: torch.Tensor) -> float:
    """Mean over images of the softmax entropy (nats) of (..., classes) logits."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def analyze_teacher(ctx: StageContext) -> dict:
    params = ctx.params
    data = load_dataset(params["data"])
    device = select_device(ctx.device)
    chosen = balanced_subset(data.y_test, params["images"], data.num_classes)
    images = torch.from_numpy(data.normalized(data.x_test[chosen])).to(device)
    labels = torch.from_numpy(data.y_test[chosen]).to(device)
    folder = ctx.inputs["teacher"].path
    teaching = teaching_survival(read_spec(folder), params["p_last"])
    model = teaching_teacher(folder, teaching, params["drop_mode"], params["kept_scale"], device)
    batches = images.split(500)

    def evaluate() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model(batch) for batch in batches])

    deterministic = evaluate()
    drops = drop_paths(model)  # in depth order
    per_block = []
    with ctx.progress("teacher analysis", len(drops) + 1) as advance:
        for i, drop in enumerate(drops):
            with without_block(model, i):
                logits = evaluate()
            per_block.append({"stochastic_block": i + 1, "survival": drop.survival, "entropy": mean_entropy(logits),
                              "accuracy": top1(logits, labels)})
            advance(1)
        torch.manual_seed(params["seed"])
        k = params["samples"]
        sampled = torch.cat([sample_logits(model, batch, k) for batch in batches], dim=1) if drops else None
        advance(1)
    result = {
        "images": len(chosen),
        "teaching_p_last": teaching,
        "kept_scale": params["kept_scale"] or "trained",  # null where both scales are the same
        "deterministic": {"entropy": mean_entropy(deterministic), "accuracy": top1(deterministic, labels)},
        "single_block_dropped": per_block,
    }
    if sampled is not None:
        ensemble = sampled.softmax(-1).mean(0).log()
        result["samples"] = {
            "k": k,
            "entropy_per_sample": mean_entropy(sampled),
            "accuracy_per_sample": float(sum(top1(s, labels) for s in sampled) / k),
            "entropy_of_average": mean_entropy(ensemble),
            "accuracy_of_average": top1(ensemble, labels),
        }
    return result
