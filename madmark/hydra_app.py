"""Running a Hydra-configured command with one-line errors.

Every Hydra command of the CLI composes ``configs/config.yaml`` (or another primary config),
checks group choices before Hydra does (so an unknown ``data=foo`` gets a one-line error naming
the choices), and turns :class:`MadmarkError` / :class:`LoopError` into ``madmark: error: ...`` with
exit code 2. ``debug=true`` re-raises with the traceback.

A command's primary config may name the :class:`Preflight` callback (``hydra.callbacks``): it
checks the composed config before Hydra creates the output folder, and records what that folder
held, so that :func:`discard_new_output` can remove exactly what a failed command created (Hydra's
``.hydra/`` and log included) and nothing that was there before.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import sys
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from madcore.errors import MadmarkError
from madmark.threads import thread_budget

USER_ERRORS = (MadmarkError,)   # loops.errors.LoopError is one


def config_dir() -> Path:
    """The ``configs/`` folder shipped with the package."""
    return Path(str(resources.files("configs")))


def group_choices(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def is_choice(option: str) -> bool:
    """Whether a group's option is one to choose, not one that other configs start from (the
    ConfigStore schemas ``<option>_schema`` and ``trainer/schema``, ``watermark/base``)."""
    return not (option.endswith("_schema") or option in ("schema", "base"))


def listed_groups() -> str:
    """``group: option, option, ...`` per line for ``--help`` (the ``${madmark_groups:}`` resolver
    in configs/config.yaml's help template): Hydra's $APP_CONFIG_GROUPS without the options that
    are not choices (:func:`is_choice`) and without groups left with none."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()

    def groups(parent: str) -> Iterator[str]:
        for name in loader.list_groups(parent):
            group = f"{parent}/{name}" if parent else name
            if group == "hydra":
                continue
            if loader.get_group_options(group, ObjectType.CONFIG):
                yield group
            yield from groups(group)

    lines = []
    for group in sorted(groups("")):
        options = [o for o in sorted(loader.get_group_options(group)) if is_choice(o)]
        if options:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("madmark_groups", listed_groups, replace=True)


def compose_option(group: str, option: str, config_name: str = "config") -> DictConfig:
    """``configs/<group>/<option>.yaml`` as ``<config_name> <group>=<option>`` composes it (its
    defaults list followed), the group's node alone; inside a running Hydra app through that
    app's config loader, else through a fresh one."""
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"{group}={option}"]
    if GlobalHydra.instance().is_initialized():
        cfg = hydra.compose(config_name=config_name, overrides=overrides)
    else:
        with hydra.initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra.compose(config_name=config_name, overrides=overrides)
    return cfg[group]


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
                shown = ", ".join(c for c in choices if is_choice(c))
                raise MadmarkError(f"unknown {key} '{option}'",
                                   f"choose {key}= one of {shown}")


def is_group_override(override: str) -> bool:
    """``data=mnist5k``, ``+experiment=x``, ``~filter``: a choice of a config group (a folder of
    configs/), not a key=value setting."""
    key = override.lstrip("+~").partition("=")[0]
    return "." not in key and not key.startswith("hydra") and bool(group_choices(key))


def baseline_config(config_name: str, overrides: list[str]) -> Optional[DictConfig]:
    """The config as the files give it for these group choices: ``overrides`` without their
    key=value settings, composed (inside a running Hydra app); None if that fails."""
    try:
        return hydra.compose(config_name=config_name,
                             overrides=[o for o in overrides if is_group_override(o)])
    except Exception:                # an override Hydra would reject anyway: no implied types
        return None


_KINDS = {"converted to Integer": "an integer", "converted to Float": "a number",
          "valid bool": "true or false", "converted to Boolean": "true or false"}


