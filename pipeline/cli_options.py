"""What every command shares: its options and arguments, where the artifacts live, and how a bad
input ends (one line, exit code 2)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from pipeline.registry import STAGE_ORDER, STAGES
from stages.common.errors import PipelineError, exit_code_of, stop_signals_raise, stop_words

ProfileArg = typer.Argument(None, metavar="PROFILE", show_default=False,
                            help="Profile YAML (default: profiles/quickstart.yaml).")
SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE",
                      help="Override a profile key, e.g. --set distill.temperature=2 (repeatable).")
DeviceOpt = typer.Option("auto", "--device", metavar="auto|cpu|cuda",
                         help="Training device: auto (CUDA when present), cpu or cuda.")
ArtifactsOpt = typer.Option(None, "--artifacts", metavar="DIR", show_default=False,
                            help="Artifact folder (default: $STOCHKD_ARTIFACTS or ./artifacts).")
NprocOpt = typer.Option(1, "--nproc-per-node", min=1, help="Train on this many processes per node (one per GPU) "
                        "under torchrun, with DistributedDataParallel.")
NnodesOpt = typer.Option("1", "--nnodes", help="Nodes taking part (torchrun's --nnodes); the artifacts folder "
                         "must be shared between them.")
NodeRankOpt = typer.Option(0, "--node-rank", min=0, help="This node's rank (torchrun's --node-rank).")
MasterAddrOpt = typer.Option("127.0.0.1", "--master-addr", help="Address of node 0 (torchrun's --master-addr).")
MasterPortOpt = typer.Option(29500, "--master-port", min=1, max=65535,
                             help="Free port on node 0 (torchrun's --master-port).")
CheckpointOpt = typer.Option(60.0, "--checkpoint-every", metavar="SECONDS", min=0.0,
                             help="Save training progress this often (and on Ctrl-C, SIGTERM or SIGHUP); a killed "
                                  "run started again resumes from the last save.")
JobsOpt = typer.Option(1, "--jobs", "-j", min=1, help="Run up to this many tasks whose inputs are ready at the same "
                       "time, each in its own process (one GPU each where there are several; the CPU's cores "
                       "split between them). Benchmarks still run alone.")
MpsOpt = typer.Option(False, "--mps", help="With --jobs on one GPU: run the tasks under a private NVIDIA MPS daemon, "
                      "so their kernels overlap instead of taking turns (needs nvidia-cuda-mps-control).")
LockstepOpt = typer.Option(False, "--lockstep", help="Train the models of a stage that share a recipe, data and seed "
                           "(the teachers of both readings; the students alone, with KD and with stochastic KD) in "
                           "one process, in lockstep: each batch is made once and steps every one of them. Each "
                           "keeps its own artifact and checkpoint; on a CPU the same weights as one at a time.")

ClusterOpt = typer.Option(None, "--cluster", metavar="ADDRESS", show_default=False,
                          help="Run the tasks on a Ray cluster: its address (ray://HEAD:10001, or HEAD:6379), auto "
                               "for the cluster this machine belongs to, or local for a private one on this machine "
                               "(needs the ray extra).")


def artifacts_root(option: Optional[Path]) -> Path:
    root = option or Path(os.environ.get("STOCHKD_ARTIFACTS") or "artifacts")  # set but empty: the default
    # Said at once: otherwise a run measures this machine's speed first and then fails to write.
    if root.exists() and not root.is_dir():
        named = ("--artifacts" if option else "$STOCHKD_ARTIFACTS" if os.environ.get("STOCHKD_ARTIFACTS")
                 else "artifacts")
        raise PipelineError(f"{named} {root}: a file, not a folder; pass --artifacts with a folder (one that is "
                            f"missing is created)")
    return root


def check_stage(option: str, value: Optional[str]) -> Optional[str]:
    if value is not None and value not in STAGES:
        raise PipelineError(f"{option} {value!r}: unknown stage; allowed: {', '.join(STAGE_ORDER)}")
    return value


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input ends in one line and exit code 2; Ctrl-C (130), SIGTERM (143) and SIGHUP (129) say how
    to go on."""
    try:
        with stop_signals_raise():
            yield
    except PipelineError as exc:
        from stages.common import distributed

        # Under torchrun each rank that fails says so; rank 0's line reads as it would in one process.
        rank = distributed.rank()  # 0 outside torchrun
        distributed.error_line(f"error (rank {rank}): {exc}" if rank else f"error: {exc}")
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:
        from stages.common import distributed
        from stages.training.resume import TrainingInterrupted

        # Under torchrun, rank 0 says where training stopped, and the command that launched the ranks
        # says the rest once.
        if isinstance(exc, TrainingInterrupted):
            if distributed.rank() == 0:
                print(f"interrupted: {exc}", file=sys.stderr)
        elif not distributed.launched():
            print(f"{stop_words(exc)}: finished stages are cached, no half-written artifact is kept, and training "
                  "resumes from its last checkpoint; rerun the same command to continue", file=sys.stderr)
        raise SystemExit(exit_code_of(exc)) from None


