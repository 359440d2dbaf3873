"""Tabular data: reading tables, the correlation filter, the 'random' and 'dkef' splits, pre-split .npz files, the
data_dir rule for relative paths, the split seed, and the data hash that resume and base_from check."""
import warnings

import numpy as np
import pytest
import torch

from kale_fast.data import data_dir, data_hash, drop_correlated, load_tabular, make_splits, read_table
from kale_fast.data.splits import split_dkef
from kale_fast.data.tabular import parse_columns
from kale_fast.metrics import gaussian_nll
from kale_fast.train import TrainConfig, evaluate, train
from kale_fast.data import load_data

TINY = dict(name="tiny", hidden=16, depth=2, n_iter=4, n_iter_d_init=2, n_iter_d=2, batch_size=32, n_eval=32,
            sampler_steps=4, log_every=2, checkpoint_every=2)
UCI_PRESENT = (data_dir() / "uci/winequality-red.csv").exists() and (data_dir() / "uci/winequality-white.csv").exists()
needs_uci = pytest.mark.skipif(not UCI_PRESENT, reason="shared UCI data (../shared/data/uci) not present")



def _load(**keys):
    """The splits of a config of these flat keys."""
    config = TrainConfig(**keys)
    return load_data(config.data, config.run.seed)

def _quantised_table(rows=300, seed=0):
    """Fresh correlated rows rounded to 0.1 or 1 (so that dequantisation has gaps to fill), float64."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, 4)) @ np.array([[1, 0.3, 0, 0], [0, 1, 0.5, 0], [0, 0, 1, 0.2], [0, 0, 0, 1.0]])
    scale = np.array([10, 1, 10, 1])
    return np.round((values + [5, 0, -2, 30]) * scale) / scale


def _write(path, values, header="a,b,c,d", delimiter=","):
    lines = ([header.replace(",", delimiter)] if header else []) + [delimiter.join(repr(float(v)) for v in row)
                                                                   for row in values]
    path.write_text("\n".join(lines) + "\n")
    return path


def _dkef_reference(values, seed, dequantise=True, whiten=True):
    """DKEF's loader steps as its code runs them (global NumPy RNG, full-matrix SVD), for the twin test."""
    data = values.copy()
    np.random.seed(seed)
    np.random.shuffle(data)
    if dequantise:
        for d in range(data.shape[1]):
            gap = np.median(np.diff(np.unique(data[:, d])))
            data[:, d] += (np.random.rand(data.shape[0]) * 2 - 1) * gap
    data = data[:, np.random.permutation(data.shape[1])]
    if whiten:
        data = data - data.mean(0)
        u, s, vt = np.linalg.svd(data[:10 ** 4])
        data = data @ (vt.T / s * np.sqrt(u.shape[0]))
    n_test = int(len(values) * 0.1)
    test, rest = data[-n_test:], data[:-n_test]
    n_valid = min(int(len(rest) * 0.1), 1000)
    return rest[:-n_valid], rest[-n_valid:], test


# --- the splits --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dequantise, whiten", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("seed", [1, 7])
def test_dkef_split_is_dkefs_loader_bit_for_bit(seed, dequantise, whiten):
    values = _quantised_table(seed=seed)
    ours = split_dkef(values, seed, dequantise, whiten)
    for mine, reference in zip(ours[:3], _dkef_reference(values, seed, dequantise, whiten)):
        assert np.array_equal(mine, reference)
    if not dequantise:  # the returned affine map acts on the unpermuted columns
        mean, transform = ours[3:]
        order = np.random.RandomState(seed).permutation(len(values))  # the row shuffle (dequantise draws nothing)
        torch.testing.assert_close(np.concatenate(ours[:3]), (values[order] - mean) @ transform, rtol=0, atol=1e-9)


