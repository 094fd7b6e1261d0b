"""The stages, declared statically: where each lives ("module:function"), its code version, whether
its result depends on the hardware, and how to summarize it in one line. Nothing here imports a
stage, so the CLI can list, plan and look up artifacts without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


def _accuracy(metrics: dict[str, Any]) -> str:
    text = ("imported, " if "imported" in metrics else "") + f"top-1 {100 * metrics['test_accuracy']:.2f}%"
    if "pretrained" in metrics:
        text = f"fine-tuned from {metrics['pretrained']['file']}, " + text
    notes = metrics.get("images", {}).get("notes", []) if isinstance(metrics.get("images"), dict) else []
    return "; ".join([text, *notes])


def _mutual(metrics: dict[str, Any]) -> str:
    return "top-1 " + ", ".join(f"{name} {100 * m['test_accuracy']:.2f}%" for name, m in metrics["members"].items())


def _analysis(metrics: dict[str, Any]) -> str:
    text = f"entropy {metrics['deterministic']['entropy']:.2f} nats"
    if "samples" in metrics:
        text += f", {metrics['samples']['entropy_per_sample']:.2f} per sampled sub-network"
    return text


def _export(metrics: dict[str, Any]) -> str:
    return f"max diff {metrics['max_abs_diff']:.1e}, top-1 agreement {100 * metrics['top1_agreement']:.2f}%"


def _quantize(metrics: dict[str, Any]) -> str:
    def one(precision: str, m: dict[str, Any]) -> str:
        kept = len(m.get("kept_in_float", []))
        return f"{precision} {100 * m['test_accuracy']:.2f}%" + (f" ({kept} layers kept in float)" if kept else "")
    return ", ".join(one(p, m) for p, m in metrics.items())


def _engine(metrics: dict[str, Any]) -> str:
    built = f"{metrics['backend']}: {', '.join(metrics['engines'])}"
    int8 = metrics["engines"].get("int8", {})
    if "requantized" in int8:
        built += (f"; the INT8 engine missed the accuracy gate and was rebuilt with "
                  f"{len(int8['requantized']['kept_in_float'])} layers in float")
    if any(str(e.get("timing_cache", "")).startswith("rejected") for e in metrics["engines"].values()):
        built += "; TensorRT rejected the stored timing cache (another device or version) and started afresh"
    if "missing" in metrics:
        return (f"{metrics['missing']}; {metrics['stand_in']} stands in. On the target: bundle, unbundle "
                f"there, run the same profile")
    return built


def _benchmark(metrics: dict[str, Any]) -> str:
    rows = metrics["rows"]
    largest = max(r["batch_size"] for r in rows)
    runtimes = {"pytorch": "torch", "onnxruntime": "ort"}
    return f"p50 ms @{largest}: " + ", ".join(
        f"{runtimes.get(r['runtime'], r['runtime'])}-{r['precision']} {r['latency_p50_ms']:.2f}"
        for r in rows if r["batch_size"] == largest)


def _report(metrics: dict[str, Any]) -> str:
    comparison = metrics["comparison"]
    if "gain_over_deterministic" not in comparison:
        return "written"
    name = comparison["transfer"].upper()
    return (f"stochastic {name} {100 * comparison['gain_over_deterministic']:+.2f} pts vs {name}, "
            f"{100 * comparison['gain_over_student_alone']:+.2f} vs student alone")


@dataclass(frozen=True)
class StageDecl:
    name: str
    function: str  # "module:function", imported only when the stage runs
    version: int  # bump when a change to the code changes what the stage produces
    hardware: str | None  # None, "platform" (engines) or "machine" (measurements): see hardware.fingerprint
    help: str
    headline: Callable[[dict[str, Any]], str]
    # "module:function" that runs several of the stage's tasks in one process, in lockstep (--lockstep),
    # and "module:function" giving what tasks must share to train that way (their params -> a dict).
    together: str | None = None
    row_key: str | None = None


STAGES: dict[str, StageDecl] = {s.name: s for s in (
    StageDecl("teacher", "stages.teacher:train_teacher", 2, None,
              "Train the teacher of each reading: with stochastic depth, or plain.", _accuracy,
              together="stages.teacher:train_teachers_together", row_key="stages.teacher:lockstep_key"),
    StageDecl("analyze", "stages.analyze:analyze_teacher", 4, None,
              "Measure the teacher's output entropy and accuracy with blocks dropped (Fig. 3).", _analysis),
    StageDecl("distill", "stages.distill:train_student", 4, None,
              "Train the student alone, with KD, and with stochastic KD (same recipe).", _accuracy,
              together="stages.distill:train_students_together", row_key="stages.distill:lockstep_key"),
    StageDecl("mutual", "stages.mutual:train_peers", 2, None,
              "Deep Mutual Learning: conventional peers, and peers with stochastic blocks.", _mutual),
    StageDecl("export", "stages.export:export_model", 3, None,
              "Export each network to ONNX and check it against PyTorch.", _export),
    StageDecl("quantize", "stages.quantize:quantize_model", 3, None,
              "Make INT8 (calibrated) and FP16 models and measure their accuracy.", _quantize),
    StageDecl("engine", "stages.engine:build_engines", 3, "platform",
              "Build the deployable engines for the target.", _engine),
    StageDecl("benchmark", "stages.benchmark:benchmark_model", 3, "machine",
              "Measure latency, throughput, memory, size and accuracy of what is deployed.", _benchmark),
    StageDecl("report", "stages.report:write_report", 10, None,
              "Write the accuracy-versus-latency report.", _report),
)}

STAGE_ORDER: tuple[str, ...] = tuple(STAGES)


def stage_index(name: str) -> int:
    try:
        return STAGE_ORDER.index(name)
    except ValueError:
        raise KeyError(name) from None
