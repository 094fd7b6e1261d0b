"""Terminal output: progress bars for long work, one line per finished stage, the report table."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Any]:
    if not console.is_terminal:
        # In a log file, a line per status update (one per epoch) instead of a redrawn bar.
        def log_line(steps: int = 1, description: str | None = None) -> None:
            if description:
                console.print(f"  {description}")

        yield log_line
        return
    with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(steps: int = 1, description: str | None = None) -> None:
            bar.update(task, advance=steps, **({"description": description} if description else {}))

        yield advance


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def stage_started(task) -> None:
    console.print(f"[bold]▶ {task.id}[/] [dim]{task.key[:12]}[/]")


def stage_finished(outcome) -> None:
    if outcome.ran:
        console.print(f"[green]✓[/] {outcome.task.id} · {outcome.headline} · {_duration(outcome.wall_s)}")
    else:
        console.print(f"[dim]· {outcome.task.id} · cached · {outcome.headline}[/]")


class TaskLines:
    """Progress of tasks running side by side (``--jobs``): a line whenever a task's status changes."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}

    def __call__(self, states) -> None:
        for task_id, state in states:
            text = state.get("description")
            if text and self.last.get(task_id) != text:
                self.last[task_id] = text
                console.print(f"  [dim]{task_id}[/] {text}")


def warn(message: str) -> None:
    errors.print(f"[yellow]warning:[/] {message}")


RUNTIME_NAMES = {"pytorch": "torch", "onnxruntime": "ort"}


def report_table(report: dict[str, Any]) -> Table:
    """Every deployed artifact at the largest benchmarked batch: accuracy, latency, throughput."""
    batch = report["plot_batch_size"]
    table = Table(title=f"{report['profile']} · batch {batch} · {report['machine']['cpu']}, "
                        f"{report['threads']} threads")
    for column, justify in (("model", "left"), ("network", "left"), ("runtime", "left"), ("computes in", "left"),
                            ("top-1 %", "right"), ("p50 ms", "right"), ("images/s", "right")):
        table.add_column(column, justify=justify)
    labels = report.get("labels", {})
    previous = None
    for row in report["rows"]:
        if row["batch_size"] != batch:
            continue
        artifact = f"{RUNTIME_NAMES.get(row['runtime'], row['runtime'])} {row['precision']}"
        first = row["model"] != previous
        table.add_row(labels.get(row["model"], row["model"]) if first else "", row["arch"] if first else "",
                      artifact, row["compute_precision"], f"{100 * row['test_accuracy']:.2f}", f"{row['latency_p50_ms']:.2f}",
                      f"{row['throughput_images_per_s']:.0f}", end_section=False)
        previous = row["model"]
    return table
