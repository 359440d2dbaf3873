"""Every mistake in a user's input ends as one line naming the input and what was expected: through the CLI, exit
code 2 and no traceback (issue 20's list of errors that did not name their problem), and as a ValueError from the
Python API."""
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kale_fast.cli import main

TINY = dict(name="tiny", dataset="8gaussians", n_train=64, n_test=32, hidden=4, depth=1, n_iter=2, n_iter_d_init=1,
            n_iter_d=1, batch_size=8, n_eval=16, sampler_steps=2, log_every=1, checkpoint_every=1,
            n_partition_samples=8)


def _config(tmp_path, **changes):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "runs"), **changes}))
    return str(path)


def _table(tmp_path, name, text, **changes):
    """A config training on the table `text` (str or bytes), written to tmp_path/name."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return _config(tmp_path, dataset=str(path), **changes)


def _rows(n=60):
    return "".join(f"{i},{(i * 7) % 11},{i % 5 + 0.5 * i}\n" for i in range(n))


def _yaml_text(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "data.npz", **arrays)
    return _config(tmp_path, dataset=str(tmp_path / "data.npz"))


def _cifar(tmp_path, data, labels):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    return _config(tmp_path, dataset="cifar10", data_dir=str(tmp_path), base="sngan32", latent_dim=4)


# (case, argv from tmp_path, what the one line must say)
TRAIN_CASES = {
    "deeply nested YAML": (lambda t: ["--config", _yaml_text(t, "name: " + "[" * 5000 + "]" * 5000 + "\n")],
                           "nests lists or mappings at most 20 deep"),
    "unknown keys of mixed types": (lambda t: ["--config", _yaml_text(t, "name: x\n1: a\nfoo: b\n")],
                                    "config keys are names (strings), got 1 (int)"),
    "non-UTF-8 YAML": (lambda t: ["--config", _yaml_text(t, b"name: x\n# caf\xe9\n")],
                       "is not UTF-8 text: byte 0xe9 at line 2"),
    "non-UTF-8 CSV": (lambda t: ["--config", _table(t, "t.csv", b"a,b\n1,2\n3,\xe9\n")],
                      "t.csv is not UTF-8 text: byte 0xe9 at line 3"),
    "--seed 2**70": (lambda t: ["--config", _config(t), "--seed", str(2 ** 70)],
                     "config key 'seed' must be <= 4294967295"),
    "--seed -1": (lambda t: ["--config", _config(t), "--seed", "-1"], "config key 'seed' must be an integer from 0"),
    "--n-train 1e12": (lambda t: ["--config", _config(t), "--n-train", "1e12"],
                       "argument --n-train: invalid int value: '1e12'"),
    "--n-train 10**12": (lambda t: ["--config", _config(t), "--n-train", str(10 ** 12)],
                         "config key 'n_train' must be <= 100000000"),
    "a 300-character --name": (lambda t: ["--config", _config(t), "--name", "x" * 300],
                               "config key 'name' must be at most 255 bytes"),
    "an empty CSV cell": (lambda t: ["--config", _table(t, "t.csv", "a,b,c\n" + _rows() + "3,,4\n")],
                          "line 62, column 'b': '' is not a number (an empty field)"),
    "a non-number CSV cell": (lambda t: ["--config", _table(t, "t.csv", "a,b,c\n" + _rows() + "3,4,x1\n")],
                              "line 62, column 'c': 'x1' is not a number"),
    "a duplicate header name chosen by name": (
        lambda t: ["--config", _table(t, "t.csv", "a,a,c\n" + _rows()), "--columns", "a,c"],
        "the header names 2 columns 'a' (0-based indices [0, 1])"),
    "values beyond float32": (
        lambda t: ["--config", _table(t, "t.csv", "a,b,c\n" + _rows() + "1e39,1,2\n", whiten=False)],
        "column 'a' holds .* beyond float32's range"),
    ".npz that is not a zip": (lambda t: ["--config", _table(t, "t.npz", "hello")],
                               "t.npz is not a .npz archive"),
    ".npz holding objects": (lambda t: ["--config", _npz(t, train=np.array([{"a": 1}] * 4, dtype=object),
                                                         validation=np.zeros((2, 2)), test=np.zeros((2, 2)))],
                             "holds arrays of Python objects, which kale_fast does not load"),
    "complex .npz": (lambda t: ["--config", _npz(t, train=np.ones((4, 2)) * (1 + 1j), validation=np.zeros((2, 2)),
                                                 test=np.zeros((2, 2)))],
                     "'train' must hold finite real numbers \\(dtype complex128\\)"),
    "a CIFAR batch of the wrong size": (lambda t: ["--config", _cifar(t, np.zeros((2, 100), np.uint8), [1, 2])],
                                        "is not a CIFAR-10 batch: its b'data' must be uint8 \\(N, 3072\\)"),
    "CIFAR labels that are not one per image": (
        lambda t: ["--config", _cifar(t, np.zeros((2, 3072), np.uint8), [1])],
        "its b'labels' must be 2 integers \\(one per image\\)"),
    "a shipped config's path outside the repository": (
        lambda t: ["--config", str(t / "configs" / "tabular_nvp_ml.yaml")],
        "configs/tabular_nvp_ml.yaml not found; the shipped config of that name is `--config tabular_nvp_ml`"),
    "--columns on a toy data set": (lambda t: ["--config", _config(t), "--columns", "0"],
                                    "config key\\(s\\) \\['columns'\\] apply to tables; dataset '8gaussians' is a toy"),
    "--whiten on an image data set": (lambda t: ["--config", _config(t, dataset="digits", base="conv"), "--whiten",
                                                 "false"], "\\['whiten'\\] apply to tables; dataset 'digits' is an"),
}


def _one_line_error(capsys, argv, verb, expected):
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's usage errors exit
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after any progress bars
    assert "Traceback" not in err and last.startswith(f"kale-fast {verb}: error: "), err
    assert "usage:" not in err, err
    assert expected in last or re.search(expected, last), last  # a plain fragment or a pattern


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_input_errors_are_one_line(tmp_path, capsys, case):
    argv, expected = TRAIN_CASES[case]
    _one_line_error(capsys, ["train", *argv(tmp_path), "--no-eval", "--quiet"], "train", expected)
    assert not (tmp_path / "runs" / "tiny" / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run, copied by each test that alters it."""
    from kale_fast.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs")
    return train(TrainConfig.from_dict({**TINY, "out_dir": str(out)}), progress=False)


