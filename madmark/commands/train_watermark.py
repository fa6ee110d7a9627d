"""``madmark train-watermark [overrides]``: train a learned watermarker and write its model card.

    madmark train-watermark                                   # 32-bit digits card on mnist5k
    madmark train-watermark recipe=rgb48 device=cuda          # the shipped RGB card (configs/recipe/)
    madmark train-watermark resume=<run_dir>                  # continue from the last checkpoint
    torchrun --standalone --nproc_per_node=4 -m madmark train-watermark device=cuda ...

The run directory holds config.yaml, env.json, checkpoints/ (atomic, resumable), metrics.jsonl and
the card ``<card_name>.yaml`` + ``.safetensors`` with its held-out metrics (clean bit accuracy,
JPEG-50 bit accuracy, PSNR on the data source's reference split, never trained on), measured at the
card's strength: ``card_alpha`` when set (a post-training operating point), else
``trainer.alpha``. Every training setting is under ``trainer.`` (configs/trainer/,
:class:`watermark.train.TrainerConfig`), e.g. ``trainer.steps=500 trainer.quality_weight=0.2``.

Under torchrun (docs/scaling.md) every rank trains (DDP, the global batch ``batch_size`` split
across ranks); rank 0 picks the run directory and broadcasts it, and only rank 0 writes.
"""
from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from madcore import dist
from madmark.commands.run import resolve_device
from madcore.errors import MadmarkError
from madmark.hydra_app import report_error, run_hydra, to_container
from madmark.run_opening import agree, backend, torchrun_args
from madmark.rundir import RunDir, environment
from watermark import save_card, train_watermarker
from watermark.train import evaluate


def open_run(cfg: DictConfig) -> tuple[RunDir, DictConfig, bool, None]:
    """The run directory and the config to train: Hydra's new folder, or the recorded one for
    ``resume=<dir>``; returns (run, config, resumed, None) for :func:`agree`."""
    if not cfg.resume:
        return RunDir(HydraConfig.get().runtime.output_dir), cfg, False, None
    run = RunDir(cfg.resume)
    if not run.exists():
        raise MadmarkError(f"resume={cfg.resume} is not a train-watermark run directory",
                           "pass the folder of an earlier madmark train-watermark run")
    return run, run.read_config(), True, None


def train(cfg: DictConfig) -> None:
    """Train in the process group it starts under torchrun (a no-op under plain python)."""
    dist.init(backend(cfg))
    try:
        _train(cfg)
    finally:
        dist.shutdown()


def _train(cfg: DictConfig) -> None:
    run, cfg, resumed, _ = agree(open_run, cfg)
    device = resolve_device(str(cfg.device))
    card_alpha = cfg.get("card_alpha")
    if card_alpha is not None:
        card_alpha = float(card_alpha)
        if not card_alpha > 0:
            raise MadmarkError(f"card_alpha={cfg.card_alpha} must be a positive strength",
                               "set e.g. card_alpha=0.025, or card_alpha=null for the trained alpha")
    if dist.is_main():
        if not resumed:
            run.write_config(cfg)
        run.write_env({**environment(int(cfg.seed), device), "world_size": dist.world_size()})
    with dist.main_first():                  # a download or cache is filled once, by rank 0
        splits = instantiate(cfg.data).load()
    if splits.kind != "image":
        raise MadmarkError("train-watermark needs image data", "choose e.g. data=mnist5k or data=photos")
    trainer = instantiate(cfg.trainer, _convert_="all")      # watermark.train.TrainerConfig
    model, log = train_watermarker(splits.train, splits.reference, trainer, device=device,
                                   checkpoint_dir=str(run.path / "checkpoints"), resume=True,
                                   progress=True)
    if not dist.is_main():
        return
    if card_alpha is not None:
        model.alpha = card_alpha
    metrics = evaluate(model, splits.reference[:int(cfg.eval_images)], seed=int(cfg.seed))
    metrics["n_eval_images"] = min(int(cfg.eval_images), len(splits.reference))
    metrics["eval_split"] = "reference (held out, never trained on)"
    training = {k: v for k, v in to_container(cfg).items() if k not in ("hydra", "debug", "resume")}
    card = save_card(model, run.path / f"{cfg.card_name}.yaml", training_config=training,
                     metrics=metrics, name=str(cfg.card_name))
    print(f"held-out: bit accuracy {metrics['bit_acc']:.4f}, JPEG-50 "
          f"{metrics['bit_acc_jpeg50']:.4f}, PSNR {metrics['psnr']:.2f} dB "
          f"(N = {metrics['n_eval_images']}); card: {card}")


def main(args: list[str]) -> int:
    try:
        args = torchrun_args("train-watermark", args)
    except MadmarkError as error:
        return report_error(error)
    return run_hydra("train-watermark", train, args, config_name="train_watermark")
