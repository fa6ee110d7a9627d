"""madmark: autophagy-aware watermarking — the application layer (CLI, data sources, run directories)."""
from madcore.errors import MadmarkError

__all__ = ["MadmarkError", "__version__"]
__version__ = "0.1.0"
