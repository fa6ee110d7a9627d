"""``madmark run [overrides]``: run (or resume) a self-consuming loop experiment.

    madmark run                                  # the default experiment (configs/config.yaml)
    madmark run data=gaussian model=gaussian loop.bias=0.8
    madmark run -m loop.bias=1.0,0.8 seed=0,1    # Hydra multirun sweep
    madmark run resume=outputs/default/<date-time>
    torchrun --standalone --nproc_per_node=4 -m madmark run model=ddpm device=cuda ...

Under torchrun (docs/scaling.md) every rank runs the loop; rank 0 picks the run directory and the
resume decision and broadcasts them, and only rank 0 writes (Hydra's own files included).

Bad input never costs a traceback or a file: the config is checked against its declared and
implied types (madmark.config_schema), the device and the run directory before Hydra creates the
directory (:func:`preflight`); a run that fails before its first generation finishes leaves no
directory (:func:`discard_new_output`); a resumed one is checked and repaired first
(madmark.run_opening.prepare_resume).
"""
from __future__ import annotations

import functools
import os
import pickle
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from madcore import dist
from loops.engine import LoopEngine, LoopSettings
from loops.families import LoopFamily
from loops.stages import FilterStage, WatermarkStage
from madmark.cas import build_cas, check_cas_data
from madmark.classifier_filter import build_classifier_filter
from madmark.text_run import attach_text, check_modalities, check_text_model, data_is_text
from madmark.config_schema import check_config, implied_types
from madmark.console import GenerationProgress, format_table
from madcore.errors import MadmarkError
from madmark.evaluation import spread_evaluator, vector_truth_evaluator
from madmark.hydra_app import (baseline_config, discard_new_output, is_group_override,
                               report_error, run_hydra)
from madmark.metrics import GenerationMetrics, make_extractor
from madmark.report import CONSOLE_TABLE, SETTINGS, WATERMARK_SETTINGS, write_report
from madmark.rundir import RunDir, environment, results_rows
from madmark.run_opening import agree_on_run, backend, torchrun_args
from madmark.threads import check_setting as check_threads
from madmark.tracking import logger_config, open_tracking
from madmark.watermarking import RunWatermark, build_run_watermark


def resolve_device(name: str) -> torch.device:
    """The run's device; under torchrun a CUDA device (``auto``, ``cuda``, ``cuda:N``) becomes
    this process's GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError, ValueError):
            raise MadmarkError(f"device={name!r} is not a device",
                               "set device=cpu, cuda, cuda:<N> or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MadmarkError(f"device={name} but no CUDA GPU is available",
                           "set device=cpu (or device=auto)")
    if device.type == "cuda" and dist.world_size() > 1:
        return dist.default_device()
    return device


def data_name(cfg: DictConfig) -> str:
    """The data config's name (e.g. ``mnist5k``), from Hydra's choices or the target class."""
    choice = cfg.get("data_name")
    if choice:
        return str(choice)
    return str(cfg.data.get("_target_", "data")).rsplit(".", 1)[-1].lower()


def loop_settings(cfg: DictConfig, n_train: int) -> LoopSettings:
    n_real = n_train if cfg.loop.n_real is None else int(cfg.loop.n_real)
    n_synthetic = n_real if cfg.loop.n_synthetic is None else int(cfg.loop.n_synthetic)
    return LoopSettings(generations=int(cfg.loop.generations), n_real=n_real,
                        n_synthetic=n_synthetic, bias=float(cfg.loop.bias), seed=int(cfg.seed))


#: the implied types of each (primary config, group choices, config sources) seen by this process:
#: composing the baseline costs as much as composing the run's config, and check_run_config runs
#: twice per run (the preflight, then the task) and once per job of an in-process sweep
_IMPLIED: dict[tuple, dict] = {}


def _implied_types() -> dict:
    """:func:`madmark.config_schema.implied_types` of the running Hydra job's baseline config
    (:func:`madmark.hydra_app.baseline_config`), composed once per key of :data:`_IMPLIED`."""
    hydra_cfg = HydraConfig.get()
    groups = tuple(o for o in hydra_cfg.overrides.task if is_group_override(o))
    sources = tuple((s.provider, s.schema, s.path) for s in hydra_cfg.runtime.config_sources)
    key = (hydra_cfg.job.config_name, groups, sources)
    if key not in _IMPLIED:
        baseline = baseline_config(hydra_cfg.job.config_name, list(groups))
        _IMPLIED[key] = {} if baseline is None else implied_types(baseline)
    return _IMPLIED[key]


def check_run_config(cfg: DictConfig) -> None:
    """The settings' types: declared (madmark.config_schema.RunSchema) and, inside a Hydra app,
    implied by the config files for the groups chosen; ``threads`` is null or >= 1;
    ``resume_from`` needs ``resume``."""
    check_config(cfg, _implied_types() if HydraConfig.initialized() else {})
    check_threads(cfg.get("threads"))
    check_modalities(cfg, text=data_is_text(cfg))
    if cfg.get("resume_from") is not None and not cfg.get("resume"):
        raise MadmarkError(f"resume_from={cfg.resume_from} needs resume=<run_dir>",
                           f"run madmark run resume=<run_dir> resume_from={cfg.resume_from}")


def preflight(cfg: DictConfig, output_dir: Path) -> None:
    """What can be checked before Hydra creates the run directory (madmark.hydra_app.Preflight):
    the config (:func:`check_run_config`) and, for a new run, the device and that the directory
    holds no run yet. A resumed run's recorded config is checked when it is opened."""
    check_run_config(cfg)
    if cfg.resume:
        return
    resolve_device(str(cfg.device))
    if (int(os.environ.get("RANK") or 0) == 0 and RunDir(output_dir).exists()
            and not cfg.auto_resume):
        raise MadmarkError(f"run directory {output_dir} already holds a run",
                           "wait a second and rerun, set hydra.run.dir=<new folder>, "
                           "or continue it with auto_resume=true")