@pytest.fixture
def run_dir(trained, tmp_path):
    import shutil

    return shutil.copytree(trained, tmp_path / "runs" / "tiny", ignore=shutil.ignore_patterns(".lock"))


def test_report_of_a_malformed_summary_is_one_line(run_dir, capsys):
    (run_dir / "summary.json").write_text('{"mmd_gebm": 0.1,')
    _one_line_error(capsys, ["report", str(run_dir), str(run_dir)], "report", "summary.json is not JSON")
    (run_dir / "summary.json").write_text("[1, 2]")
    _one_line_error(capsys, ["report", str(run_dir), str(run_dir)], "report", "must hold a JSON object")
    (run_dir / "summary.json").write_bytes(b'{"a": "\xff"}')
    _one_line_error(capsys, ["report", str(run_dir), str(run_dir)], "report", "is not UTF-8 text")


def test_resume_of_a_non_json_metrics_log_is_one_line(tmp_path, run_dir, capsys):
    (run_dir / "metrics.jsonl").write_text("not json\n" + (run_dir / "metrics.jsonl").read_text())
    _one_line_error(capsys, ["train", "--config", _config(tmp_path, n_iter=4), "--resume", "--quiet", "--no-eval"],
                    "train", "metrics.jsonl: line 1 is not a metric line of kale_fast")


