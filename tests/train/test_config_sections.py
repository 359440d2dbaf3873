"""The config in sections (issue 18, step 5): flat keys in and out, six sections inside, each factory given its
section; configs saved in the flat format of every earlier version (config.yaml, a checkpoint's "config", a
GEBM.save spec) still load, resume and sample."""
import dataclasses
import json

import pytest
import torch
import yaml

import kale_fast as kf
from kale_fast.cli import main
from kale_fast.train import TrainConfig, load_run, train
from kale_fast.train.config import (KEY_SECTIONS, SECTIONS, DataConfig, ModelConfig, ObjectiveConfig,
                                    OptimiserConfig, RunConfig, SamplingConfig)

# config.yaml as `kale-fast train` wrote it before the config had sections (flat keys in the old order; it lacks
# energy_ema, base_ema, ema_warmup, lr_decay and lr_decay_patience, keys added since, which take their defaults).
# out_dir is filled in by the tests.
SAVED_BEFORE_SECTIONS = """\
name: old
out_dir: OUT_DIR
dataset: 8gaussians
data_dir: null
columns: null
delimiter: null
header: null
max_correlation: null
split: random
split_seed: null
dequantise: true
whiten: true
n_train: 256
n_test: 64
base: mlp
latent_dim: 2
hidden: 8
depth: 2
flow_layers: 5
flow_hidden: 100
flow_batch_norm: false
base_from: null
objective: kale
n_iter: 6
n_iter_d_init: 2
n_iter_d: 2
batch_size: 16
lr_energy: 0.0001
lr_base: 0.0001
beta1: 0.5
beta2: 0.999
penalty: 0.5
energy_clamp: null
spectral_norm: false
spectral_norm_head: true
init: torch
eval_idle_network: false
faithful: false
n_partition_samples: 16
energy_only: false
compile: false
sampler: mala
sampler_steps: 4
step_size: 0.05
n_eval: 32
feature_net: null
validate_every: 0
patience: 0
validation_smoothing: 0.0
log_every: 2
checkpoint_every: 3
seed: 0
device: cpu
"""


def _old_keys(out_dir) -> dict:
    return yaml.safe_load(SAVED_BEFORE_SECTIONS.replace("OUT_DIR", str(out_dir)))


def test_every_key_is_in_one_section_and_the_sections_are_the_six():
    assert list(SECTIONS) == ["data", "model", "objective", "optimiser", "sampling", "run"]
    assert [SECTIONS[name] for name in SECTIONS] == [DataConfig, ModelConfig, ObjectiveConfig, OptimiserConfig,
                                                     SamplingConfig, RunConfig]
    declared = [field.name for cls in SECTIONS.values() for field in dataclasses.fields(cls)]
    assert len(declared) == len(set(declared)) == len(KEY_SECTIONS)  # a flat key names one key of one section
    assert set(_old_keys("runs")) <= set(KEY_SECTIONS)  # every key an earlier version saved is still a key


def test_flat_keys_in_sections_out_and_flat_keys_back():
    config = TrainConfig(hidden=64, seed=3, sampler="hmc", lr_base=1e-3, columns=None, n_iter=7)
    assert (config.model.hidden, config.run.seed, config.sampling.sampler, config.optimiser.lr_base,
            config.run.n_iter) == (64, 3, "hmc", 1e-3, 7)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig(**config.to_dict()) == config
    assert config.replace(hidden=32).model.hidden == 32 and config.model.hidden == 64  # a copy
    with pytest.raises(ValueError, match="config key 'hidden' must be >= 1"):
        config.replace(hidden=0)  # checked again
    with pytest.raises(AttributeError, match=r"'seed' is config\.run\.seed"):
        config.seed  # noqa: B018 (the flat name says where the key lives)