def check_opened(run_cfg: DictConfig) -> None:
    """The config a run will use (a resumed run's recorded one): declared types, and the logger
    is installed."""
    check_config(run_cfg)
    logger_config(run_cfg)


@dataclass
class Opened:
    """How far a run got, for the clean-up after a failure."""
    run: Optional[RunDir] = None
    resumed: bool = False
    started: bool = False          # the loop (data, model, generations) was started


def error_line(error: BaseException) -> str:
    """The first line of an error for status.json; never torch's advice to load a refused file
    unsafely (for a hostile file that advice is the attack)."""
    text = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error):
        return (f"{type(error).__name__}: a file was refused by safe loading (torch.load with "
                "weights_only=True)")
    return text


def run_loop(cfg: DictConfig) -> list[dict]:
    """Build the data source, model and loop from ``cfg`` and run it in its run directory (under
    torchrun: in every process, in the process group it starts; rank 0's rows are the result).
    A new run that fails before its first generation finishes leaves nothing behind (Hydra's
    folder included); a started one that fails later is marked failed in status.json."""
    opened = Opened()
    output_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    rank0 = int(os.environ.get("RANK") or 0) == 0        # also once the process group is gone
    try:
        check_run_config(cfg)
        dist.init(backend(cfg))
        try:
            return _run_loop(cfg, opened)
        finally:
            dist.shutdown()
    except BaseException as error:
        if rank0:
            after_failure(cfg, opened, output_dir, error)
        raise


def after_failure(cfg: DictConfig, opened: Opened, output_dir: Optional[Path],
                  error: BaseException) -> None:
    """Rank 0's clean-up after a failed ``madmark run`` (see :func:`run_loop`)."""
    interrupted = isinstance(error, KeyboardInterrupt) and opened.started
    if opened.run is None:                     # failed before a run directory was agreed on
        if output_dir is not None and not cfg.get("resume") and not interrupted:
            discard_new_output(output_dir, run_is_ours=False)
        return
    done = len(opened.run.checkpoints.finished())
    if not opened.resumed and done == 0 and not interrupted:
        discard_new_output(opened.run.path, run_is_ours=True)     # nothing finished: no husk
    elif opened.started:
        opened.run.write_status("failed", generations_done=done, error=error_line(error))


def _run_loop(cfg: DictConfig, opened: Opened) -> list[dict]:
    run, cfg, resumed, complete = agree_on_run(cfg, check=check_opened)
    opened.run, opened.resumed = run, resumed
    device = resolve_device(cfg.device)
    rank0 = dist.is_main()
    if rank0:
        env = {**environment(int(cfg.seed), device), "world_size": dist.world_size()}
        if not resumed:
            run.write_config(cfg)
            run.write_env(env)
        else:
            run.write_env(env, name=f"env_resume_{int(time.time())}.json")
    if complete:
        if not rank0:
            return []
        write_report(run.path)         # a process killed while writing the last one left it stale
        print(f"run {run.path} is already complete")
        rows = [run.checkpoints.load(t)["row"] for t in run.checkpoints.finished()]
        print(format_table(rows, CONSOLE_TABLE, SETTINGS + WATERMARK_SETTINGS))
        return rows
    opened.started = True
    return _run(cfg, run, device)