@needs_uci
@pytest.mark.parametrize("name, expected", [("redwine", 15.01), ("whitewine", 15.42)])
def test_dkef_split_fingerprint_gaussian_nll(name, expected):
    """issue 11: a full-covariance Gaussian fitted to DKEF's train split scores these nats on its test rows."""
    config = TrainConfig(dataset=name, split="dkef")
    splits = load_data(config.data, config.run.seed)
    assert gaussian_nll(splits.train, splits.test)["nll_gaussian"] == pytest.approx(expected, abs=0.005)
    values, _ = read_table(data_dir() / f"uci/winequality-{'red' if name == 'redwine' else 'white'}.csv",
                           drop=("quality",))
    reference = _dkef_reference(values, seed=1)  # and bit for bit on the real file
    for mine, theirs in zip(splits, reference):
        assert torch.equal(mine, torch.from_numpy(theirs).float())


@needs_uci
def test_random_split_of_red_wine_is_the_packages_own():
    splits = load_tabular("redwine", split="random", split_seed=0)
    assert splits.train.shape == (1296, 11) and splits.validation.shape == (144, 11) and splits.test.shape == (159, 11)
    torch.testing.assert_close(splits.train.mean(0), torch.zeros(11), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(splits.train.T), torch.eye(11), atol=1e-3, rtol=0)
    assert gaussian_nll(splits.train, splits.test)["nll_gaussian"] == pytest.approx(15.97, abs=0.005)  # issue 11
    assert "quality" not in splits.columns and len(splits.columns) == 11


