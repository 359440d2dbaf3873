"""Links planted below a run folder or in out_dir's feature-network cache redirect no write (issue 20, item 8's
leftovers): the TensorBoard folder and the cache are refused while they hold a symbolic link, and TensorBoard's
event file gets a name that nothing planted beforehand can match."""
import os

import pytest
import torch

from kale_fast.train import TrainConfig, train

TINY = dict(name="tiny", dataset="8gaussians", n_train=64, n_test=32, hidden=4, depth=1, n_iter=2, n_iter_d_init=1,
            n_iter_d=1, batch_size=8, n_eval=16, sampler_steps=2, log_every=1, checkpoint_every=1,
            n_partition_samples=8)


def _config(tmp_path, **changes):
    return TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path / "runs"), **changes})


@pytest.fixture
def run_dir(tmp_path):
    pytest.importorskip("tensorboard")
    return train(_config(tmp_path), progress=False)


def _event_files(run_dir):
    return sorted(p for p in (run_dir / "tensorboard").iterdir() if "tfevents" in p.name)


def test_a_link_inside_the_tensorboard_folder_is_refused_on_resume(tmp_path, run_dir, victim):
    (run_dir / "tensorboard" / "events.out.tfevents.planted").symlink_to(victim)
    with pytest.raises(ValueError, match=r"holds symbolic links \(tensorboard/events\.out\.tfevents\.planted\)"):
        train(_config(tmp_path, n_iter=4), resume=True, progress=False)


def test_a_linked_folder_inside_the_tensorboard_folder_is_refused(tmp_path, run_dir):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_dir / "tensorboard" / "nested").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match=r"holds symbolic links \(tensorboard/nested\)"):
        train(_config(tmp_path, n_iter=4), resume=True, progress=False)
    assert not list(elsewhere.iterdir())


def test_the_metrics_log_refuses_a_tensorboard_folder_planted_as_a_link(tmp_path):
    """The check at the writer itself (after `prepare`, which also refuses it): a linked folder is not written."""
    pytest.importorskip("tensorboard")
    from kale_fast.train.metrics_log import MetricsLog

    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    (run_dir / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="the TensorBoard folder .*tensorboard is a symbolic link"):
        MetricsLog(run_dir, 0, announce=False)
    assert not list(elsewhere.iterdir())


def test_event_files_get_unguessable_names(tmp_path, run_dir):
    """TensorBoard opens its event file by name, following links; the name it is given ends in a random suffix, so a
    link planted under the name a resume would otherwise use (time, host, process) is never it."""
    first = _event_files(run_dir)
    train(_config(tmp_path, n_iter=4), resume=True, progress=False)
    names = [p.name for p in _event_files(run_dir)]
    assert len(names) == len(first) + 1
    suffixes = {name.rsplit(".", 1)[1] for name in names}
    assert len(suffixes) == len(names) and all(len(s) == 16 and int(s, 16) >= 0 for s in suffixes), names
    assert all(not p.is_symlink() for p in _event_files(run_dir))


@pytest.fixture
def digits():
    return torch.rand(20, 1, 8, 8) * 2 - 1, torch.arange(20) % 10


def test_a_feature_cache_folder_planted_as_a_link_is_refused(tmp_path, digits):
    from kale_fast.metrics.image_scores import cached_feature_network

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "feature-nets").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="the feature network cache .*feature-nets is a symbolic link"):
        cached_feature_network("digits", *digits, tmp_path / "feature-nets")
    assert not list(elsewhere.iterdir())


@pytest.mark.parametrize("planted", ["digits.pt", "other.pt"])
def test_a_link_in_the_feature_cache_is_refused(tmp_path, digits, victim, planted):
    """A cached file planted as a link: neither read (its weights would come from elsewhere) nor written through."""
    from kale_fast.metrics.image_scores import cached_feature_network

    cache = tmp_path / "feature-nets"
    cache.mkdir()
    (cache / planted).symlink_to(victim)
    with pytest.raises(ValueError, match=f"the feature network cache .* holds symbolic links \\({planted}\\)"):
        cached_feature_network("digits", *digits, cache)
    assert (cache / planted).is_symlink() and os.readlink(cache / planted) == str(victim)


def test_the_feature_cache_is_written_into_a_plain_folder(tmp_path, digits):
    from kale_fast.metrics.image_scores import cached_feature_network

    cache = tmp_path / "out" / "feature-nets"
    net = cached_feature_network("digits", *digits, cache)
    assert (cache / "digits.pt").is_file() and not (cache / "digits.pt").is_symlink()
    again = cached_feature_network("digits", *digits, cache)  # read back from the cache, weights only
    images = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(again(images), net(images), rtol=0, atol=0)
