"""Which run directory a ``madmark run`` process works in — new, resumed (``resume=<dir>``) or
auto-resumed (``auto_resume=true``, a requeued job) — agreed on by every rank under torchrun, and
the integrity check and repair of a run directory before it continues (:func:`prepare_resume`)."""
from __future__ import annotations

import csv
import inspect
import io
import os
import shutil
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from loops.checkpoint import CheckpointError
from madcore import dist
from madcore.errors import MadmarkError
from madmark.rundir import RunDir, results_rows, rows_to_csv

#: keys that may differ between a run and its relaunch (they change no number; ``threads`` at
#: most the order of floating-point sums, and each launch's env.json records its budget)
VOLATILE_KEYS = ("progress", "debug", "auto_resume", "resume_from", "threads")


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
    tree = OmegaConf.to_container(asked)
    return sorted((k for k in old.keys() | new.keys() if old.get(k) != new.get(k)
                   and not (k not in old and _is_constructor_default(tree, k, new[k]))),
                  key=lambda k: (k.count("."), k))


def _is_constructor_default(tree: dict, key: str, value: Any) -> bool:
    """Whether dotted ``key`` is an argument of its node's ``_target_`` whose constructor default
    equals ``value``: a run recorded before that key was spelled out in the config (the schemas
    now list every constructor argument) ran with exactly that default."""
    *path, name = key.split(".")
    node: Any = tree
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    target = node.get("_target_") if isinstance(node, dict) else None
    if not isinstance(target, str):
        return False
    try:
        from hydra.utils import get_object
        parameter = inspect.signature(get_object(target)).parameters.get(name)
    except (ImportError, AttributeError, ValueError, TypeError):
        return False
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return False
    default = parameter.default
    return (list(default) if isinstance(default, tuple) else default) == value


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
    """The recorded config of a run being continued, with this launch's ``progress``, ``debug``
    and ``threads`` (:data:`VOLATILE_KEYS`)."""
    with open_dict(recorded):
        recorded.progress, recorded.debug = cfg.progress, cfg.debug
        recorded.threads = cfg.get("threads")
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
    is raised on every rank); a resumed run directory is checked and repaired
    (:func:`prepare_resume`) on rank 0 before the other ranks read it."""
    def opened(cfg: DictConfig):
        run, run_cfg, resumed = open_run(cfg)
        if check is not None:
            check(run_cfg)
        complete = False
        if resumed:
            for note in prepare_resume(run, run_cfg, cfg.get("resume_from")):
                print(f"resume: {note}", flush=True)
            generations = int(run_cfg.loop.generations)
            complete = (run.read_status().get("state") == "complete"
                        and len(run.checkpoints.finished()) >= generations)
        return run, run_cfg, resumed, complete

    return agree(opened, cfg)


# -- integrity of a run directory that continues ------------------------------------------------
def resume_command(run: RunDir, t: int) -> str:
    """The command that continues ``run`` from generation ``t`` (recomputing t and later)."""
    return f"madmark run resume={run.path} resume_from={t}"


def _aside_note(t: int) -> str:
    return (f"(g{t:04d}.pt and later checkpoints are moved aside to state/set-aside-<time>/, "
            "nothing is deleted)")


def set_aside(run: RunDir, t: int) -> list[str]:
    """``resume_from=t``: move ``state/g<t>.pt`` and every later checkpoint, and a copy of
    results.csv, to ``state/set-aside-<UTC time>/``; generations t, t+1, ... are recomputed."""
    n = len(run.checkpoints.finished())
    if isinstance(t, str) and t.strip().lstrip("-").isdigit():     # resume_from='3'
        t = int(t)
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= n + 1:
        raise MadmarkError(f"resume_from={t!r} is not a generation to continue from (run "
                           f"{run.path} has generations 1..{n} finished)" if n else
                           f"resume_from={t!r} is not a generation to continue from (run "
                           f"{run.path} has no finished generation)",
                           f"set resume_from between 1 and {n + 1}")
    later = [g for g in run.checkpoints.on_disk() if g >= t]
    if not later:
        return [f"resume_from={t}: no checkpoint of generation {t} or later to set aside"]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = run.checkpoints.folder / f"set-aside-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = run.checkpoints.folder / f"set-aside-{stamp}-{suffix}"
    folder.mkdir()
    results = run.path / "results.csv"
    if results.is_file():
        shutil.copy2(results, folder / "results.csv")
    for g in later:
        os.replace(run.checkpoints.path(g), folder / run.checkpoints.path(g).name)
    names = ", ".join(f"g{g:04d}.pt" for g in later)
    return [f"resume_from={t}: moved {names}{' and results.csv (a copy)' * results.is_file()} "
            f"to {folder}; recomputing from generation {t}"]


def _derived(column: str) -> bool:
    """results.csv columns recomputed from all the rows at each write (they may change as rows
    come: artifact growth against its baseline generation)."""
    return column.endswith("_growth") or column == "growth_baseline"


def _disagreement(text: str, expected: str, n_rows: int) -> Optional[str]:
    """None when results.csv text is the checkpoints' results.csv or an earlier, shorter state of
    it (a kill before its rewrite, a truncated file); else how it differs."""
    if text == expected or expected.startswith(text):
        return None
    try:
        have = list(csv.DictReader(io.StringIO(text)))
    except csv.Error:
        return "it is not a readable CSV file"
    want = list(csv.DictReader(io.StringIO(expected)))
    if len(have) > len(want):
        return (f"it has {len(have)} rows, the checkpoints {n_rows} (generations "
                f"{'1..' + str(n_rows) if n_rows else 'none'})")
    for i, (a, b) in enumerate(zip(have, want), start=1):
        if a.get("generation") != b.get("generation"):
            return f"its row {i} is generation {a.get('generation')!r}, not {b['generation']}"
        for column, value in a.items():
            if column is not None and not _derived(column) and value != b.get(column, ""):
                return (f"generation {b['generation']}, {column}: {value!r} there, "
                        f"{b.get(column, '')!r} in state/g{int(b['generation']):04d}.pt")
    return None


def prepare_resume(run: RunDir, cfg: DictConfig, resume_from: Optional[int] = None) -> list[str]:
    """Check and repair a run directory before it continues; returns what was done.

    1. temporary files a killed writer left (``madcore.files.is_temporary``) are removed;
    2. ``resume_from=t``: checkpoints of t and later are set aside (:func:`set_aside`);
    3. every checkpoint is loaded, by safe loading only: one that is refused, unreadable, or
       comes after a missing one stops the resume with the command that continues from the
       generation before it (nothing is changed);
    4. results.csv is rewritten from the checkpoints' rows (each holds its own) when it lacks
       some of them (killed between a checkpoint and results.csv, or a truncated file); one that
       disagrees with them otherwise is refused with the difference;
    5. a missing sample grid of a finished generation is written from its checkpoint (for a
       watermarked run: from the samples as they entered later pools, i.e. marked).
    """
    notes = []
    removed = run.remove_temporaries()
    if removed:
        notes.append(f"removed {len(removed)} temporary file(s) a killed writer left: "
                     + ", ".join(str(p.relative_to(run.path)) for p in removed[:5])
                     + (", ..." if len(removed) > 5 else ""))
    if resume_from is not None:
        notes += set_aside(run, resume_from)
    finished = run.checkpoints.finished()
    after_gap = [t for t in run.checkpoints.on_disk() if t not in finished]
    if after_gap:
        gap = len(finished) + 1
        raise MadmarkError(f"{run.checkpoints.folder} holds "
                           f"{', '.join(f'g{t:04d}.pt' for t in after_gap)} but no g{gap:04d}.pt "
                           f"(generation {gap} is missing)",
                           f"continue from generation {gap - 1}, recomputing {gap} and later, "
                           f"with: {resume_command(run, gap)} {_aside_note(gap)}")
    rows, grid_n = [], int(cfg.get("samples_grid", 0) or 0)
    for t in finished:
        try:
            record = run.checkpoints.load(t)
        except CheckpointError as error:
            before = (f"continue from generation {t - 1}, recomputing {t} and later" if t > 1
                      else "recompute the run from its start")
            raise error.with_fix(f"{before}, with: {resume_command(run, t)} {_aside_note(t)}")
        rows.append(record["row"])
        samples = record["samples"]
        if grid_n > 0 and samples.dim() == 4 and not run.grid_path(t).is_file():
            run.save_grid(t, samples, n=grid_n)
            notes.append(f"wrote the missing samples/{run.grid_path(t).name} from its checkpoint")
    results = run.path / "results.csv"
    expected = rows_to_csv(results_rows(rows)) if rows else ""
    try:
        text = results.read_text() if results.is_file() else ""
    except (OSError, UnicodeDecodeError):
        text = None
    if text == expected:
        return notes
    if resume_from is None:
        why = "it is unreadable" if text is None else _disagreement(text, expected, len(rows))
        if why is not None:
            n = len(rows)
            raise MadmarkError(f"{results} disagrees with the run's checkpoints ({why})",
                               "the checkpoints hold every finished row: move results.csv aside "
                               f"(mv {results} {results}.old) and resume again to rewrite it "
                               f"from them, or recompute from a generation t <= {n + 1} with: "
                               f"{resume_command(run, n + 1)}")
    if rows:
        run.write_results(results_rows(rows))
        notes.append(f"rewrote results.csv from the checkpoints (generations 1..{len(rows)}; it "
                     + ("was unreadable)" if text is None else
                        f"had {max(text.count(chr(10)) - 1, 0)} complete rows)"))
    elif results.is_file():
        results.unlink()
        notes.append("removed results.csv: no generation is finished (its copy is set aside)")
    return notes
