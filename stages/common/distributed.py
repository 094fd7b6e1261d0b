"""Training on several processes (GPUs or nodes) through PyTorch's own launcher, torchrun.

``--nproc-per-node N`` relaunches the same command under ``torch.distributed.run``. Every rank plans
the same tasks; rank 0 alone decides what is cached, writes artifacts and runs the stages that do
not train. Training stages run on every rank with DistributedDataParallel, each rank on its slice of
every global batch, so the global batch and the seed are those of a single-process run. Ranks on
other nodes read what rank 0 wrote: the artifacts folder must be shared between nodes.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TRAINING_STAGES = ("teacher", "distill", "mutual")


def launched() -> bool:
    """True inside a process that torchrun started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(argv: list[str], nproc_per_node: int, nnodes: str, node_rank: int, master_addr: str,
             master_port: int) -> int:
    """Run ``python -m pipeline argv`` under torchrun; returns its exit code.

    A Ctrl-C, SIGTERM or SIGHUP here is passed on to torchrun once, and this process waits for it:
    torchrun passes it to every rank, the ranks stop together between two steps with their checkpoint
    saved, and torchrun kills any rank still running after ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` (30) seconds.
    torchrun gets a session of its own so that a terminal's Ctrl-C reaches it only from here: a
    second copy of the signal during its shutdown would end torchrun with its ranks still running.
    Killing torchrun, as ``subprocess.call`` does on Ctrl-C, would leave them training on their own.
    The interrupt is raised again once torchrun has ended."""
    import signal
    import subprocess
    import time

    command = [sys.executable, "-m", "stages.common.torchrun", f"--nproc-per-node={nproc_per_node}",
               f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
               f"--master-port={master_port}", "-m", "pipeline", *argv]
    launcher = subprocess.Popen(command, start_new_session=True)
    interrupt: KeyboardInterrupt | None = None
    while True:
        try:
            # Polled, not Popen.wait(): on a KeyboardInterrupt (Terminated is one) wait() first gives
            # the child 0.25 s to end, and torchrun has not been told yet.
            code = launcher.poll()
            if code is not None:
                break
            time.sleep(0.05)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM or SIGHUP raised as Terminated
            if interrupt is None:
                interrupt = exc
                launcher.send_signal(getattr(exc, "signum", signal.SIGINT))
    if interrupt is not None:
        raise interrupt
    return code


def backend_for(requested: str, nproc_per_node: int) -> str:
    """The process group's backend for training on ``requested`` (``--device``) with this many
    processes per node: NCCL where each process takes a GPU of its own, gloo on CPUs. Raises
    PipelineError where that cannot work, before any process starts."""
    import torch

    from stages.common.errors import PipelineError, no_cuda_device

    if requested.startswith("cuda:") and nproc_per_node > 1:
        raise PipelineError(f"--device {requested} with --nproc-per-node {nproc_per_node}: each process takes a GPU "
                            f"of its own (local rank N uses cuda:N); use --device cuda")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return "gloo"
    gpus = torch.cuda.device_count()
    if requested == "cuda" and gpus == 0:
        raise no_cuda_device()
    if nproc_per_node > gpus:
        raise PipelineError(f"--nproc-per-node {nproc_per_node}: this node has {gpus} visible GPU"
                            f"{'s' if gpus != 1 else ''} and each process takes one; use --nproc-per-node {gpus}, "
                            f"or --device cpu to train on CPU processes")
    return "nccl"


def initialize(requested: str = "auto") -> None:
    """Join the process group torchrun set up (NCCL between GPUs, gloo on CPUs) for training on
    ``requested`` (``--device``)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from datetime import timedelta

    backend = backend_for(requested, int(os.environ["LOCAL_WORLD_SIZE"]))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # The other ranks wait at a barrier while rank 0 alone exports, quantizes and benchmarks.
    dist.init_process_group(backend, timeout=timedelta(hours=12))


def active() -> bool:
    if not launched():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def error_line(text: str) -> None:
    """``text`` on stderr in one write: the ranks share it, and a line written in two pieces (the text,
    then its newline, as print writes to an unbuffered stream) can be cut by another rank's line."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def rank() -> int:
    return int(os.environ.get("RANK", 0)) if active() else 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1)) if active() else 1


