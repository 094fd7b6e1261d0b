"""Stage: what the stochastic teacher teaches with (the paper's Fig. 3).

The teacher is rebuilt as it teaches (its teaching p_n and kept scale, see stages.nets.teaching). For
each block that can drop: the deterministic network with exactly that block removed, its mean
softmax entropy and its accuracy. Then K sampled sub-networks against the deterministic teacher:
the mean entropy of each sample's outputs, and the entropy of their average (what an ensemble of
the K samples would teach).
"""

from __future__ import annotations

import math

import torch

from stages.nets.checkpoint import read_spec
from stages.context import StageContext
from stages.training.data import balanced_subset, load_dataset
from stages.nets.stochastic_depth import drop_paths, sample_logits, without_block
from stages.nets.teaching import teaching_survival, teaching_teacher
from stages.training.loop import select_device


def mean_entropy(logits: torch.Tensor) -> float:
    """Mean over images of the softmax entropy (nats) of (..., classes) logits.

    entr takes 0·log 0 as 0, so a class whose probability underflows (a saturated teacher, or -inf
    log-probabilities from an average) adds nothing instead of turning the mean into nan.
    """
    return float(torch.special.entr(logits.float().softmax(-1)).sum(-1).mean())


def log_average(sampled: torch.Tensor) -> torch.Tensor:
    """Log of the mean softmax over the first dimension of (samples, ..., classes) logits.

    Averaged in log space so it stays finite where every sample gives a class a probability that
    underflows, as a saturated teacher does.
    """
    return torch.logsumexp(sampled.float().log_softmax(-1), dim=0) - math.log(sampled.shape[0])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def analyze_teacher(ctx: StageContext) -> dict:
    params = ctx.params
    folder = ctx.inputs["teacher"].path
    spec = read_spec(folder)
    data = load_dataset(params["data"]).with_normalization(spec.mean, spec.std)
    device = select_device(ctx.device)
    chosen = balanced_subset(data.y_test, params["images"], data.num_classes)
    images = torch.from_numpy(data.normalized(data.x_test[chosen])).to(device)
    labels = torch.from_numpy(data.y_test[chosen]).to(device)
    teaching = teaching_survival(spec, params["p_last"])
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
        ensemble = log_average(sampled)
        result["samples"] = {
            "k": k,
            "entropy_per_sample": mean_entropy(sampled),
            "accuracy_per_sample": float(sum(top1(s, labels) for s in sampled) / k),
            "entropy_of_average": mean_entropy(ensemble),
            "accuracy_of_average": top1(ensemble, labels),
        }
    return result