@pytest.mark.parametrize("content", [b"hello world\n", b"", b"PK\x03\x04 not a zip"])
def test_a_checkpoint_that_is_not_one_is_one_line(run_dir, capsys, content):
    (run_dir / "checkpoint.pt").write_bytes(content)
    _one_line_error(capsys, ["sample", "--run", str(run_dir)], "sample", "is not a file written by torch.save")


def test_a_gebm_spec_that_is_not_json_is_named(tmp_path, run_dir):
    import kale_fast as kf

    gebm, log_partition = kf.load_gebm(run_dir)
    gebm.save(tmp_path / "gebm.pt", log_partition)
    saved = torch.load(tmp_path / "gebm.pt", weights_only=True)
    torch.save({**saved, "spec": "{not json"}, tmp_path / "gebm.pt")
    with pytest.raises(ValueError, match="gebm.pt: its 'spec' must be the JSON text GEBM.save writes"):
        kf.load_gebm(tmp_path / "gebm.pt")
    torch.save({k: v for k, v in saved.items() if k != "state"}, tmp_path / "gebm.pt")
    with pytest.raises(ValueError, match=r"is not a whole GEBM.save file: it lacks \['state'\]"):
        kf.load_gebm(tmp_path / "gebm.pt")


def test_a_bogus_backend_variable_is_one_line_and_import_survives(tmp_path):
    command = [sys.executable, "-m", "kale_fast.cli", "train", "--config", _config(tmp_path), "--quiet", "--no-eval"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "KALE_FAST_BACKEND": "bogus"},
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "kale-fast train: error: the environment variable KALE_FAST_BACKEND must be one of"), result.stderr


def test_usage_errors_are_one_line(capsys):
    _one_line_error(capsys, ["train", "--config", "x.yaml", "--hidden", "wide"], "train",
                    "argument --hidden: invalid int value: 'wide'")


def test_a_sampler_state_that_is_not_one_is_named(tmp_path):
    import kale_fast as kf
    from kale_fast.samplers.state import SamplerState

    (tmp_path / "state.txt").write_text("hello world\n")
    with pytest.raises(ValueError, match="state.txt is not a readable sampler state") as error:
        SamplerState.load(tmp_path / "state.txt")
    assert "\n" not in str(error.value)
    result = kf.MALA(0.5).run(lambda z: 0.5 * (z ** 2).sum(1), torch.randn(8, 2), 3)
    result.state.save(tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    for tampered in ({**saved, "chains": "x"}, {**saved, "metric": [1]}):
        torch.save(tampered, tmp_path / "tampered.pt")
        with pytest.raises(ValueError, match="tampered.pt is a damaged sampler state"):
            SamplerState.load(tmp_path / "tampered.pt")


@pytest.mark.parametrize("tamper", ["weights", "optimizer", "best"])
def test_a_tampered_checkpoint_is_one_line(tmp_path, run_dir, capsys, tamper):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    if tamper == "weights":  # a weight of another shape: refused on resume, sample and eval
        name = next(iter(state["gebm"]))
        state["gebm"][name] = torch.zeros(3)
    elif tamper == "optimizer":
        state["energy_optimizer"]["param_groups"] = []
    torch.save(state, run_dir / "checkpoint.pt")
    if tamper == "best":  # a best.pt without its validation score
        torch.save({"gebm": state["gebm"], "rounds_done": 1, "log_partition": state["log_partition"]},
                   run_dir / "best.pt")
        _one_line_error(capsys, ["eval", "--run", str(run_dir)], "eval", "holds no validation score and round")
        return
    _one_line_error(capsys, ["train", "--config", _config(tmp_path, n_iter=4), "--resume", "--quiet", "--no-eval"],
                    "train", "checkpoint.pt: its state does not fit this run's networks and optimisers")
    if tamper == "weights":
        _one_line_error(capsys, ["sample", "--run", str(run_dir)], "sample", "the file was altered")
