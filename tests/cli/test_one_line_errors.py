"""Issue 20's errors that did not name their problem, the cases still giving a traceback when reviewed again: each
is now one line naming the input and what was expected (exit code 2)."""
import pytest
import yaml

from kale_fast.cli import main

TINY = dict(name="tiny", dataset="8gaussians", n_train=64, n_test=32, hidden=4, depth=1, n_iter=1, n_iter_d_init=1,
            n_iter_d=1, batch_size=8, n_eval=16, sampler_steps=2, log_every=1, checkpoint_every=1,
            n_partition_samples=8)


def _one_line_error(capsys, argv, verb, expected):
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"kale-fast {verb}: error: ") and expected in last, last


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from kale_fast.train import TrainConfig, train

    return train(TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path_factory.mktemp("runs"))}), progress=False)


@pytest.mark.parametrize("seed, expected", [(str(2 ** 70), f"expected an integer from 0 to {2 ** 32 - 1}"),
                                            ("-5", "expected an integer >= 0, got -5")])
def test_sample_seed_out_of_range_is_one_line(capsys, run_dir, seed, expected):
    """Was: 'Overflow when unpacking long long' from torch's generator (sample's --seed, as train's)."""
    _one_line_error(capsys, ["sample", "--run", str(run_dir), "--seed", seed], "sample",
                    f"argument --seed: {expected}")


def test_a_config_that_is_a_folder_is_named_as_one(tmp_path, capsys):
    """Was: 'config file ... not found' for a folder that exists."""
    (tmp_path / "conf.yaml").mkdir()
    _one_line_error(capsys, ["train", "--config", str(tmp_path / "conf.yaml")], "train",
                    f"config file {tmp_path / 'conf.yaml'} is a folder; expected a YAML file of config keys")


def test_a_seed_at_the_limit_is_taken(run_dir):
    assert main(["sample", "--run", str(run_dir), "--n", "4", "--steps", "1", "--seed", str(2 ** 32 - 1)]) == 0


def test_sample_n_beyond_any_run_is_one_line(capsys, run_dir):
    """Was: torch's 'randn(): argument 'size' failed to unpack ... Overflow when unpacking long long'."""
    _one_line_error(capsys, ["sample", "--run", str(run_dir), "--n", str(10 ** 20)], "sample",
                    f"argument --n: expected an integer from 1 to {10 ** 7}, got {10 ** 20}")


@pytest.mark.parametrize("flag, value, expected", [
    ("--columns", ",,", "argument --columns: config key 'columns': ',,' holds an empty item"),
    ("--max-correlation", "abc", "argument --max-correlation: invalid float (or none) value: 'abc'")])
def test_config_flags_that_do_not_parse_say_what_was_expected(tmp_path, capsys, flag, value, expected):
    """Was: 'invalid <lambda> value' (the flag's parser had no name, and the columns' own message was lost)."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path)}))
    _one_line_error(capsys, ["train", "--config", str(config), flag, value], "train", expected)
