"""The Hydra config tree of madmark (``configs/<group>/<option>.yaml``), and the dataclass schemas
its groups start from, registered in Hydra's ConfigStore when this package is imported (Hydra
imports it to read the tree).

- ``run_schema`` is :class:`madmark.config_schema.RunSchema`, the top level of ``madmark run``'s
  config (``configs/config.yaml`` starts from it): the loop and eval groups and the run settings
  typed, the component groups open (each typed by its own option's schema below).
- ``trainer/schema`` is :class:`watermark.train.TrainerConfig` with its ``_target_``: every trainer
  setting is typed, its one default lives in that dataclass, and
  ``hydra.utils.instantiate(cfg.trainer)`` builds it.
- ``<group>/<option>_schema`` for every option of a component group (:data:`COMPONENT_GROUPS`:
  generative models, data sources) whose yaml names a ``_target_``: the typed fields of that
  class's constructor, with its defaults (:func:`madcore.structured.signature_schema`). The yaml
  starts from it (``defaults: [<option>_schema, _self_]``), so a mistyped or unknown key is refused
  at composition, and the class's signature is the one place a default lives (the yaml repeats a
  value only to document it; tests/madmark/test_component_configs.py checks they agree).

Adding a model or a data source is a class and a yaml naming it in ``_target_``; its schema is
derived here from the yaml.
"""
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from madcore.structured import signature_schema
from madmark.config_schema import RunSchema
from watermark.train import TrainerConfig

#: config groups whose options are components built from ``_target_``
COMPONENT_GROUPS = ("model", "data")
SCHEMA_SUFFIX = "_schema"


@dataclass
class TrainerSchema(TrainerConfig):
    _target_: str = "watermark.train.TrainerConfig"


def component_targets(group: str) -> dict[str, str]:
    """{option: dotted ``_target_``} of the yamls in ``configs/<group>/`` that name their own
    target (variants such as ``ddpm_tiny`` inherit theirs through their defaults list)."""
    out = {}
    for path in sorted((Path(__file__).parent / group).glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if target:
            out[path.stem] = str(target)
    return out


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunSchema)
    store.store(group="trainer", name="schema", node=TrainerSchema)
    for group in COMPONENT_GROUPS:
        for option, target in component_targets(group).items():
            store.store(group=group, name=option + SCHEMA_SUFFIX,
                        node=signature_schema(target, f"{option}_{group}_schema"))


register()