def test_random_split_dequantises_within_each_gap_and_whitening_can_be_off():
    values = _quantised_table()
    names = ("a", "b", "c", "d")
    raw = make_splits(values, names, "random", seed=3, dequantise=False, whiten=False)
    noisy = make_splits(values, names, "random", seed=3, dequantise=True, whiten=False)
    gaps = torch.tensor([0.1, 1.0, 0.1, 1.0])
    for a, b in zip((raw.train, raw.validation, raw.test), (noisy.train, noisy.validation, noisy.test)):
        difference = b - a  # the same rows in the same places, whether or not dequantised
        assert (difference >= -1e-5).all() and (difference < gaps + 1e-5).all()
        assert (difference.std(0) > 0.2 * gaps).all()
    kept = torch.cat([raw.train, raw.validation, raw.test]).double()
    assert torch.equal(kept.sort(0).values, torch.from_numpy(values).float().double().sort(0).values)
    assert torch.equal(raw.transform, torch.eye(4)) and torch.equal(raw.mean, torch.zeros(4))
    white = make_splits(values, names, "random", seed=3)
    torch.testing.assert_close(torch.cov(white.train.T), torch.eye(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(white.train, (noisy.train - white.mean) @ white.transform, atol=1e-4, rtol=0)


def test_split_seed_fixes_the_split_while_the_training_seed_changes(tmp_path):
    path = _write(tmp_path / "t.csv", _quantised_table())
    base = dict(dataset=str(path))
    assert torch.equal(_load(**base, split="dkef", seed=0).test,
                       _load(**base, split="dkef", seed=5).test)  # dkef: seed 1 unless told
    assert torch.equal(_load(**base, split="dkef", split_seed=1).test,
                       _load(**base, split="dkef").test)
    assert torch.equal(_load(**base, seed=0, split_seed=2).test,
                       _load(**base, seed=5, split_seed=2).test)
    # random without split_seed follows the training seed (the behaviour before the key existed)
    assert not torch.equal(_load(**base, seed=0).test, _load(**base, seed=5).test)
    assert torch.equal(_load(**base, seed=5).test,
                       _load(**base, seed=0, split_seed=5).test)


def test_correlation_filter_drops_greedily_lowest_index_first():
    rng = np.random.default_rng(0)
    a, c = rng.normal(size=(2, 500))
    values = np.stack([a, a + 0.01 * rng.normal(size=500), c, -a, c + rng.normal(size=500)], axis=1)
    kept, names = drop_correlated(values, "abcde", 0.98)
    assert names == ("c", "d", "e") and np.array_equal(kept, values[:, [2, 3, 4]])  # a, then b, had partners
    assert drop_correlated(values, "abcde", 0.99999)[1] == ("b", "c", "d", "e")  # |r(a, -a)| = 1 > |r(b, -a)|
    assert drop_correlated(values[:, [2, 4]], "ce", 0.98)[1] == ("c", "e")  # r(c, e) is about 0.7


# --- reading tables ----------------------------------------------------------------------------------------------

def test_semicolon_files_and_files_without_a_header_keep_every_row(tmp_path):
    values = _quantised_table(rows=40)
    for delimiter in (";", "\t", ","):
        read, names = read_table(_write(tmp_path / "h.csv", values, delimiter=delimiter))
        assert names == ("a", "b", "c", "d") and np.array_equal(read, values)
        read, names = read_table(_write(tmp_path / "n.csv", values, header=None, delimiter=delimiter))
        assert names == ("0", "1", "2", "3") and np.array_equal(read, values)  # the first row is data
    read, _ = read_table(_write(tmp_path / "s.csv", values, delimiter=";"), delimiter=";", header=True)
    assert np.array_equal(read, values)
    single = tmp_path / "one.csv"
    single.write_text("x\n1\n2\n3\n")
    assert read_table(single)[0].shape == (3, 1)
    with pytest.raises(ValueError, match="'header'"):
        read_table(_write(tmp_path / "h2.csv", values), header=False)
    with pytest.raises(ValueError, match="'delimiter', here ';'"):
        read_table(_write(tmp_path / "c.csv", values), delimiter=";")
    with pytest.raises(ValueError, match="config key 'delimiter' must be one character"):
        read_table(_write(tmp_path / "c.csv", values), delimiter=";;")


def test_columns_by_name_or_index(tmp_path):
    values = _quantised_table(rows=40)
    path = _write(tmp_path / "t.csv", values)
    read, names = read_table(path, columns=["c", 0])
    assert names == ("c", "a") and np.array_equal(read, values[:, [2, 0]])
    bare = _write(tmp_path / "bare.csv", values, header=None)
    assert np.array_equal(read_table(bare, columns=[3, 1])[0], values[:, [3, 1]])
    for columns, error, match in [
        (["x"], ValueError, "'columns': no column named 'x'"), ([4], ValueError, "index 4 is outside"),
        (["a", 0], ValueError, "names a column twice"), ([1.5], TypeError, "'columns' holds 1.5"),
        ([], TypeError, "non-empty list")]:
        with pytest.raises(error, match=match):
            read_table(path, columns=columns)
    with pytest.raises(ValueError, match="'columns': 'a' is a name, but the table has no header"):
        read_table(bare, columns=["a"])


def test_column_ranges_and_mixtures(tmp_path):
    values = np.random.default_rng(1).normal(size=(20, 6))
    path = _write(tmp_path / "t.csv", values, header="a,b,c,d,e,f")
    bare = _write(tmp_path / "bare.csv", values, header=None)
    for columns, kept in [("2-4", [2, 3, 4]), ("3:", [3, 4, 5]), ("3-", [3, 4, 5]), ([0, "4:"], [0, 4, 5]),
                          (["1-1", 5], [1, 5]), ("0-5", list(range(6)))]:
        for table in (path, bare):
            read, names = read_table(table, columns=columns)
            assert np.array_equal(read, values[:, kept]), (columns, table)
    assert np.array_equal(read_table(path, columns="f,0-1,c")[0], values[:, [5, 0, 1, 2]])
    assert read_table(path, columns="e, 1-2")[1] == ("e", "b", "c")
    for columns, match in [("2-6", "range '2-6' must run .* 6 columns \\(0 to 5\\)"), ("4-2", "range '4-2'"),
                           ("6:", "range '6:'"), ("0-2,b", "names a column twice"), ("2:4", "no column named '2:4'"),
                           ("-3", "no column named '-3'")]:
        with pytest.raises(ValueError, match=match):
            read_table(path, columns=columns)
    named = _write(tmp_path / "named.csv", values, header="a,2-3,c,d,e,f")  # a header name before a range
    assert read_table(named, columns=["2-3"])[1] == ("2-3",)


def test_columns_as_one_string():
    assert parse_columns("alcohol, 3,pH, 3-21, 4:") == ["alcohol", 3, "pH", "3-21", "4:"]
    assert TrainConfig(columns="0,3-21").data.columns == [0, "3-21"]  # YAML `columns: 0,3-21` as on the command line
    for text in ("", "a,,b", "a,"):
        with pytest.raises(ValueError, match="config key 'columns'"):
            parse_columns(text)


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    ("a,b,c\n", "a header line and no rows"),
    ("a,b\n1,nan\n", "line 2, column 'b' is NaN"),
    ("a,b\n1,2\n3\n", "line 3 holds 1 fields, the first line 2"),
    ("a,b\n1,2\n3,x\n", r"line 3, column 'b': 'x' is not a number.*leave the column out with the config key "
                        r"'columns', --columns"),
])
def test_bad_tables_are_rejected_with_a_clear_error(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_table(path)


@pytest.mark.parametrize("text, match", [
    ("a,b,c\n" + "\n".join(f"{i},{i * i % 7},{i % 3}" for i in range(10)), "at least 12 rows"),
    ("a,b,c\n" + "\n".join(f"{i},5,{i * i % 7}" for i in range(40)), r"column\(s\) \['b'\] hold a single value"),
    (",".join("abcdefghijkl") + "\n" + "\n".join(",".join(str((i * j + i * i) % 13) for j in range(1, 13))
                                                 for i in range(12)), "10 rows .* do not span the 12 columns"),
])
def test_tables_that_cannot_be_split_or_whitened_are_rejected(tmp_path, text, match):
    path = tmp_path / "data.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_tabular(str(path))


def test_a_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="KALE_FAST_DATA"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="KALE_FAST_DATA"):
        load_tabular("redwine", tmp_path)


