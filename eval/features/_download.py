"""Shared pieces of the pretrained extractors: where torch.hub keeps files, and a bounded network
wait so an offline machine whose DNS or proxy hangs fails instead of blocking forever."""
from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError

import torch

__all__ = ["NETWORK_ERRORS", "hub_checkpoint_dir", "network_timeout"]

#: what torch.hub raises when it cannot reach the network (URLError/HTTPError are OSErrors;
#: torch.hub.load raises RuntimeError "no internet connection ..." for uncached repos)
NETWORK_ERRORS = (URLError, OSError, RuntimeError, TimeoutError, ValueError)


def hub_checkpoint_dir() -> Path:
    """``<torch.hub.get_dir()>/checkpoints``: where torch.hub caches downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


@contextmanager
def network_timeout(seconds: float):
    """Limit every socket wait (connect, read) to ``seconds`` while the block runs."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)