def test_each_section_checks_its_keys_when_made_alone():
    with pytest.raises(ValueError, match=r"config key 'sampler' must be one of .*; did you mean hmc"):
        SamplingConfig(sampler="hcm")
    with pytest.raises(TypeError, match="config key 'batch_size' must be int, got 1.5"):
        OptimiserConfig(batch_size=1.5)
    with pytest.raises(ValueError, match="config key 'hidden' must be <= 65536"):
        ModelConfig(hidden=1 << 20)
    assert DataConfig(columns="0,3-5").columns == [0, "3-5"]


def test_rules_across_sections_and_faithful_set_keys_in_two_sections():
    with pytest.raises(ValueError, match="objective 'ml' trains a flow base"):
        TrainConfig(objective="ml")
    with pytest.raises(ValueError, match="config key 'validate_every' scores"):
        TrainConfig(validate_every=5)
    faithful = TrainConfig(base="sngan32", latent_dim=4, faithful=True)
    assert (faithful.model.spectral_norm, faithful.model.init, faithful.objective.eval_idle_network,
            faithful.model.energy_clamp) == (True, "xavier", True, -10.0)


def test_an_old_flat_config_yaml_loads_into_sections(tmp_path):
    (tmp_path / "config.yaml").write_text(SAVED_BEFORE_SECTIONS.replace("OUT_DIR", str(tmp_path)))
    config = TrainConfig.from_yaml(tmp_path / "config.yaml")
    old = _old_keys(tmp_path)
    new_keys = {"energy_ema": 0.0, "base_ema": 0.0, "ema_warmup": False, "lr_decay": 1.0,  # at their defaults
                "lr_decay_patience": 0, "data_noise": 0.0}
    assert config.to_dict() == {**old, **new_keys}  # the same keys and values
    assert (config.model.hidden, config.objective.penalty, config.optimiser.batch_size, config.sampling.sampler_steps,
            config.run.checkpoint_every, config.data.n_train) == (8, 0.5, 16, 4, 3, 256)
    assert yaml.safe_load(config.to_yaml()) == config.to_dict()  # a new config.yaml is the same flat format


@pytest.fixture
def old_run(tmp_path):
    """A run folder whose config.yaml and checkpoint config are in the flat format of before the sections."""
    old = _old_keys(tmp_path)
    run_dir = train(TrainConfig.from_dict(old), progress=False)
    (run_dir / "config.yaml").write_text(SAVED_BEFORE_SECTIONS.replace("OUT_DIR", str(tmp_path)))
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**state, "config": old}, run_dir / "checkpoint.pt")
    return run_dir


def test_an_old_run_folder_loads_resumes_and_samples(tmp_path, old_run):
    run = load_run(old_run)
    assert run.config.model.hidden == 8 and run.rounds_done == 6
    gebm, log_partition = kf.load_gebm(old_run)
    assert torch.equal(log_partition, run.log_partition)
    resumed = train(TrainConfig.from_yaml(old_run / "config.yaml", {"n_iter": 8}), resume=True, progress=False)
    assert load_run(resumed).rounds_done == 8
    assert main(["sample", "--run", str(old_run), "--n", "8", "--steps", "2"]) == 0


def test_an_old_gebm_file_with_a_whole_flat_config_loads(tmp_path, old_run):
    """GEBM.save files record the networks' keys: the model section's now, every key before."""
    run = load_run(old_run)
    assert set(run.gebm.spec["config"]) == {field.name for field in dataclasses.fields(ModelConfig)}
    run.gebm.save(tmp_path / "new.pt", run.log_partition)
    saved = torch.load(tmp_path / "new.pt", weights_only=True)
    old_spec = {**json.loads(saved["spec"]), "config": _old_keys(tmp_path)}  # GEBM.save writes the spec as JSON
    torch.save({**saved, "spec": json.dumps(old_spec)}, tmp_path / "old.pt")
    x = torch.randn(5, 2)
    for name in ("new.pt", "old.pt"):
        gebm, _ = kf.load_gebm(tmp_path / name)
        assert torch.equal(gebm.energies(x), run.gebm.energies(x)), name
