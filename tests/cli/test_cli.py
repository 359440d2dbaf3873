"""The `kale-fast` command's errors: a user's mistake is one line on stderr and exit code 2 (its traceback behind
--debug or KALE_FAST_DEBUG=1), a device the machine lacks is refused by name, and a bug keeps its traceback."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import kale_fast.cli
from kale_fast.cli import main
from kale_fast.train import TrainConfig
from kale_fast.train.run_folder import RunFolderLock

TINY = dict(name="tiny", dataset="8gaussians", n_train=256, n_test=64, hidden=8, depth=1, n_iter=2,
            n_iter_d_init=1, n_iter_d=1, batch_size=16, n_eval=32, sampler_steps=2, log_every=1, checkpoint_every=1,
            n_partition_samples=16)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path)}))
    return path


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kale-fast ") and "error:" in lines[0] and "--debug" in lines[0], err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--penalty", "-1"], ["'penalty' must be >= 0"]),               # a config check (ValueError)
    (["--name", "../elsewhere"], ["'name' must be a folder name"]),  # ... another
    (["--dataset", "no/such.csv"], ["no/such.csv"]),                 # a missing data file
], ids=["value", "path-like-name", "missing-data"])
def test_a_user_mistake_is_one_line_and_exit_code_2(tmp_path, config_file, capsys, args, needles):
    assert main(["train", "--config", str(config_file), "--quiet", *args]) == 2
    _one_line_error(capsys, "kale-fast train: error:", *needles)
    assert not (tmp_path / "tiny" / "checkpoint.pt").exists()


def test_missing_files_and_bad_yaml_are_user_mistakes(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nosuch.yaml")]) == 2
    _one_line_error(capsys, "nosuch.yaml not found")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert main(["train", "--config", str(broken)]) == 2
    _one_line_error(capsys, "is not valid YAML")
    for verb in ("sample", "eval"):
        assert main([verb, "--run", str(tmp_path / "nosuch")]) == 2
        _one_line_error(capsys, f"kale-fast {verb}: error:", "holds no checkpoint.pt")


def test_a_run_folder_in_use_is_a_user_mistake(tmp_path, config_file, capsys):
    lock = RunFolderLock(tmp_path / "tiny")
    try:
        assert main(["train", "--config", str(config_file), "--quiet"]) == 2
    finally:
        lock.release()
    _one_line_error(capsys, "is in use")


@pytest.mark.parametrize("where", ["before", "after", "environment"])
def test_debug_shows_the_traceback(config_file, monkeypatch, where):
    args = ["train", "--config", str(config_file), "--penalty", "-1"]
    if where == "environment":
        monkeypatch.setenv("KALE_FAST_DEBUG", "1")
    else:
        args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    with pytest.raises(ValueError, match="'penalty' must be >= 0"):
        main(args)


def test_the_process_prints_one_line_and_exits_with_2(config_file):
    result = subprocess.run([sys.executable, "-m", "kale_fast.cli", "train", "--config", str(config_file),
                             "--lr-energy", "-1"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "'lr_energy' must be > 0" in result.stderr, result.stderr


@pytest.mark.parametrize("error", [
    lambda: np.reshape(np.zeros(3), 2),            # a ValueError raised inside numpy: ours to fix, not the user's
    lambda: torch.zeros(2) + torch.zeros(3),       # RuntimeError
    lambda: {}["key"],                             # KeyError
], ids=["numpy-value-error", "runtime-error", "key-error"])
def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch, error):
    monkeypatch.setattr(kale_fast.cli, "_eval", lambda args: error())
    with pytest.raises((ValueError, RuntimeError, KeyError)):
        main(["eval", "--run", str(tmp_path)])


# A device name this machine cannot use: unparsable, meta (no data), and a GPU it lacks.
BAD_DEVICES = ["meta", "nosuch", f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"]


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_device_the_machine_lacks_is_refused_for_every_verb(tmp_path, config_file, capsys, device):
    assert main(["train", "--config", str(config_file), "--device", device]) == 2
    _one_line_error(capsys, "'device' (--device)", device)
    config_file.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path), "device": device}))
    assert main(["train", "--config", str(config_file)]) == 2
    _one_line_error(capsys, "'device' (--device)")
    for verb in ("sample", "eval"):  # one line, no usage block
        assert main([verb, "--run", str(tmp_path / "tiny"), "--device", device]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and f"kale-fast {verb}: error: argument --device:" in err
    with pytest.raises(ValueError, match="config key 'device'"):
        TrainConfig(device=device)


def test_cpu_is_a_device_every_machine_has():
    assert TrainConfig(device="cpu").run.device == "cpu"


@pytest.mark.parametrize("argv, expected", [
    (["train", "--config", "toy_8gaussians", "--sampler", "nuts"], "invalid choice: 'nuts'"),
    (["train", "--config", "toy_8gaussians", "--sampler", "hcm"], "did you mean hmc?"),
    (["train", "--config", "toy_8gaussians", "--n-iterations", "5"], "did you mean --n-iter"),
    (["train", "--config", "toy_8gausians"], "did you mean toy_8gaussians"),
    (["trian"], "did you mean train?"),
    (["sample", "--run", "runs/x", "--n", "0"], "argument --n: expected an integer >= 1, got 0"),
])
def test_every_command_line_mistake_is_one_line_with_the_closest_match(argv, expected, capsys):
    assert main(argv) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and len(printed.err.splitlines()) == 1, printed.err
    assert printed.err.startswith("kale-fast") and expected in printed.err and "usage:" not in printed.err


def test_an_unknown_yaml_key_names_the_closest_key(tmp_path):
    (tmp_path / "typo.yaml").write_text("dataset: moons\nn_iterations: 5\nlr: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lr', 'n_iterations'\] \('lr': did you mean "
                                         r"lr_\w+.*\) \('n_iterations': did you mean n_iter"):
        TrainConfig.from_yaml(tmp_path / "typo.yaml")


def test_shipped_configs_are_found_by_name_and_a_path_still_works(tmp_path, capsys):
    from kale_fast.cli_parser import CONFIGS_DIR, config_path, shipped_configs

    assert {"toy_8gaussians", "toy_8gaussians_tuned", "digits"} <= set(shipped_configs())
    assert config_path("toy_8gaussians") == CONFIGS_DIR / "toy_8gaussians.yaml"
    assert config_path("configs/toy_8gaussians.yaml") == Path("configs/toy_8gaussians.yaml")
    for name in shipped_configs():  # every shipped config is a valid config
        TrainConfig.from_yaml(config_path(name))
    # the resolved config is printed at the start of training (the keys off their defaults; flags marked)
    assert main(["train", "--config", "toy_8gaussians", "--n-iter", "2", "--n-iter-d-init", "1", "--out-dir",
                 str(tmp_path), "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"config {CONFIGS_DIR / 'toy_8gaussians.yaml'} (* from flags") and "n_iter=2*" in out


def test_the_demo_requirements_are_pinned_as_the_tests_are():
    root = Path(__file__).resolve().parents[2]
    pins = lambda name: {line.split("#")[0].strip() for line in (root / name).read_text().splitlines()  # noqa: E731
                         if line.split("#")[0].strip()}
    assert pins("requirements-demo.txt") <= pins("requirements.txt")
    assert any(pin.startswith("torch==") for pin in pins("requirements-demo.txt"))
