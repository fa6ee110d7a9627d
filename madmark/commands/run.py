"""``madmark run [overrides]``: run (or resume) a self-consuming loop experiment.

    madmark run                                  # the default experiment (configs/config.yaml)
    madmark run data=gaussian model=gaussian loop.bias=0.8
    madmark run -m loop.bias=1.0,0.8 seed=0,1    # Hydra multirun sweep
    madmark run resume=outputs/default/<date-time>
    torchrun --standalone --nproc_per_node=4 -m madmark run model=ddpm device=cuda ...

Under torchrun (docs/scaling.md) every rank runs the loop; rank 0 picks the run directory and the
resume decision and broadcasts them, and only rank 0 writes (Hydra's own files included).
"""
from __future__ import annotations

import shutil
import time
from contextlib import nullcontext

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from eval.growth import add_growth
from madcore import dist
from loops.engine import LoopEngine, LoopSettings
from loops.families import LoopFamily
from loops.stages import FilterStage, WatermarkStage
from madmark.console import GenerationProgress, format_table
from madcore.errors import MadmarkError
from madmark.evaluation import spread_evaluator, vector_truth_evaluator
from madmark.hydra_app import report_error, run_hydra
from madmark.metrics import GenerationMetrics, make_extractor
from madmark.report import CONSOLE_TABLE, SETTINGS, WATERMARK_SETTINGS, write_report
from madmark.rundir import RunDir, environment
from madmark.run_opening import agree_on_run, backend, torchrun_args
from madmark.tracking import logger_config, open_tracking
from madmark.watermarking import RunWatermark, build_run_watermark


def resolve_device(name: str) -> torch.device:
    """The run's device; under torchrun a CUDA device (``auto``, ``cuda``, ``cuda:N``) becomes
    this process's GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
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


def run_loop(cfg: DictConfig) -> list[dict]:
    """Build the data source, model and loop from ``cfg`` and run it in its run directory (under
    torchrun: in every process, in the process group it starts; rank 0's rows are the result)."""
    dist.init(backend(cfg))
    try:
        return _run_loop(cfg)
    finally:
        dist.shutdown()


def _run_loop(cfg: DictConfig) -> list[dict]:
    run, cfg, resumed, complete = agree_on_run(cfg, check=logger_config)   # logger installed?
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
        print(f"run {run.path} is already complete")
        rows = [run.checkpoints.load(t)["row"] for t in run.checkpoints.finished()]
        print(format_table(rows, CONSOLE_TABLE, SETTINGS + WATERMARK_SETTINGS))
        return rows
    try:
        return _run(cfg, run, device)
    except BaseException as error:
        done = len(run.checkpoints.finished())
        if rank0 and not resumed and done == 0 and not isinstance(error, KeyboardInterrupt):
            shutil.rmtree(run.path, ignore_errors=True)   # nothing finished: leave no husk
        elif rank0:
            run.write_status("failed", generations_done=done, error=str(error).splitlines()[0]
                             if str(error) else type(error).__name__)
        raise


def with_growth(rows: list[dict]) -> list[dict]:
    """Rows with artifact growth factors (eval.growth.add_growth) when they carry artifacts."""
    if rows and "artifact_energy" in rows[0]:
        return add_growth(rows)
    return rows


def attach_watermark(cfg: DictConfig, engine: LoopEngine, run_wm: RunWatermark | None) -> None:
    """Add the watermark stage, the filter stage and the watermark columns to the engine."""
    filter_cfg = cfg.get("filter")
    filtering = filter_cfg is not None and bool(filter_cfg.enabled)
    if run_wm is None:
        if filtering:
            raise MadmarkError("filter=detector needs a watermark to detect, but watermark=none",
                               "add watermark=spread_spectrum (or another method), or filter=none")
        return
    if run_wm.marks:
        engine.watermark = WatermarkStage(run_wm.mark, run_wm.method_name)
    settings = run_wm.settings()
    engine.evaluators.append(lambda t, samples, model: dict(settings))
    if filtering:
        alpha = float(filter_cfg.alpha)
        if not 0 < alpha < 1:
            raise MadmarkError(f"filter.alpha={alpha} is outside (0, 1)",
                               "set filter.alpha to a false-positive rate such as 0.01")
        engine.filter = FilterStage(run_wm.flag(alpha), min_pool=int(filter_cfg.min_pool),
                                    alpha=alpha)


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
    settings = loop_settings(cfg, len(splits.train))
    progress = GenerationProgress(settings.generations, enabled=bool(cfg.progress) and rank0)
    engine = LoopEngine(source=source, make_model=make_model,
                        family=LoopFamily(cfg.loop.family, cfg.loop.history), settings=settings,
                        checkpoints=run.checkpoints, device=device, progress=progress)
    engine.evaluators.append(spread_evaluator(splits.reference))
    if cfg.eval.enabled:
        with dist.main_first():
            extractor = make_extractor(cfg.eval, splits, data_name(cfg), device)
        engine.evaluators.append(GenerationMetrics(cfg.eval, extractor, splits.reference,
                                                   int(cfg.seed), device))
    if splits.kind == "vector" and splits.true_mean is not None:
        engine.evaluators.append(vector_truth_evaluator(splits.true_mean, splits.true_cov))
    with dist.main_first():
        run_wm = build_run_watermark(cfg, splits.sample_shape, splits.reference, device)
    attach_watermark(cfg, engine, run_wm)
    if run_wm is not None:
        engine.evaluators.append(run_wm.artifact_evaluator(splits.train, splits.reference))

    def save(t: int, samples: torch.Tensor, rows: list[dict]) -> None:
        progress.close()
        if not rank0:
            return
        if splits.kind == "image" and cfg.samples_grid > 0:
            run.save_grid(t, samples, n=int(cfg.samples_grid))
        rows = with_growth(rows)
        run.write_results(rows)
        run.write_status("running", generations_done=t, generations=settings.generations)
        write_report(run.path)
        if tracking is not None:
            tracking.log_generations(rows)

    engine.hooks.append(save)
    if rank0:
        run.write_status("running", generations_done=len(run.checkpoints.finished()),
                         generations=settings.generations)
    tracking = open_tracking(cfg, run) if rank0 else None      # None: logger=none
    with tracking or nullcontext():
        rows = with_growth(engine.run())
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
