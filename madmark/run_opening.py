"""Which run directory a ``madmark run`` process works in — new, resumed (``resume=<dir>``) or
auto-resumed (``auto_resume=true``, a requeued job) — agreed on by every rank under torchrun."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from madcore import dist
from madcore.errors import MadmarkError
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
    ``madcore.dist``'s choice. A resumed run computes on its recorded device."""
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
        return run, relaunched(run.read_config(), cfg), True
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
        return run, relaunched(recorded, cfg), True
    return run, cfg, False


def relaunched(recorded: DictConfig, cfg: DictConfig) -> DictConfig:
    """The recorded config of a run being continued, with this launch's ``progress`` and
    ``debug`` (they change no number)."""
    with open_dict(recorded):
        recorded.progress, recorded.debug = cfg.progress, cfg.debug
    return recorded


#: Hydra overrides of ranks > 0 under torchrun: no output folder, .hydra/ or log file of their own
#: (with resume=<dir>, Hydra's run dir stays <dir>, which already exists)
WORKER_OVERRIDES = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none")


def torchrun_args(command: str, args: list[str]) -> list[str]:
    """The Hydra arguments of this process: under torchrun a sweep is refused and ranks > 0 get
    :data:`WORKER_OVERRIDES`; under plain python ``args`` unchanged."""
    if int(os.environ.get("WORLD_SIZE") or 1) <= 1:
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise MadmarkError(f"madmark {command} -m (a sweep) cannot run under torchrun",
                           "run the sweep's points as separate torchrun jobs, or sweep without "
                           "torchrun")
    if int(os.environ.get("RANK") or 0) > 0:
        return [*args, *WORKER_OVERRIDES]
    return args


def agree(open_run: Callable[[DictConfig], tuple[RunDir, DictConfig, bool, Any]],
          cfg: DictConfig) -> tuple[RunDir, DictConfig, bool, Any]:
    """``open_run(cfg) -> (run, config, resumed, extra)`` on rank 0, broadcast: every rank gets the
    same run directory, config, resume decision and (picklable) ``extra``, or rank 0's error,
    raised on every rank. Hydra's run directory and ``${now}`` are rank 0's."""
    shared: tuple = ()
    if dist.is_main():
        try:
            run, run_cfg, resumed, extra = open_run(cfg)
            shared = ("ok", str(run.path), OmegaConf.to_yaml(run_cfg) if resumed else None,
                      resumed, extra)
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
        return run, run_cfg, resumed, extra
    _, path, recorded, resumed, extra = shared
    return RunDir(path), (OmegaConf.create(recorded) if resumed else cfg), resumed, extra


def agree_on_run(cfg: DictConfig, check: Optional[Callable[[DictConfig], Any]] = None
                 ) -> tuple[RunDir, DictConfig, bool, bool]:
    """:func:`open_run` agreed across ranks (:func:`agree`), with whether the run is already
    complete. ``check(run_config)`` runs on rank 0 before anything is written (its MadmarkError
    is raised on every rank)."""
    def opened(cfg: DictConfig):
        run, run_cfg, resumed = open_run(cfg)
        if check is not None:
            check(run_cfg)
        return run, run_cfg, resumed, run.read_status().get("state") == "complete"

    return agree(opened, cfg)
