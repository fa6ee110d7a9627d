"""Radioactivity: was a run's generative model trained on data marked with the run's key?

    result = radioactivity("outputs/autophagy_fully_synthetic/<date-time>", generation=5, n=2000)
    result.p_value, result.flagged

M samples of the model of generation T are decoded, and their matched bits against the key's
message go through ``eval.radioactivity``: the exact message sign-flip test, whose only assumption
is that a model never trained on the key's marks is independent of the (uniformly random) secret
message — valid whatever the decoder's biases on this model's samples. For comparison, a model
trained on clean data is sampled too (default: generation 1 of the same run, trained on real data
only; or ``clean_run``, e.g. the control arm of the same experiment): its bit accuracy and a Welch
test against it are reported, not used to decide (models drift: see eval/radioactivity.py).

Which key. In ``key_mode: run`` the run key. In ``key_mode: generation`` (or ``message``) the key
(message) of generation T − 1, the marks in the tested model's most recent training data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from eval.radioactivity import RadioactivityResult, radioactivity_test
from loops.checkpoint import CheckpointError
from madcore.rng import generator
from madcore.errors import MadmarkError
from madmark.rundir import RunDir
from madmark.run_opening import resume_command
from madmark.watermarking import RunWatermark


@dataclass
class LoadedModel:
    """A fitted model from a run's checkpoint, with what is needed to sample it."""
    model: object
    generation: int
    sample_shape: tuple[int, ...]
    cfg: DictConfig
    row: dict            # the generation's results row (its checkpoint's)