def check_declared_overrides(overrides: list[str]) -> None:
    """Raise the run schema's own message (madmark.config_schema.mismatch, with its example) for a
    ``key=value`` of a declared ``madmark run`` setting whose value is not of its type, before
    OmegaConf would convert it (it reads ``auto_resume=1`` as true); each value of a choice or
    range sweep is checked. Interval and glob sweeps, deletions and interpolations are left to
    composition."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from madmark.config_schema import declared, fits, mismatch

    types = {key: (tp, example) for key, tp, example in declared()}
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:                          # bad override syntax: Hydra reports it
        return
    for override in parsed:
        key = override.key_or_group
        if key not in types or override.is_delete():
            continue
        try:
            values = list(override.sweep_iterator()) if override.is_sweep_override() \
                else [override.value()]
        except Exception:                      # an interval or glob sweep: left to each job
            continue
        for value in values:
            if isinstance(value, str) and "${" in value:
                continue
            if not fits(value, types[key][0]):
                raise mismatch(key, value, *types[key])


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """``overrides`` with each choice or range sweep (``seed=0,1``, ``seed=range(3)``) cut to
    its first value, so one composition checks the keys a sweep's jobs will have; interval and
    glob sweeps are dropped (their keys are left to Hydra). Unparsable overrides: unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return overrides
    out = []
    for text, override in zip(overrides, parsed):
        if not override.is_sweep_override():
            out.append(text)
            continue
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:
            continue
        out.append(f"{override.get_key_element()}={first}")
    return out


def check_schema_types(config_name: str, overrides: list[str]) -> None:
    """Compose the config once, as Hydra will, and turn a ConfigStore schema's refusal of a value
    (``trainer.steps=abc`` against :class:`watermark.train.TrainerConfig`) into a MadmarkError
    naming the key, the value and the schema's default. Anything else Hydra refuses (a sweep, a
    bad override syntax) is left for Hydra to report."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from madmark.config_schema import check_config, implied_types

    if config_name == "config":
        check_declared_overrides(overrides)
    overrides = first_of_sweeps(overrides)      # a sweep's keys are checked on its first job

    def composed(args: list[str]) -> DictConfig:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name=config_name, overrides=args)

    try:
        cfg = composed(overrides)
    except ConfigCompositionException as e:
        cause = e.__cause__
        unknown = re.match(r"Could not override '([^']+)'", str(e))
        if unknown and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            key = unknown.group(1)
            raise MadmarkError(f"{key} is not a setting of this command",
                               "check its spelling (--help lists the settings)") from None
        if not isinstance(cause, ValidationError) or not getattr(cause, "full_key", None):
            return
    except Exception:
        return
    else:
        if config_name != "config":          # madmark run checks its own (check_run_config)
            # the types the files imply for these group choices: ``n_images=abc`` where the
            # file has a number (no schema is declared for these commands)
            try:
                baseline = composed([o for o in overrides if is_group_override(o)])
            except Exception:                # an override Hydra would reject anyway
                return
            check_config(cfg, implied_types(baseline), schema=None)
        return
    key = cause.full_key
    typed = next((o.partition("=")[2] for o in reversed(overrides)      # the last one wins
                  if o.partition("=")[0] == key), "?")
    kind = next((k for w, k in _KINDS.items() if w in str(cause)), "valid here")
    try:
        default = OmegaConf.select(composed([o for o in overrides
                                             if o.partition("=")[0] != key]), key)
    except Exception:
        default = None
    shown = str(default).lower() if isinstance(default, bool) else default
    fix = f"set {key}={shown}" if default is not None else f"set {key} to {kind}"
    raise MadmarkError(f"{key}={_as_typed(typed)} is not {kind}", fix)


def _as_typed(text: str) -> str:
    """An override's value as :func:`madmark.config_schema.show` writes it: ``'abc'`` for a
    string, ``2.5`` for a number (as Hydra reads the command line)."""
    import yaml

    from madmark.config_schema import show

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return show(value) if isinstance(value, (str, int, float, bool)) or value is None \
        else repr(text)


# -- what a failed command leaves behind ------------------------------------------------------
#: output folder -> the names it held before this command (None: it did not exist)
_BEFORE: dict[Path, Optional[frozenset[str]]] = {}
#: output folder -> the highest folder on its path that this command created
_CREATED_TOP: dict[Path, Path] = {}


def remember_output(path: str | Path) -> None:
    """Record what ``path`` (an output folder Hydra is about to create or fill) holds now."""
    path = Path(path).absolute()
    _BEFORE[path] = frozenset(p.name for p in path.iterdir()) if path.is_dir() else None
    top, q = None, path
    while not q.exists() and q != q.parent:
        top, q = q, q.parent
    if top is not None:
        _CREATED_TOP[path] = top


def _before(path: Path) -> tuple[str, Optional[frozenset[str]]]:
    """("new" | "existed" | "unknown", the names it held: None if unknown) for an output folder
    or a sweep job's folder inside a recorded sweep folder."""
    if path in _BEFORE:
        names = _BEFORE[path]
        return ("new", None) if names is None else ("existed", names)
    if path.parent in _BEFORE:                   # a multirun job inside the sweep folder
        names = _BEFORE[path.parent]
        return ("new", None) if names is None or path.name not in names else ("existed", None)
    return "unknown", None


