"""Run one function on two gloo DDP ranks spawned on the CPU, for the models' "two ranks fit
like one process" tests (the GPT and the DDPM): each rank sets torchrun's environment, takes one
thread and joins a gloo group on a free local port; rank 0's result comes back through a file.

    two = on_two_gloo_ranks(_fit, tmp_path)       # _fit: a module-level function -> tensors
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch


def _rank(rank: int, port: int, fn: Callable[[], Any], out: str) -> None:
    from madcore import dist

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init("gloo")
    try:
        result = fn()
        if dist.is_main():
            torch.save(result, out)
    finally:
        dist.shutdown()


def on_two_gloo_ranks(fn: Callable[[], Any], folder: Path) -> Any:
    """``fn()`` run on 2 spawned ranks; rank 0's result (tensors, loaded with weights_only)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(Path(folder) / "rank0.pt")
    mp.spawn(_rank, args=(port, fn, out), nprocs=2)
    return torch.load(out, weights_only=True)
