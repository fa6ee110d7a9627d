"""``madmark train-watermark [overrides]``: train a learned watermarker and write its model card.

    madmark train-watermark                                   # 32-bit digits card on mnist5k
    madmark train-watermark recipe=rgb48 device=cuda          # the shipped RGB card (configs/recipe/)
    madmark train-watermark resume=<run_dir>                  # continue from the last checkpoint
    madmark train-watermark recipe=digits32_aware             # the autophagy-aware digits card
    madmark train-watermark regeneration=vae trainer.regeneration_prob=0.25 trainer.idempotence_weight=1
    torchrun --standalone --nproc_per_node=4 -m madmark train-watermark device=cuda ...

The run directory holds config.yaml, env.json, checkpoints/ (atomic, resumable), metrics.jsonl and
the card ``<card_name>.yaml`` + ``.safetensors`` with its held-out metrics (clean bit accuracy,
JPEG-50 bit accuracy, PSNR on the data source's reference split, never trained on), measured at the
card's strength: ``card_alpha`` when set (a post-training operating point), else
``trainer.alpha``. Every training setting is under ``trainer.`` (configs/trainer/,
:class:`watermark.train.TrainerConfig`), e.g. ``trainer.steps=500 trainer.quality_weight=0.2``.

Autophagy-aware training: ``trainer.idempotence_weight`` (a second marking should add nothing) and
``trainer.regeneration_prob`` with ``regeneration=vae`` (configs/regeneration/vae.yaml): the
regenerator, a VAE reconstruction fitted once on the source's clean train split (the cache
eval-watermark's regen_vae uses; :func:`madmark.regeneration.training_regenerator`), is built here
and handed to the trainer; the card's metrics then add ``idem_psnr_db`` and ``bit_acc_regen``
(bit accuracy after that reconstruction) when the respective option is on.

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
from madmark.regeneration import trainable_attack, training_regenerator
from madmark.run_opening import agree, backend, torchrun_args
from madmark.rundir import RunDir, environment
from watermark import save_card, train_watermarker
from watermark.train import TrainerConfig, evaluate


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


def check_aware(trainer: TrainerConfig, regeneration: DictConfig | None) -> bool:
    """Refuse bad autophagy-aware settings before anything is fitted or trained; returns whether
    a regenerator is to be built (regeneration set and trainer.regeneration_prob > 0)."""
    if not trainer.idempotence_weight >= 0:
        raise MadmarkError(f"trainer.idempotence_weight={trainer.idempotence_weight} must be >= 0",
                           "set e.g. trainer.idempotence_weight=1, or 0 for off")
    if not 0 <= trainer.regeneration_prob <= 1:
        raise MadmarkError(f"trainer.regeneration_prob={trainer.regeneration_prob} is not a "
                           "probability", "set a value in [0, 1], e.g. trainer.regeneration_prob=0.25")
    if trainer.regeneration_prob > 0 and regeneration is None:
        raise MadmarkError(f"trainer.regeneration_prob={trainer.regeneration_prob} needs a "
                           "regenerator", "add regeneration=vae, or set trainer.regeneration_prob=0")
    if regeneration is not None:
        trainable_attack(regeneration)
    return regeneration is not None and trainer.regeneration_prob > 0


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
    trainer = instantiate(cfg.trainer, _convert_="all")      # watermark.train.TrainerConfig
    regeneration = cfg.get("regeneration")                   # absent in runs that predate it
    build_regenerator = check_aware(trainer, regeneration)
    if dist.is_main():
        if not resumed:
            run.write_config(cfg)
        run.write_env({**environment(int(cfg.seed), device), "world_size": dist.world_size()})
    with dist.main_first():                  # a download or cache is filled once, by rank 0
        splits = instantiate(cfg.data).load()
    if splits.kind != "image":
        raise MadmarkError("train-watermark needs image data", "choose e.g. data=mnist5k or data=photos")
    regenerator = None
    if build_regenerator:
        data_name = str(cfg.data.get("_target_", "data")).rsplit(".", 1)[-1]
        if dist.is_main():
            print("regeneration: fitting or loading regeneration.vae on the clean train split",
                  flush=True)
        with dist.main_first():              # rank 0 fits and caches it, the others load it
            regenerator = training_regenerator(regeneration, splits, data_name, device)
    elif regeneration is not None and dist.is_main():
        print("regeneration is unused: trainer.regeneration_prob=0", flush=True)
    model, log = train_watermarker(splits.train, splits.reference, trainer, device=device,
                                   checkpoint_dir=str(run.path / "checkpoints"), resume=True,
                                   progress=True, regenerator=regenerator)
    if not dist.is_main():
        return
    if card_alpha is not None:
        model.alpha = card_alpha
    metrics = evaluate(model, splits.reference[:int(cfg.eval_images)], seed=int(cfg.seed),
                       idempotence=trainer.idempotence_weight > 0, regenerator=regenerator)
    metrics["n_eval_images"] = min(int(cfg.eval_images), len(splits.reference))
    metrics["eval_split"] = "reference (held out, never trained on)"
    training = {k: v for k, v in to_container(cfg).items() if k not in ("hydra", "debug", "resume")}
    card = save_card(model, run.path / f"{cfg.card_name}.yaml", training_config=training,
                     metrics=metrics, name=str(cfg.card_name))
    aware = "".join([f", second marking {metrics['idem_psnr_db']:.2f} dB"
                     if "idem_psnr_db" in metrics else "",
                     f", after regeneration {metrics['bit_acc_regen']:.4f}"
                     if "bit_acc_regen" in metrics else ""])
    print(f"held-out: bit accuracy {metrics['bit_acc']:.4f}, JPEG-50 "
          f"{metrics['bit_acc_jpeg50']:.4f}, PSNR {metrics['psnr']:.2f} dB{aware} "
          f"(N = {metrics['n_eval_images']}); card: {card}")


def main(args: list[str]) -> int:
    try:
        args = torchrun_args("train-watermark", args)
    except MadmarkError as error:
        return report_error(error)
    return run_hydra("train-watermark", train, args, config_name="train_watermark")
