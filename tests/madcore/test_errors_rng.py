"""madcore.errors and madcore.rng."""
import torch

from loops.errors import LoopError
from madcore.errors import MadmarkError
from madcore.rng import derive_seed, generator


def test_one_user_error_type_for_every_layer():
    e = LoopError("loop.bias=2 is outside (0, 1]", "set loop.bias=0.8")
    assert isinstance(e, MadmarkError) and isinstance(e, ValueError)
    assert e.exit_code == 2 and str(e) == "loop.bias=2 is outside (0, 1] — set loop.bias=0.8"


def test_derived_streams_are_reproducible_and_distinct():
    assert derive_seed(0, 3, "fit") == derive_seed(0, 3, "fit")
    seeds = {derive_seed(s, t, p) for s in (0, 1) for t in (1, 2) for p in ("fit", "sample")}
    assert len(seeds) == 8 and all(0 <= s < 2 ** 63 for s in seeds)
    a = torch.rand(4, generator=generator(0, 2, "fit"))
    assert torch.equal(a, torch.rand(4, generator=generator(0, 2, "fit")))