def test_relative_paths_are_read_from_data_dir_when_it_is_set(tmp_path, monkeypatch):
    values = _quantised_table()
    (tmp_path / "folder").mkdir()
    _write(tmp_path / "folder" / "t.csv", values)
    _write(tmp_path / "t.csv", values + 1)
    monkeypatch.chdir(tmp_path)
    in_folder = _load(dataset="t.csv", data_dir="folder", whiten=False, dequantise=False)
    in_cwd = _load(dataset="t.csv", whiten=False, dequantise=False)
    torch.testing.assert_close(in_cwd.train, in_folder.train + 1)
    monkeypatch.setenv("KALE_FAST_DATA", str(tmp_path / "folder"))  # the environment serves named sets only
    assert torch.equal(_load(dataset="t.csv", whiten=False, dequantise=False).train, in_cwd.train)


def test_a_pre_split_npz_is_taken_as_it_is(tmp_path):
    rng = np.random.default_rng(0)
    arrays = dict(train=rng.normal(size=(50, 3)), validation=rng.normal(size=(10, 3)), test=rng.normal(size=(7, 3)))
    np.savez(tmp_path / "s.npz", **arrays)
    splits = _load(dataset="s.npz", data_dir=str(tmp_path))
    for key, split in zip(("train", "validation", "test"), splits):
        assert torch.equal(split, torch.from_numpy(arrays[key]).float())
    with pytest.raises(ValueError, match=r"\['split', 'whiten'\] do not apply"):
        load_tabular(str(tmp_path / "s.npz"), split="dkef", whiten=False)
    np.savez(tmp_path / "two.npz", train=arrays["train"], test=arrays["test"])
    with pytest.raises(ValueError, match=r"lacks the array\(s\) \['validation'\]"):
        load_tabular(str(tmp_path / "two.npz"))
    np.savez(tmp_path / "wide.npz", **{**arrays, "test": rng.normal(size=(7, 4))})
    with pytest.raises(ValueError, match="'test' is \\(7, 4\\)"):
        load_tabular(str(tmp_path / "wide.npz"))
    np.savez(tmp_path / "pickled.npz", **{**arrays, "train": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="holds arrays of Python objects"):  # never unpickled
        load_tabular(str(tmp_path / "pickled.npz"))


# --- config keys -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, error, match", [
    (dict(columns=3), TypeError, "'columns' must be list of str or int"),
    (dict(columns=[True]), TypeError, "'columns' must be list of str or int"),
    (dict(columns=[1.5]), TypeError, "'columns' must be list of str or int"),
    (dict(split="kfold"), ValueError, "'split' must be one of \\('random', 'dkef'\\)"),
    (dict(split_seed=1.0), TypeError, "'split_seed' must be int"),
    (dict(max_correlation=1.0), ValueError, "'max_correlation' must be in \\(0, 1\\)"),
    (dict(max_correlation=0), ValueError, "'max_correlation' must be in \\(0, 1\\)"),
    (dict(header="yes"), TypeError, "'header' must be bool"),
    (dict(whiten=1), TypeError, "'whiten' must be bool"),
])
def test_bad_data_keys_are_rejected(values, error, match):
    with pytest.raises(error, match=match):
        TrainConfig.from_dict(values)
    TrainConfig.from_dict(dict(columns=["a", 2], max_correlation=0.98, split="dkef", split_seed=3, header=False))