def check_eval_sizes(cfg: DictConfig, n_reference: int, n_samples: int) -> None:
    """The k-NN metrics need more than k points on each side: refuse a run whose reference split
    or per-generation sample is too small for ``eval.k`` before it starts."""
    k = int(cfg.eval.k)
    n_real = n_reference if cfg.eval.n_real is None else min(int(cfg.eval.n_real), n_reference)
    n_fake = n_samples if cfg.eval.n_fake is None else min(int(cfg.eval.n_fake), n_samples)
    if k < 1:
        raise MadmarkError(f"eval.k={k} neighbours: the k-NN metrics need k >= 1",
                           "set eval.k=5 (MAD's choice)")
    if min(n_real, n_fake) <= k:
        most = min(n_real, n_fake) - 1
        fewer = f"fewer neighbours (eval.k={most}), " if most >= 1 else ""
        raise MadmarkError(f"eval.k={k} neighbours need more than {k} samples on each side, but "
                           f"{n_real} reference and {n_fake} generated samples per generation "
                           f"are evaluated (data {data_name(cfg)}: reference split {n_reference}, "
                           f"{n_samples} samples drawn per generation)",
                           f"use {fewer}more data (more images, or a larger data.n_reference / "
                           "loop.n_synthetic), or set eval.enabled=false")


#: filter.method -> what flags the pool: the run's watermark detector, or a learned detector
FILTER_METHODS = ("watermark", "classifier")


def filter_method(cfg: DictConfig) -> str | None:
    """The enabled filter's detector (``filter.method``; configs without it filter with the
    watermark), or None without a filter."""
    filter_cfg = cfg.get("filter")
    if filter_cfg is None or not bool(filter_cfg.enabled):
        return None
    method = str(filter_cfg.get("method", "watermark"))
    if method not in FILTER_METHODS:
        raise MadmarkError(f"filter.method={method} is not one of {', '.join(FILTER_METHODS)}",
                           "choose filter=detector (the watermark's) or filter=classifier")
    return method


def attach_watermark(cfg: DictConfig, engine: LoopEngine, run_wm: RunWatermark | None) -> None:
    """Add the watermark stage, the watermark filter stage and the watermark columns to the
    engine."""
    filter_cfg = cfg.get("filter")
    filtering = filter_method(cfg) == "watermark"
    if run_wm is None:
        if filtering:
            raise MadmarkError("filter=detector needs a watermark to detect, but watermark=none",
                               "add watermark=spread_spectrum (or another method), use "
                               "filter=classifier (a learned detector), or filter=none")
        return
    if run_wm.marks:
        engine.watermark = WatermarkStage(run_wm.mark, run_wm.method_name, detect=run_wm.own_flags)
    settings = run_wm.settings()
    engine.evaluators.append(lambda t, samples, model: dict(settings))
    if filtering:
        alpha = float(filter_cfg.alpha)
        if not 0 < alpha < 1:
            raise MadmarkError(f"filter.alpha={alpha} is outside (0, 1)",
                               "set filter.alpha to a false-positive rate such as 0.01")
        engine.filter = FilterStage(run_wm.flag(alpha), min_pool=int(filter_cfg.min_pool),
                                    alpha=alpha)


def check_eval_config(cfg: DictConfig, splits, settings: LoopSettings, text: bool) -> None:
    """Refuse eval sizes the k-NN metrics cannot use (images, vectors, and text with
    ``eval.text_features``) and CAS without labelled images, before the engine is built."""
    if cfg.eval.enabled and (not text or bool(cfg.eval.get("text_features", True))):
        check_eval_sizes(cfg, len(splits.reference),
                         settings.n_synthetic if settings.n_synthetic > 0 else settings.n_real)
    if not text and bool(cfg.eval.get("cas", False)):   # absent from configs recorded before it
        check_cas_data(splits, data_name(cfg))


