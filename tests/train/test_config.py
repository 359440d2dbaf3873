"""TrainConfig: bad values and YAML files refused with a clear error, every shipped config loads, the wine and
generic tabular configs share one training recipe."""
import math

import pytest

from kale_fast.train import TrainConfig


@pytest.mark.parametrize("values, error, match", [
    (dict(batchsize=3), ValueError, "unknown config key"),
    (dict(n_iter="10"), TypeError, "'n_iter' must be int"),
    (dict(lr_energy=True), TypeError, "'lr_energy' must be float"),
    (dict(objective="wgan"), ValueError, "'objective' must be one of"),
    (dict(batch_size=0), ValueError, "'batch_size' must be >= 1"),
    (dict(penalty=-1), ValueError, "'penalty' must be >= 0"),
    (dict(lr_energy=math.inf), ValueError, "'lr_energy' must be a finite number"),
    (dict(energy_clamp=math.nan), ValueError, "'energy_clamp' must be a finite number"),
    (dict(beta2=1.0), ValueError, r"'beta2' must be in \[0, 1\)"),
    (dict(name="../x"), ValueError, "'name' must be a folder name inside out_dir"),
    (dict(name="/tmp/x"), ValueError, "'name' must be a folder name inside out_dir"),
    (dict(name=".."), ValueError, "'name' must be a folder name inside out_dir"),
])
def test_bad_configs_are_rejected(values, error, match):
    with pytest.raises(error, match=match):
        TrainConfig.from_dict(values)


def test_a_yaml_key_given_twice_is_rejected(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("n_iter: 10\npenalty: 0.1\nn_iter: 20\n")
    with pytest.raises(ValueError, match="'n_iter' is given twice \\(line 3\\)"):
        TrainConfig.from_yaml(path)
    path.write_text("n_iter: 10\npenalty: 0.1\n")
    assert TrainConfig.from_yaml(path).run.n_iter == 10


def test_every_yaml_config_in_the_repository_loads():
    from pathlib import Path

    configs = sorted(Path("configs").glob("*.yaml"))
    assert configs
    for path in configs:
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize("stage", ["nvp_ml", "kale"])
def test_the_wine_and_generic_tabular_configs_train_with_one_recipe(stage):
    """A held-out table is run with tabular_*.yaml unchanged: they must train as the configs the wines were
    measured with (docs/RESULTS.md), differing only in which data they read, the run's name and its base run."""
    from kale_fast.cli_parser import CONFIGS_DIR
    from kale_fast.train.config import KEY_SECTIONS

    # the energy stage's flow keys come from its base run (tabular_kale.yaml names none of them)
    inherited = {"base", "latent_dim", "flow_layers", "flow_hidden", "flow_batch_norm"} if stage == "kale" else set()
    differing = {"name", "base_from", *inherited} | {key for key, section in KEY_SECTIONS.items() if section == "data"}
    keys = {name: {k: v for k, v in TrainConfig.from_yaml(CONFIGS_DIR / f"{name}_{stage}.yaml").to_dict().items()
                   if k not in differing}
            for name in ("redwine", "whitewine", "tabular")}
    assert keys["redwine"] == keys["whitewine"] == keys["tabular"]
