"""configs/model and configs/data: each option is typed by the schema of its ``_target_``'s
constructor (configs/__init__.py), and a yaml repeats the class's defaults, never contradicts
them — unless it is a documented variant, listed here with its reason."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf

import configs
from madcore.structured import parameters, signature_schema
from madmark.hydra_app import config_dir, group_choices

#: option -> why its values differ from its class's defaults
VARIANTS = {
    "model/ddpm_tiny": "a tiny CPU DDPM for smoke runs and tests (ddpm with smaller settings)",
    "model/vae_tiny": "a tiny CPU VAE for smoke runs and tests (vae with smaller settings)",
    "model/latent_diffusion_tiny": "a tiny CPU latent diffusion for smoke runs and tests",
    "model/wgan_gp_tiny": "a tiny CPU WGAN-GP for smoke runs and tests",
    "model/gpt_tiny": "a tiny CPU GPT for smoke runs and tests (gpt with smaller settings)",
    "data/photos256": "Photos at 256x256 for the invisible-watermark baselines (>= 256 px)",
}
OPTIONS = [f"{g}/{o}" for g in configs.COMPONENT_GROUPS for o in group_choices(g)]


def composed_group(option: str):
    group, name = option.split("/")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[f"{group}={name}"])[group]


def file_keys(option: str) -> dict:
    """The keys the yaml itself sets (its defaults list and inherited keys left out)."""
    cfg = OmegaConf.load(Path(configs.__file__).parent / f"{option}.yaml")
    return {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "defaults"}


@pytest.mark.parametrize("option", OPTIONS)
def test_every_key_is_a_parameter_of_the_target_with_its_default(option):
    cfg = composed_group(option)
    target = get_object(cfg._target_)
    params = parameters(target)
    for key, value in file_keys(option).items():
        if key == "_target_":
            continue
        assert key in params, f"{option}: {key} is not a parameter of {cfg._target_}"
        default = params[key].default
        if option in VARIANTS or (isinstance(value, str) and value.startswith("${")):
            continue
        if value == "???":                      # mandatory: the class has no default either
            assert default is params[key].empty, (option, key)
            continue
        if isinstance(default, tuple):
            default = list(default)
        assert value == default, (f"{option}: {key}: {value!r} in the yaml, {default!r} in "
                                  f"{cfg._target_} (change the class default, or list the "
                                  "yaml in VARIANTS with a reason)")


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_is_typed_by_its_targets_schema(option):
    cfg = composed_group(option)
    schema = OmegaConf.get_type(cfg)
    assert schema is not dict and schema.__name__.endswith("_schema"), (option, schema)
    assert set(cfg.keys()) == {"_target_", *parameters(get_object(cfg._target_))}
    own = file_keys(option)
    if "_target_" in own:                       # not a variant inheriting its base's target
        defaults = OmegaConf.load(Path(configs.__file__).parent / f"{option}.yaml").defaults
        assert f"{option.split('/')[1]}_schema" in defaults, option


def test_a_schema_holds_the_signature():
    from loops.models import DDPMModel

    schema = OmegaConf.structured(signature_schema(DDPMModel))
    assert schema._target_ == "loops.models.ddpm.DDPMModel"
    assert schema.channel_mult == [1, 2, 2] and schema.epochs is None and schema.dropout == 0.1
    with pytest.raises(Exception, match="timesteps"):
        schema.timesteps = "many"


@pytest.mark.parametrize("args, message", [
    (["model=vae", "model.latent_dim=abc"],
     "madmark: error: model.latent_dim='abc' is not an integer — set model.latent_dim=16"),
    (["model.n_components=abc"],
     "madmark: error: model.n_components='abc' is not an integer — set model.n_components=64"),
    (["model.tol=abc"], "madmark: error: model.tol='abc' is not a number — set model.tol=0.001"),
    (["data=gaussian", "model=gaussian", "data.dim=2.5"],
     "madmark: error: data.dim=2.5 is not an integer — set data.dim=8"),
])
def test_a_typed_component_key_is_refused_in_one_line(cli, tmp_path, args, message):
    code, _, err = cli("run", "loop.generations=1", "progress=false", *args)
    assert code == 2 and err.strip() == message, err
    assert err.count("\n") == 1 and not (tmp_path / "outputs").exists()
