"""madmark.config_schema: declared and implied types of ``madmark run``'s settings."""
import pickle

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from madcore.errors import MadmarkError
from madmark.commands.run import error_line
from madmark.config_schema import LoopSchema, RunSchema, check_config, declared, implied_types
from madmark.hydra_app import check_declared_overrides, config_dir, group_choices

PRESETS = group_choices("experiment")
ARMS = group_choices("arm")


@pytest.fixture(autouse=True)
def no_hydra_config_after():
    yield
    HydraConfig.instance().cfg = None          # later tests see no Hydra app


def composed(*overrides):
    """The job config of ``madmark run <overrides>`` with HydraConfig set (``${hydra:...}``)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        base = compose("config", overrides=[o for o in overrides if "." not in o.split("=")[0]])
    HydraConfig.instance().set_config(cfg)
    return cfg, base


@pytest.mark.parametrize("overrides", [[], *([f"experiment={p}"] for p in PRESETS),
                                       *(["experiment=autophagy_fresh_data", f"arm={a}"]
                                         for a in ARMS)])
def test_every_shipped_config_passes(overrides):
    cfg, base = composed(*overrides)
    check_config(cfg, implied_types(base))


def test_every_declared_key_is_in_the_config():
    cfg, _ = composed()
    for key, _, _ in declared():
        assert OmegaConf.select(cfg, key, default="absent") != "absent", key


def test_the_schema_is_a_structured_config():
    schema = OmegaConf.structured(RunSchema)     # what Hydra's ConfigStore takes
    assert OmegaConf.is_missing(schema.loop, "bias") and OmegaConf.is_missing(schema, "seed")


@pytest.mark.parametrize("override, message", [
    ("loop.bias=abc", "loop.bias='abc' is not a number — set loop.bias=0.8"),
    ("loop.bias=null", "loop.bias=null is not a number — set loop.bias=0.8"),
    ("seed=1.5", "seed=1.5 is not an integer — set seed=0"),
    ("seed=true", "seed=true is not an integer — set seed=0"),
    ("auto_resume=1", "auto_resume=1 is not true or false — set auto_resume=true or "
                      "auto_resume=false"),
    ("eval.features.epochs=x", "eval.features.epochs='x' is not an integer — "
                               "set eval.features.epochs=8"),
    # implied by the files (model and data keys are typed by their schemas at composition:
    # tests/madmark/test_component_configs.py)
    ("filter.min_pool=abc", "filter.min_pool='abc' is not a number — set filter.min_pool=64"),
    ("filter.alpha=abc", "filter.alpha='abc' is not a number — set filter.alpha=0.01"),
])
def test_a_wrong_type_is_named_with_its_fix(override, message):
    """In a recorded config (a resumed run reopens .hydra/config.yaml: plain, untyped) and on the
    command line (before composition, which the registered run schema would refuse in its own
    words), with the same message."""
    key, _, _ = override.partition("=")
    cfg, base = composed()
    plain = OmegaConf.create(OmegaConf.to_container(cfg))
    OmegaConf.update(plain, key, OverridesParser.create().parse_override(override).value())
    with pytest.raises(MadmarkError) as caught:
        check_config(plain, implied_types(base))
    assert str(caught.value) == message
    if key in {k for k, _, _ in declared()}:
        with pytest.raises(MadmarkError) as caught:
            check_declared_overrides([override])
        assert str(caught.value) == message


@pytest.mark.parametrize("override", ["loop.bias=abc", "seed=1.5", "eval.k=x", "progress=maybe",
                                      "loop.family=[1,2]"])
def test_composition_refuses_what_the_run_schema_refuses(override):
    with pytest.raises(ConfigCompositionException):
        composed(override)


def test_the_composed_config_is_typed_by_the_run_schema():
    cfg, _ = composed("experiment=autophagy_robustness")
    assert OmegaConf.get_type(cfg) is RunSchema and OmegaConf.get_type(cfg.loop) is LoopSchema
    assert [k for k in cfg if k != "hydra"][:7] == ["data", "model", "loop", "eval", "watermark", "filter",
                                    "logger"]            # config.yaml's order, as recorded


@pytest.mark.parametrize("overrides", [["seed=0,1,2"], ["loop.bias=0.5,1"], ["~seed"],
                                       ["seed=${nowhere}"], ["name=7"], ["resume_from=null"]])
def test_the_command_line_check_leaves_sweeps_and_interpolations(overrides):
    check_declared_overrides(overrides)


def test_a_swept_value_of_the_wrong_type_is_named():
    with pytest.raises(MadmarkError, match="seed='abc' is not an integer"):
        check_declared_overrides(["seed=0,abc"])


@pytest.mark.parametrize("override", ["loop.bias=1", "seed='7'", "loop.n_real=null",
                                      "model.n_components=32", "model.tol=1", "name=2024",
                                      "filter.min_pool=null"])
def test_values_of_the_right_type_pass(override):
    cfg, base = composed(override)
    check_config(cfg, implied_types(base))


def test_an_unresolvable_interpolation_is_one_error():
    cfg, base = composed("seed=${nowhere}")
    with pytest.raises(MadmarkError, match="seed cannot be resolved"):
        check_config(cfg, implied_types(base))


def test_status_lines_never_repeat_torchs_advice():
    advice = pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with "
                                    "`weights_only` set to `False` will likely succeed, but ...")
    line = error_line(advice)
    assert "refused by safe loading" in line and "will likely succeed" not in line
    assert error_line(ValueError("plain\nmore")) == "plain"
