"""madmark: autophagy-aware watermarking — the application layer (CLI, data sources, run directories)."""
import os

# OpenMP threads sleep between parallel regions instead of spinning, unless the user chose
# (OMP_WAIT_POLICY=ACTIVE): on a shared machine spinning threads steal the cores the other
# threads of the same job wait for. Measured on 2 busy cores: eval.prdc on 10k x 64, 2.0x -> 7.7x
# the prdc package; learned-watermark embed+detect, 1.6-2.0x -> 2.8-3.3x DwtDct. Read once by the
# OpenMP runtime, so it holds when madmark is imported before torch (the madmark command).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from madcore.errors import MadmarkError  # noqa: E402

__all__ = ["MadmarkError", "__version__"]
__version__ = "0.1.0"
