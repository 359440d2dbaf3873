"""The CLI verbs end to end: train, sample, eval, --help and bench."""
import json
import subprocess
import sys

import pytest
import torch
import yaml

import kale_fast as kf
from kale_fast.cli import main
from tests._helpers import TINY


def test_cli_train_sample_eval(tmp_path, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path)}))
    assert main(["train", "--config", str(config_file), "--quiet", "--n-iter", "4", "--penalty", "0.5",
                 "--energy-clamp", "none"]) == 0
    run_dir = tmp_path / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"mmd_base", "mmd_gebm", "kale_held_out", "log_partition_mc"} <= set(summary)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["penalty"] == 0.5
    assert (run_dir / "samples.png").stat().st_size > 0 and (run_dir / "energy.png").stat().st_size > 0
    assert main(["sample", "--run", str(run_dir), "--sampler", "hmc", "--n", "50", "--steps", "3"]) == 0
    assert main(["sample", "--run", str(run_dir), "--n", "-5"]) == 2  # a usage mistake: one line, exit code 2
    assert "--n: expected an integer >= 1, got -5" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--feature-net", "features.pt"]) == 2
    assert "feature_net is for image runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"kale-fast {kf.__version__}"
    saved = torch.load(run_dir / "samples-hmc.pt")
    assert saved["samples"].shape == (50, 2) and torch.isfinite(saved["samples"]).all()
    (run_dir / "summary.json").unlink()
    assert main(["eval", "--run", str(run_dir)]) == 0
    assert (run_dir / "summary.json").exists()
    assert main(["train", "--config", str(config_file), "--n-iter", "ten"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_cli_train_help_describes_every_config_key(capsys):
    import dataclasses

    from kale_fast.train.config import SECTIONS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at spaces and after hyphens
    for section in SECTIONS:
        assert f"configkeys,{section}section" in text
    for field in (field for cls in SECTIONS.values() for field in dataclasses.fields(cls)):
        assert f"--{field.name.replace('_', '-')}" in text
        assert "".join(field.metadata["help"].split()) + f"(default:{field.default})" in text
    assert "--sampler{ula,mala,hmc,kinetic_langevin,chees}" in text and "--energy-clampFLOAT|none" in text


def test_cli_bench_runs_the_benchmark_suite(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kale_fast.cli", "bench", "--quick", "--ops", "integrators", "--out",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "integrators-cpu.json").exists() and "leapfrog_kick_drift" in out.stdout
