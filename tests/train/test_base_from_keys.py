"""base_from: a second stage takes the flow base's network keys from the base run unless it sets them."""
from pathlib import Path

import pytest
import torch
import yaml

from kale_fast.train import TrainConfig, load_run, train
from kale_fast.train.loop import FLOW_NETWORK_KEYS

STAGE = dict(n_iter=4, n_iter_d_init=2, n_iter_d=2, batch_size=32, n_eval=32, sampler_steps=4, log_every=2,
             checkpoint_every=2, validate_every=2, n_partition_samples=128, hidden=16, depth=2)


@pytest.fixture
def base_run(tmp_path):
    rows = torch.randn(200, 3, generator=torch.Generator().manual_seed(2))
    table = tmp_path / "table.csv"
    table.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows.tolist()))
    data = dict(dataset=str(table), out_dir=str(tmp_path))
    train(TrainConfig.from_dict({**STAGE, **data, "name": "base", "objective": "ml", "base": "zuko-maf",
                                 "latent_dim": "auto", "flow_layers": 2, "flow_hidden": 8}), progress=False)
    return data


def test_a_second_stage_naming_no_network_keys_builds_the_base_runs(base_run, tmp_path, capsys):
    energy = {**STAGE, **base_run, "name": "kale", "base_from": "base", "energy_only": True}
    run_dir = train(TrainConfig.from_dict(energy), progress=True)
    assert "from the base run" in capsys.readouterr().out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert {key: saved[key] for key in FLOW_NETWORK_KEYS} == dict(
        base="zuko-maf", latent_dim=3, flow_layers=2, flow_hidden=8, flow_batch_norm=False)
    trained, base = load_run(run_dir), load_run(tmp_path / "base")
    assert all(torch.equal(a, b) for a, b in zip(trained.gebm.base.state_dict().values(),
                                                 base.gebm.base.state_dict().values()))


def test_a_network_key_set_otherwise_than_the_base_run_is_still_refused(base_run, tmp_path):
    energy = {**STAGE, **base_run, "name": "kale", "base_from": "base", "energy_only": True, "flow_hidden": 16}
    with pytest.raises(ValueError, match=r"flow_hidden: 8 there, 16 here"):
        train(TrainConfig.from_dict(energy), progress=False)
    assert not (tmp_path / "kale").exists()


def test_the_generic_second_stage_config_names_no_network_key():
    config = yaml.safe_load((Path(__file__).parents[2] / "configs" / "tabular_kale.yaml").read_text())
    assert not set(FLOW_NETWORK_KEYS) & set(config) and config["base_from"] == "tabular-nvp-ml"


def test_the_cli_header_shows_the_keys_the_base_run_supplies(base_run, tmp_path, capsys):
    from kale_fast.cli import main

    flags = [f"--{key.replace('_', '-')}={value}" for key, value in STAGE.items()]
    assert main(["train", "--config", "tabular_kale", "--dataset", base_run["dataset"], "--out-dir", str(tmp_path),
                 "--name", "kale", "--base-from", "base", "--no-eval", *flags]) == 0
    header = capsys.readouterr().out.split("\nTensorBoard")[0].split("training kale")[0]
    assert f"+ from the base run {tmp_path / 'base'}" in " ".join(header.split())
    for key, value in dict(base="zuko-maf", latent_dim=3, flow_layers=2, flow_hidden=8).items():
        assert f"{key}={value}+" in header.split(), key
    assert "base=mlp" not in header  # the default, which the file leaves unset, is not what the run builds