def attach_image_evaluation(cfg: DictConfig, engine: LoopEngine, splits,
                            device: torch.device) -> Optional[RunWatermark]:
    """The evaluators, watermark stage and filters of a run on images or vectors; returns the
    run's watermark (None without)."""
    engine.evaluators.append(spread_evaluator(splits.reference))
    metrics = None
    if cfg.eval.enabled:
        with dist.main_first():
            extractor = make_extractor(cfg.eval, splits, data_name(cfg), device)
        metrics = GenerationMetrics(cfg.eval, extractor, splits.reference, int(cfg.seed), device)
        engine.evaluators.append(metrics)
    if bool(cfg.eval.get("cas", False)):       # after metrics: it reuses their LeNet features
        engine.evaluators.append(build_cas(cfg.eval, splits, data_name(cfg), device,
                                           int(cfg.seed), metrics))
    if splits.kind == "vector" and splits.true_mean is not None:
        engine.evaluators.append(vector_truth_evaluator(splits.true_mean, splits.true_cov))
    with dist.main_first():
        run_wm = build_run_watermark(cfg, splits.sample_shape, splits.reference, device)
    attach_watermark(cfg, engine, run_wm)
    if filter_method(cfg) == "classifier":          # the learned detector (no watermark needed)
        with dist.main_first():                      # a LeNet for probe features is cached once
            classifier = build_classifier_filter(cfg.filter, splits, data_name(cfg),
                                                 int(cfg.seed), device)
        engine.filter = classifier.stage(int(cfg.filter.min_pool))
    if run_wm is not None:
        engine.evaluators.append(run_wm.artifact_evaluator(splits.train, splits.reference))
    return run_wm


def _run(cfg: DictConfig, run: RunDir, device: torch.device) -> list[dict]:
    torch.manual_seed(int(cfg.seed))
    rank0 = dist.is_main()
    source = instantiate(cfg.data)
    with dist.main_first():                  # a download or cache is filled once, by rank 0
        splits = source.load()
    make_model = instantiate(cfg.model, _partial_=True)
    accepts = getattr(make_model.func, "accepts", ("vector", "image"))
    if splits.kind not in accepts:
        raise MadmarkError(f"model {make_model.func.__name__} does not take {splits.kind} data",
                           f"choose a model for {splits.kind} data (e.g. model=pca_gmm for images)")
    text = splits.kind == "text"
    if text:                                 # the model's vocabulary is the tokenizer's
        make_model = functools.partial(make_model, **check_text_model(
            cfg, int(source.tokenizer.vocab_size)))
    settings = loop_settings(cfg, len(splits.train))
    check_eval_config(cfg, splits, settings, text)
    progress = GenerationProgress(settings.generations, enabled=bool(cfg.progress) and rank0)
    engine = LoopEngine(source=source, make_model=make_model,
                        family=LoopFamily(cfg.loop.family, cfg.loop.history), settings=settings,
                        checkpoints=run.checkpoints, device=device, progress=progress)
    if text:
        with dist.main_first():
            run_wm = attach_text(cfg, engine, source, splits, run.path if rank0 else None,
                                 device, data_name(cfg))
    else:
        run_wm = attach_image_evaluation(cfg, engine, splits, device)
    finished = run.checkpoints.finished()
    if run_wm is not None and finished:        # the key the finished generations were marked with
        run_wm.check_same_key(run.checkpoints.load(finished[-1], map_location="cpu")["row"])

    def save_grid(t: int, samples: torch.Tensor) -> None:     # before the checkpoint (engine)
        if rank0 and splits.kind == "image" and cfg.samples_grid > 0:
            run.save_grid(t, samples, n=int(cfg.samples_grid))

    def save(t: int, samples: torch.Tensor, rows: list[dict]) -> None:
        progress.close()
        if not rank0:
            return
        rows = results_rows(rows)
        run.write_results(rows)
        run.write_status("running", generations_done=t, generations=settings.generations)
        write_report(run.path)
        if tracking is not None:
            tracking.log_generations(rows)

    engine.sample_hooks.append(save_grid)
    engine.hooks.append(save)
    if rank0:
        run.write_status("running", generations_done=len(run.checkpoints.finished()),
                         generations=settings.generations)
    tracking = open_tracking(cfg, run) if rank0 else None      # None: logger=none
    with tracking or nullcontext():
        rows = results_rows(engine.run())
        progress.close()
        if not rank0:
            return rows
        run.write_results(rows)
        run.write_status("complete", generations_done=len(rows), generations=settings.generations)
        write_report(run.path)
        if tracking is not None:
            tracking.log_generations(rows)       # any a killed process checkpointed, unlogged
            tracking.log_plots()
    print(format_table(rows, CONSOLE_TABLE, SETTINGS + WATERMARK_SETTINGS))
    print(f"\nrun directory: {run.path}")
    return rows


def main(args: list[str]) -> int:
    try:
        args = torchrun_args("run", args)
    except MadmarkError as error:
        return report_error(error)
    return run_hydra("run", run_loop, args)
