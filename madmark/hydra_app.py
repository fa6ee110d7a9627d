"""Running a Hydra-configured command with one-line errors.

Every Hydra command of the CLI composes ``configs/config.yaml`` (or another primary config),
checks group choices before Hydra does (so an unknown ``data=foo`` gets a one-line error naming
the choices), and turns :class:`MadmarkError` / :class:`LoopError` into ``madmark: error: ...`` with
exit code 2. ``debug=true`` re-raises with the traceback.
"""
from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from madcore.errors import MadmarkError

USER_ERRORS = (MadmarkError,)   # loops.errors.LoopError is one


def config_dir() -> Path:
    """The ``configs/`` folder shipped with the package."""
    return Path(str(resources.files("configs")))


def group_choices(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_group_overrides(overrides: list[str]) -> None:
    """Raise MadmarkError for ``group=value`` overrides that name no config file."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or "." in key or key.startswith("hydra"):
            continue
        choices = group_choices(key)
        if not choices:
            continue
        for option in value.split(","):
            if option not in choices and option != "null":
                raise MadmarkError(f"unknown {key} '{option}'",
                                   f"choose {key}= one of {', '.join(choices)}")


def report_error(error: BaseException) -> int:
    print(f"madmark: error: {error}", file=sys.stderr)
    return 2


def resume_overrides(args: list[str]) -> list[str]:
    """With ``resume=<dir>``, continue in the recorded folder: Hydra's run dir becomes <dir> and
    it writes no new ``.hydra/`` over the recorded one."""
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if resume and resume != "null":
        return [*args, f"hydra.run.dir={Path(resume)}", "hydra.output_subdir=null"]
    return args


def run_hydra(command: str, task: Callable[[DictConfig], None], args: list[str],
              config_name: str = "config") -> int:
    """Run ``task`` under ``hydra.main`` with ``args`` as the command line overrides
    (``resume=<dir>`` continues in that folder, see :func:`resume_overrides`)."""
    args = resume_overrides(args)
    debug = any(a in ("debug=true", "debug=True") for a in args)
    try:
        check_group_overrides([a for a in args if not a.startswith("-")])
    except MadmarkError as e:
        if debug:
            raise
        return report_error(e)

    def guarded(cfg: DictConfig) -> None:
        try:
            task(cfg)
        except USER_ERRORS as e:
            if cfg.get("debug", False):
                raise
            sys.exit(report_error(e))
        except MissingMandatoryValue as e:
            if cfg.get("debug", False):
                raise
            key = getattr(e, "full_key", None) or "a mandatory key"
            sys.exit(report_error(MadmarkError(f"config key {key} has no value",
                                               f"set {key}=<value> on the command line")))

    full_error = os.environ.get("HYDRA_FULL_ERROR")
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"     # let the exception and its traceback through
    app = hydra.main(version_base="1.3", config_path=str(config_dir()),
                     config_name=config_name)(guarded)
    argv = sys.argv
    sys.argv = [f"madmark {command}", *args]
    try:
        app()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return 0


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