def resolve_run(path: str | Path) -> tuple[RunDir, Optional[int]]:
    """A run directory, or a checkpoint ``<run>/state/g<t>.pt`` (then also its generation)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".pt" and p.parent.name == "state":
        return RunDir(p.parent.parent), int(p.stem.lstrip("g"))
    run = RunDir(p)
    if not run.exists():
        raise MadmarkError(f"{path} is not a madmark run directory (no config.yaml) nor a "
                           "checkpoint state/g<t>.pt", "pass the folder of a run of madmark run")
    return run, None


def load_model(run: RunDir, generation: Optional[int], device: torch.device) -> LoadedModel:
    """The model of ``generation`` (default: the last finished one) rebuilt from the run's config
    and loaded from its checkpoint (``weights_only=True``)."""
    finished = run.checkpoints.finished()
    if not finished:
        raise MadmarkError(f"run {run.path} has no finished generation",
                           "let the run finish at least one generation (or resume it)")
    t = finished[-1] if generation is None else int(generation)
    if t not in finished:
        raise MadmarkError(f"run {run.path} has no finished generation {t} (finished: "
                           f"1..{finished[-1]})", f"pass generation= between 1 and {finished[-1]}")
    cfg = run.read_config()
    try:
        record = run.checkpoints.load(t, map_location=device)
    except CheckpointError as error:       # refused by safe loading, unreadable, or not one
        other = [g for g in finished if g != t]
        instead = f"test another generation (generation={other[-1]}), or " if other else ""
        raise error.with_fix(f"{instead}recompute generation {t} and later with: "
                             f"{resume_command(run, t)} (the checkpoints are moved aside, not "
                             "deleted)")
    model = instantiate(cfg.model)
    try:
        model.load_state_dict(record["model"])
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise MadmarkError(f"checkpoint {run.checkpoints.path(t)} does not hold a model of the "
                           f"run's config ({type(error).__name__})",
                           f"recompute generation {t} with: {resume_command(run, t)}") from None
    return LoadedModel(model, t, tuple(record["samples"].shape[1:]), cfg, dict(record["row"]))


def draw(loaded: LoadedModel, n: int, seed: int, device: torch.device) -> torch.Tensor:
    """n unbiased (λ = 1) samples of a loaded model from a stream derived from (seed, generation)."""
    model, t = loaded.model, loaded.generation
    kwargs = {}
    if getattr(model, "conditional", False):
        kwargs["labels"] = torch.randint(model.num_classes, (n,), device=device,
                                         generator=generator(seed, t, "radioactivity/labels", device))
    x = model.sample(n, bias=1.0, generator=generator(seed, t, "radioactivity", device), **kwargs)
    if not torch.isfinite(x).all():
        raise MadmarkError(f"the model of generation {t} produced non-finite samples",
                           "test another generation")
    return x.clamp(0, 1)


def radioactivity(run_dir: str | Path, generation: Optional[int] = None, n: int = 2000,
                  clean_run: Optional[str | Path] = None, clean_generation: int = 1,
                  alpha: float = 0.01, key_file: str = "", other_key: bool = False, seed: int = 0,
                  device: str | torch.device = "cpu") -> tuple[RadioactivityResult, dict]:
    """Test the model of ``generation`` of ``run_dir`` for the run's watermark key.

    Args:
        run_dir: a run directory, or a checkpoint file inside one.
        generation: the model tested (default: the last finished generation).
        n: samples M drawn from the tested model and from the clean model.
        clean_run / clean_generation: the clean model (default: generation 1 of the same run).
        alpha: false-positive rate of the decision.
        key_file: the key file when the run used one and it has moved (default: the recorded path).
        other_key: test ``key_file`` even when it is not the key the run marked with (a control);
            otherwise such a key is refused.
        seed: seed of the sampling streams.
    Returns:
        the test result and a dict describing what was tested (no key material).
    """
    device = torch.device(device)
    if not 0 < alpha < 1:
        raise MadmarkError(f"alpha={alpha} is outside (0, 1)", "set alpha=0.01 or similar")
    if n < 2:
        raise MadmarkError(f"n={n} samples are too few for the test", "set n to 100 or more")
    run, from_file = resolve_run(run_dir)
    tested = load_model(run, generation if generation is not None else from_file, device)
    clean_dir = run if clean_run is None else resolve_run(clean_run)[0]
    clean = load_model(clean_dir, clean_generation, device)
    if clean.sample_shape != tested.sample_shape:
        raise MadmarkError(f"the clean model samples {clean.sample_shape}, the tested one "
                           f"{tested.sample_shape}", "pass a clean run on the same data")
    if clean_run is None and clean.generation >= tested.generation:
        raise MadmarkError(f"generation {tested.generation} is tested against the clean model of "
                           f"generation {clean.generation} of the same run",
                           "test a generation after the clean one (generation 1 trains on real data)")
    wm_cfg = tested.cfg.get("watermark")
    if wm_cfg is None or not wm_cfg.get("enabled", False):
        raise MadmarkError(f"run {run.path} has no watermark configured (watermark=none)",
                           "test a run started with watermark=<method>")
    if key_file:
        wm_cfg = wm_cfg.copy()
        wm_cfg.key_file = key_file
    try:
        run_wm = RunWatermark(wm_cfg, int(tested.cfg.seed), tested.sample_shape,
                              torch.zeros((0, *tested.sample_shape)), device)
    except (OSError, ValueError) as e:
        raise MadmarkError(f"cannot rebuild the run's watermark: {str(e).splitlines()[0]}",
                           "pass key_file=<the run's key file>") from e
    if not other_key and tested.row.get("wm_marks") in (True, "True"):   # a control marks nothing
        run_wm.check_same_key(tested.row, "pass key_file=<the key file the run marked with>")
    key_generation = max(1, tested.generation - 1)
    method, message = run_wm.method(key_generation), run_wm.message(key_generation).bool()

    def matches(x: torch.Tensor) -> torch.Tensor:
        parts = []
        for chunk in x.split(run_wm.batch_size):
            with torch.no_grad():
                parts.append((method.decode(chunk) > 0) == message)
        return torch.cat(parts)

    result = radioactivity_test(matches(draw(tested, n, seed, device)),
                                matches(draw(clean, n, seed + 1, device)), alpha=alpha)
    info = {"run": str(run.path), "generation": tested.generation,
            "clean_run": str(clean_dir.path), "clean_generation": clean.generation,
            "wm_method": run_wm.method_name, "wm_key": run_wm.key_source,
            "key_of_generation": key_generation if wm_cfg.key_mode != "run" else "run",
            "n": n, "seed": seed}
    return result, info
