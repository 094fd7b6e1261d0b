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
from typing import Any

TRAINING_STAGES = ("teacher", "distill", "mutual")


def launched() -> bool:
    """True inside a process that torchrun started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(argv: list[str], nproc_per_node: int, nnodes: str, node_rank: int, master_addr: str,
             master_port: int) -> int:
    """Run ``python -m pipeline argv`` under torchrun; returns its exit code."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
               f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
               f"--master-port={master_port}", "-m", "pipeline", *argv]
    return subprocess.call(command)


def initialize() -> None:
    """Join the process group torchrun set up (NCCL between GPUs, gloo on CPUs)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from datetime import timedelta

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # The other ranks wait at a barrier while rank 0 alone exports, quantizes and benchmarks.
    dist.init_process_group(backend, timeout=timedelta(hours=12))


def active() -> bool:
    if not launched():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return int(os.environ.get("RANK", 0)) if active() else 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1)) if active() else 1


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


def data_parallel(model, device):
    """``model`` wrapped for DistributedDataParallel. On GPUs BatchNorm is synchronized across ranks,
    so its statistics cover the global batch as in one process; PyTorch synchronizes it only on GPUs,
    so on CPUs (gloo) each rank normalizes with its own slice's statistics. Blocks a sub-network
    drops get no gradient in that step: DDP is told to expect unused parameters where blocks drop."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from stages.nets.stochastic_depth import drop_paths

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=bool(drop_paths(model)))


def all_reduce_sum(tensor):
    if active():
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def device_for_rank(requested: str) -> str:
    """Each rank's own GPU; CPUs are shared."""
    if active() and requested in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{os.environ['LOCAL_RANK']}"
    return requested
