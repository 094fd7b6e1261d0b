"""The report's figures: accuracy against latency, the training curves, and the teacher's entropy with
one block dropped (the paper's Fig. 3)."""

from __future__ import annotations

from typing import Any

from stages.reporting.names import model_label, precision_label


def entropy_plot_name(teacher: str) -> str:
    return f"{teacher}_entropy.png"


def plot(report: dict[str, Any], path) -> None:
    """Accuracy against p50 latency at the largest batch: colour is the model, marker the artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    batch = report["plot_batch_size"]
    artifacts = sorted({(r["runtime"], precision_label(r)) for r in report["rows"]})
    markers = {a: "osD^vP*Xhd<>"[i % 12] for i, a in enumerate(artifacts)}
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, model in enumerate(report["models"]):
        for r in (r for r in report["rows"] if r["model"] == model and r["batch_size"] == batch):
            ax.scatter(r["latency_p50_ms"], 100 * r["test_accuracy"], color=f"C{i}", s=60,
                       marker=markers[(r["runtime"], precision_label(r))], edgecolors="black", linewidths=0.5)
    model_handles = [Line2D([], [], color=f"C{i}", marker="o", linestyle="", label=model_label(m))
                     for i, m in enumerate(report["models"])]
    artifact_handles = [Line2D([], [], color="grey", marker=markers[a], linestyle="", label=f"{a[0]} {a[1]}")
                        for a in artifacts]
    first = ax.legend(handles=model_handles, title="model", fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))
    ax.add_artist(first)
    ax.legend(handles=artifact_handles, title="artifact", fontsize=8, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    ax.set_xlabel(f"p50 latency per batch of {batch} (ms) on {report['machine']['cpu']}")
    ax.set_ylabel("top-1 accuracy on the test split (%)")
    ax.set_title(f"{report['profile']}: accuracy versus latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


CURVES_PLOT = "training_curves.png"


def plot_curves(report: dict[str, Any], path) -> None:
    """One panel per model: training loss per epoch (left axis), train and test top-1 (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {m: h for m, h in report["curves"].items() if h}
    columns = min(3, len(curves))
    rows = -(-len(curves) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, (model, history) in zip(axes.flat, curves.items()):
        epochs = [e["epoch"] for e in history]
        ax.plot(epochs, [e["loss"] for e in history], color="C0", marker="o", markersize=3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{model_label(model)} ({report['archs'][model]})", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("training loss", color="C0", fontsize=8)
        accuracy_axis = ax.twinx()
        accuracy_axis.plot(epochs, [100 * e["train_accuracy"] for e in history], color="C1", label="train",
                           marker="o", markersize=3)
        if all("test_accuracy" in e for e in history):
            accuracy_axis.plot(epochs, [100 * e["test_accuracy"] for e in history], color="C2", label="test",
                               marker="o", markersize=3)
        accuracy_axis.set_ylabel("top-1 %", fontsize=8)
        accuracy_axis.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_teacher_entropy(teacher: str, analysis: dict[str, Any], path, name: str) -> None:
    """The paper's Fig. 3: the teacher's output entropy (and accuracy) with each single block dropped;
    ``name`` is what the report calls that teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = analysis["single_block_dropped"]
    x = [b["stochastic_block"] for b in blocks]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x, [b["entropy"] for b in blocks], color="C0", alpha=0.8, label="one block removed")
    ax.axhline(analysis["deterministic"]["entropy"], color="black", linestyle="--", label="no block removed")
    if "samples" in analysis:
        ax.axhline(analysis["samples"]["entropy_per_sample"], color="C3", linestyle=":",
                   label=f"sampled sub-networks (mean of {analysis['samples']['k']})")
    ax.set_xlabel("stochastic block, by depth")
    ax.set_ylabel("mean entropy of the teacher's outputs (nats)")
    accuracy_axis = ax.twinx()
    accuracy_axis.plot(x, [100 * b["accuracy"] for b in blocks], color="C1", marker="o", label="top-1 %")
    accuracy_axis.set_ylabel("top-1 accuracy (%)", color="C1")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{name}: output entropy with a single block removed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