def rank_rows(rows: int, rank: int, ranks: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a global batch of ``rows`` that ``rank`` of ``ranks`` computes:
    consecutive slices whose sizes differ by at most one (``torch.tensor_split``'s), none empty while
    ``rows >= ranks``."""
    size, extra = divmod(rows, ranks)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


@contextmanager
def crash_logged(logs: Path) -> Iterator[None]:
    """Under torchrun, a rank's crash (neither bad input nor a stop) ends in one line on standard error
    and exit code 1, with its traceback in ``logs/rank-N.log``. Otherwise every rank prints its
    traceback into the same terminal, interleaved; and when a rank dies outright (the out-of-memory
    killer), the others' collectives fail in its wake, and their tracebacks would come before the line
    that names the rank that died."""
    if not launched():
        yield
        return
    from stages.common.errors import PipelineError, first_line

    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported in one line, whole in the log
        import traceback

        number = int(os.environ.get("RANK", 0))
        log = logs / f"rank-{number}.log"
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            where = f" (its traceback is in {log})"
        except OSError:
            traceback.print_exc()
            where = ""
        error_line(f"error (rank {number}): {type(exc).__name__}: {first_line(exc)[:300]}{where}")
        raise SystemExit(1) from None


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def take_rank_0_buffers(model) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) in ``model`` on every rank. On CPUs each rank's
    statistics follow its own slices; rank 0's model is the one that is saved. DDP copies rank 0's
    buffers to the others before every training step anyway."""
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


class SliceShare:
    """How much this rank's gradient weighs when DistributedDataParallel averages the ranks'.

    Each rank's gradient is the mean over its own slice of the batch, and DDP averages them. Where
    the slices differ in size (a batch of 128 on 3 GPUs: 43, 43 and 42 images), that average weighs
    the images of a smaller slice more than one process does. Multiplied by ``rows * ranks / total``
    first, the ranks' gradients average to the mean over the whole batch, as in one process (for a
    loss that is a mean over images, as every loss here is)."""

    def __init__(self) -> None:
        self.factor = 1.0

    def set(self, rows: int, total: int, ranks: int) -> None:
        self.factor = rows * ranks / total


def _share_weighted_allreduce(share: SliceShare, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    if share.factor != 1.0:
        bucket.buffer().mul_(share.factor)
    return allreduce_hook(None, bucket)  # DDP's own average: divide by the ranks, then sum


def data_parallel(model, device, share: SliceShare | None = None):
    """``model`` wrapped for DistributedDataParallel. On GPUs BatchNorm is synchronized across ranks,
    so its statistics cover the global batch as in one process; PyTorch synchronizes it only on GPUs,
    so on CPUs (gloo) each rank normalizes with its own slice's statistics. Blocks a sub-network
    skips get no gradient in that step: DDP is told to expect unused parameters where blocks may be
    skipped (masked blocks are computed, so their parameters are always used).
    With ``share``, each rank's gradient is weighed by it before the average (see SliceShare)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from stages.nets.stochastic_depth import drop_paths

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device] if device.type == "cuda" else None
    skipping = any(drop.execution == "skip" for drop in drop_paths(model))
    wrapped = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=skipping)
    if share is not None:
        wrapped.register_comm_hook(share, _share_weighted_allreduce)
    return wrapped


def agree(signum: int, save: bool) -> tuple[int, bool]:
    """Every rank's view combined, so that all stop or save at the same step: the highest signal
    any rank was sent (0 for none), and whether any rank asks for a checkpoint. Through a CPU (gloo)
    group, so a GPU run does not wait for its device here."""
    import torch
    import torch.distributed as dist

    flags = torch.tensor([signum, int(save)])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=_cpu_group())
    return int(flags[0]), bool(flags[1])


def gather(values: list[float]) -> list[list[float]]:
    """Each rank's ``values`` (the same length on every rank), in rank order, on every rank."""
    import torch
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.float64)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine, group=_cpu_group())
    return [t.tolist() for t in every]


_CPU_GROUP = None


def _cpu_group():
    """The default group where it is gloo already, else a gloo group over the same ranks. Made on
    first use, which every rank reaches at the same step of the same task."""
    global _CPU_GROUP
    import torch.distributed as dist

    if _CPU_GROUP is None:
        _CPU_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _CPU_GROUP


def all_reduce_sum(tensor):
    if active():
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def device_for_rank(requested: str) -> str:
    """Each rank's own GPU where the process group is NCCL's; CPUs are shared."""
    if active() and requested in ("auto", "cuda"):
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return f"cuda:{os.environ['LOCAL_RANK']}"
    return requested