def discard_new_output(path: str | Path, run_is_ours: bool) -> None:
    """Remove what this command created in the output folder ``path`` after it failed before any
    generation finished: the folder itself if it is new, else only the entries it did not hold
    before; then the empty folders this command created above it (a sweep folder holding nothing
    but Hydra's multirun.yaml too). Never touched: a folder holding checkpoints, or a run
    (config.yaml) this command did not start (``run_is_ours=False``). A folder of unknown history
    (a joblib worker's sweep job) is removed as a new one (under a new sweep folder it is)."""
    from loops.checkpoint import Checkpoints

    path = Path(path).absolute()
    if not path.is_dir() or Checkpoints(path / "state").on_disk():
        return
    if (path / "config.yaml").exists() and not run_is_ours:
        return
    state, names = _before(path)
    if state == "existed":
        if names is None:                        # what it held is not known: leave it as it is
            return
        for entry in path.iterdir():
            if entry.name not in names:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() \
                    else entry.unlink(missing_ok=True)
        return
    shutil.rmtree(path, ignore_errors=True)
    top = _CREATED_TOP.get(path) or _CREATED_TOP.get(path.parent)
    if top is None or top == path or top not in path.parents:
        return
    q = path.parent
    while True:
        left = [p.name for p in q.iterdir()] if q.is_dir() else []
        if left not in ([], ["multirun.yaml"]):
            return
        shutil.rmtree(q, ignore_errors=True)
        if q == top:
            return
        q = q.parent


@contextmanager
def _hydra_config(config: DictConfig) -> Iterator[None]:
    """HydraConfig set to ``config`` (``${hydra:...}`` resolves) for the block, then restored."""
    instance = HydraConfig.instance()
    before = instance.cfg
    instance.set_config(config)
    try:
        yield
    finally:
        instance.cfg = before


class Preflight(Callback):
    """Hydra callback (``hydra.callbacks``): before Hydra creates a run's output folder, record
    what it holds (:func:`discard_new_output`) and call ``check(cfg, output_dir)`` — a dotted
    name — on the composed config; its MadmarkError is printed as one line, exit code 2, and no
    folder is created. A sweep's folder is only recorded (each job checks its own config)."""

    def __init__(self, check: Optional[str] = None):
        self.check = check

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            output_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        except OmegaConfBaseException:
            return                       # Hydra reports it itself
        remember_output(output_dir)
        if self.check is None or config.get("debug", False) in (True, "true"):
            return                       # debug: the task raises it, with the traceback
        job = copy.deepcopy(config)
        with read_write(job), open_dict(job):
            del job["hydra"]
        try:
            with _hydra_config(config):
                get_method(self.check)(job, output_dir.absolute())
        except MadmarkError as error:
            sys.exit(report_error(error))
        except OmegaConfBaseException:
            return                       # e.g. a ??? value: the task reports it in one line

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            remember_output(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))))
        except OmegaConfBaseException:
            pass


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
    (``resume=<dir>`` continues in that folder, see :func:`resume_overrides`). Each job runs
    within its thread budget, the config's ``threads`` (madmark.threads.thread_budget), applied
    in the process that runs it (a joblib worker, a Slurm task, a torchrun rank)."""
    args = resume_overrides(args)
    _BEFORE.clear()
    _CREATED_TOP.clear()
    debug = any(a in ("debug=true", "debug=True") for a in args)
    try:
        check_group_overrides([a for a in args if not a.startswith("-")])
        check_schema_types(config_name, [a for a in args if not a.startswith("-")])
    except MadmarkError as e:
        if debug:
            raise
        return report_error(e)

    def guarded(cfg: DictConfig) -> None:       # one job, in the process that runs it
        try:
            with thread_budget(cfg.get("threads")):     # madmark/threads.py
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
