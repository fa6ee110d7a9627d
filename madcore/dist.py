"""Distributed helpers: the same code runs under ``torchrun --nproc_per_node=N`` and plain ``python``.

EDM2-style: :func:`init` reads the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and starts a process group only when ``WORLD_SIZE > 1``; without
it every helper degrades to its single-process meaning (rank 0 of 1, reductions are identities).

    from madcore import dist
    dist.init()                                   # no-op under plain python
    model = dist.wrap(model)                      # DistributedDataParallel when world_size > 1
    rows = dist.shard(n)                          # this rank's contiguous slice of range(n)
    total = dist.all_reduce_sum(partial)          # sums over ranks (in place, returned)
    x = dist.all_gather_cat(local_x)              # concatenation over ranks, rank order
    if dist.is_main(): write(...)                 # only rank 0 writes files
    with dist.main_first(): load_or_download()    # rank 0 fills caches, then the others read them

Backend: NCCL when CUDA is available, else gloo (``MADMARK_DIST_BACKEND`` overrides).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as tdist


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def init(backend: str | None = None) -> None:
    """Start the process group from the torchrun environment when ``WORLD_SIZE > 1`` (idempotent).

    Under torchrun with CUDA, each process uses GPU ``LOCAL_RANK``.
    """
    if is_initialized() or _env_int("WORLD_SIZE", 1) <= 1:
        return
    backend = backend or os.environ.get("MADMARK_DIST_BACKEND") or (
        "nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    tdist.init_process_group(backend=backend, init_method="env://")


def shutdown() -> None:
    """Destroy the process group if one is running."""
    if is_initialized():
        tdist.destroy_process_group()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (the only rank that writes the run directory)."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, the other ranks after it (EDM2's "rank 0 downloads first"):
    for setup that may fill a cache or download (data, feature networks), which the others then
    read. The block must not call collectives. If rank 0 raises inside it, the others wait until
    torchrun stops them (it does when one process fails)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def default_device() -> torch.device:
    """This process's GPU under torchrun with CUDA (``cuda:LOCAL_RANK``), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def wrap(module: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` when running distributed, else ``module`` itself."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    params = next(module.parameters(), None)
    if params is not None and params.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [params.device.index])
    return DistributedDataParallel(module, **ddp_kwargs)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module)."""
    return getattr(module, "module", module)


def shard(n: int) -> slice:
    """This rank's contiguous part of ``range(n)``; parts differ in size by at most one and
    concatenate, in rank order, to ``range(n)``."""
    r, w = rank(), world_size()
    base, extra = divmod(int(n), w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks, in place; returns ``t`` (unchanged when not distributed)."""
    if world_size() > 1:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (N_r, ...) over ranks along dim 0, in rank order; N_r may differ."""
    w = world_size()
    if w == 1:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(w)]
    tdist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(w)]
    tdist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; small objects only)."""
    if world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