# --- the data hash -----------------------------------------------------------------------------------------------

def test_data_hash_tells_splits_apart():
    x = torch.arange(12.0).reshape(6, 2)
    assert data_hash([x, None, x]) == data_hash([x.clone(), None, x.clone()])
    assert len({data_hash([x, None, x]), data_hash([x, x, None]), data_hash([x.double(), None, x]),
                data_hash([x.reshape(3, 4), None, x]), data_hash([x + 1e-6, None, x])}) == 5


def test_resume_and_base_from_refuse_other_data(tmp_path):
    values = _quantised_table()
    path = _write(tmp_path / "t.csv", values)
    common = {**TINY, "dataset": str(path), "base": "realnvp", "latent_dim": 4, "flow_layers": 2, "flow_hidden": 8,
              "out_dir": str(tmp_path)}
    base_dir = train(TrainConfig.from_dict({**common, "name": "ml", "objective": "ml"}), progress=False)
    saved = torch.load(base_dir / "checkpoint.pt", weights_only=True)["data_hash"]
    assert saved == data_hash(_load(**common))
    assert evaluate(base_dir)["data_hash"] == saved
    energy = {**common, "energy_only": True, "base_from": str(base_dir)}
    with pytest.raises(ValueError, match="base_from run .* was trained on other data"):
        train(TrainConfig.from_dict({**energy, "name": "e1", "split_seed": 9}), progress=False)
    train(TrainConfig.from_dict({**energy, "name": "e2", "n_iter": 2}), progress=False)
    _write(path, values[::-1])  # the same file name, other rows: only the hash can tell
    with pytest.raises(ValueError, match="checkpoint .* was trained on other data"):
        train(TrainConfig.from_dict({**common, "name": "ml", "objective": "ml", "n_iter": 6}), resume=True,
              progress=False)
    with pytest.raises(ValueError, match="run .* was trained on other data"):  # nor evaluated on other data
        evaluate(base_dir)
    with pytest.raises(ValueError, match="another config .*split"):  # and data keys are not resumable changes
        train(TrainConfig.from_dict({**common, "name": "ml", "objective": "ml", "n_iter": 6, "split": "dkef"}),
              resume=True, progress=False)
    _write(path, values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same data and hashes: silent
        train(TrainConfig.from_dict({**energy, "name": "e2", "n_iter": 6}), resume=True, progress=False)
    state = torch.load(base_dir / "checkpoint.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "data_hash"}, base_dir / "checkpoint.pt")  # an older run
    with pytest.warns(UserWarning, match="records no data hash"):
        train(TrainConfig.from_dict({**energy, "name": "e3", "n_iter": 2}), progress=False)


def test_an_unknown_data_set_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'nosuch' is neither a data set of kale_fast \(toys: \['8gaussians'"):
        _load(dataset="nosuch", out_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.csv not found"):  # a file name: the file is missing
        _load(dataset=str(tmp_path / "missing.csv"), out_dir=str(tmp_path))
