"""The Hydra config tree of madmark (``configs/<group>/<option>.yaml``), and the dataclass schemas
some groups start from, registered in Hydra's ConfigStore when this package is imported (Hydra
imports it to read the tree). ``trainer/schema`` is :class:`watermark.train.TrainerConfig` with its
``_target_``: every trainer setting is typed, its one default lives in that dataclass, and
``hydra.utils.instantiate(cfg.trainer)`` builds it."""
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from watermark.train import TrainerConfig


@dataclass
class TrainerSchema(TrainerConfig):
    _target_: str = "watermark.train.TrainerConfig"


ConfigStore.instance().store(group="trainer", name="schema", node=TrainerSchema)
