"""Which run directory a ``madmark run`` process works in — new, resumed (``resume=<dir>``) or
auto-resumed (``auto_resume=true``, a requeued job) — agreed on by every rank under torchrun."""
from __future__ import annotations

import os
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from loops import distributed as dist
from madmark.errors import MadmarkError
from madmark.rundir import RunDir

#: keys that may differ between a run and its relaunch (they change no number)
VOLATILE_KEYS = ("progress", "debug", "auto_resume")


def config_changes(recorded: DictConfig, asked: DictConfig) -> list[str]:
    """Dotted keys whose values differ between a recorded config and the one asked for (resolved
    as it would be recorded), :data:`VOLATILE_KEYS` aside; shallow keys first."""
    def leaves(node: dict, prefix: str = ""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            elif f"{prefix}{key}" not in VOLATILE_KEYS:
                yield f"{prefix}{key}", value

    asked = OmegaConf.create(OmegaConf.to_yaml(asked, resolve=True))
    old, new = (dict(leaves(OmegaConf.to_container(c))) for c in (recorded, asked))
    return sorted((k for k in old.keys() | new.keys() if old.get(k) != new.get(k)),
                  key=lambda k: (k.count("."), k))


def backend(cfg: DictConfig) -> Optional[str]:
    """The process group backend: gloo for a CPU run (NCCL moves only CUDA tensors), else
    ``loops.distributed``'s choice. A resumed run computes on its recorded device."""
    if int(os.environ.get("WORLD_SIZE") or 1) <= 1 or os.environ.get("MADMARK_DIST_BACKEND"):
        return None
    device = str(cfg.device)
    if cfg.resume and RunDir(cfg.resume).exists():
        device = str(RunDir(cfg.resume).read_config().get("device", device))
    return "gloo" if device == "cpu" else None


def open_run(cfg: DictConfig) -> tuple[RunDir, DictConfig, bool]:
    """The run directory and the config to run: a new one, or the recorded one for resume
    (``resume=<dir>``, or ``auto_resume=true`` when Hydra's output dir already holds this run)."""
    if cfg.resume:
        run = RunDir(cfg.resume)
        if not run.exists():
            raise MadmarkError(f"resume={cfg.resume} is not a madmark run directory "
                               "(no config.yaml)", "pass the folder of a run started by madmark run")
        recorded = run.read_config()
        with open_dict(recorded):
            recorded.progress, recorded.debug = cfg.progress, cfg.debug
        return run, recorded, True
    run = RunDir(HydraConfig.get().runtime.output_dir)
    if run.exists() and not cfg.auto_resume:
        raise MadmarkError(f"run directory {run.path} already holds a run",
                           "wait a second and rerun, set hydra.run.dir=<new folder>, "
                           "or continue it with auto_resume=true")
    if run.exists():   # auto_resume: a relaunched (requeued) job continues the run in its folder
        recorded = run.read_config()
        changed = config_changes(recorded, cfg)
        if changed:
            raise MadmarkError(f"auto_resume: run directory {run.path} holds a run with another "
                               f"config ({', '.join(changed[:6])}{', ...' * (len(changed) > 6)} "
                               "differ)",
                               "rerun the identical command, or set hydra.run.dir=<new folder>")
        with open_dict(recorded):
            recorded.progress, recorded.debug = cfg.progress, cfg.debug
        return run, recorded, True
    return run, cfg, False


def agree_on_run(cfg: DictConfig) -> tuple[RunDir, DictConfig, bool, bool]:
    """:func:`open_run` on rank 0, broadcast: every rank gets the same run directory, config and
    resume decision, and whether the run is already complete (or rank 0's error, raised on every
    rank). Hydra's run directory and ``${now}`` are rank 0's."""
    shared: tuple = ()
    if dist.is_main():
        try:
            run, run_cfg, resumed = open_run(cfg)
            complete = run.read_status().get("state") == "complete"
            shared = ("ok", str(run.path), OmegaConf.to_yaml(run_cfg) if resumed else None,
                      resumed, complete)
        except Exception as error:
            failure = error
            shared = ("error", getattr(error, "problem", str(error)), getattr(error, "fix", None))
    shared = dist.broadcast_object(shared)
    if shared[0] == "error":
        if dist.is_main():
            raise failure
        if shared[2] is None:
            raise RuntimeError(f"rank 0 could not open the run: {shared[1]}")
        raise MadmarkError(shared[1], shared[2])
    if dist.is_main():
        return run, run_cfg, resumed, complete
    _, path, recorded, resumed, complete = shared
    return RunDir(path), (OmegaConf.create(recorded) if resumed else cfg), resumed, complete


