"""GEBM.save / kf.load_gebm: a trained GEBM written in the safe format and read back exactly, with networks of a
user's own or kale_fast's (rebuilt from the recorded spec), and from a run folder; a crafted file runs no code."""
import pickle

import pytest
import torch

import kale_fast as kf
from kale_fast.models import MLP
from kale_fast.train import TrainConfig, load_run, train
from tests._helpers import TINIER, Payload


def _own_gebm(seed=0):
    torch.manual_seed(seed)
    return kf.GEBM(MLP(3, 2, (8,)), MLP(2, 1, (8,)), latent_dim=3)


def _same_weights(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_a_gebm_of_ones_own_networks_round_trips(tmp_path):
    gebm, log_partition = _own_gebm(), torch.tensor(0.37)
    gebm.save(tmp_path / "gebm.pt", log_partition)
    loaded, loaded_a = kf.load_gebm(tmp_path / "gebm.pt", base=MLP(3, 2, (8,)), energy=MLP(2, 1, (8,)))
    assert _same_weights(loaded, gebm) and not loaded.training and loaded.latent_dim == 3
    assert torch.equal(loaded_a, log_partition)
    x = torch.randn(5, 2)
    assert torch.equal(loaded.energies(x), gebm.energies(x))
    with pytest.raises(ValueError, match="networks of your own .* pass base= and energy="):
        kf.load_gebm(tmp_path / "gebm.pt")
    with pytest.raises(ValueError, match="do not match the weights"):
        kf.load_gebm(tmp_path / "gebm.pt", base=MLP(3, 2, (9,)), energy=MLP(2, 1, (8,)))
    with pytest.raises(ValueError, match="pass both base and energy"):
        kf.load_gebm(tmp_path / "gebm.pt", base=MLP(3, 2, (8,)))


def test_a_gebm_without_a_log_partition_loads_with_none(tmp_path):
    _own_gebm().save(tmp_path / "gebm.pt")
    assert kf.load_gebm(tmp_path / "gebm.pt", base=MLP(3, 2, (8,)), energy=MLP(2, 1, (8,))).log_partition is None


def test_bad_arguments_to_save_are_named(tmp_path):
    gebm = _own_gebm()
    with pytest.raises(TypeError, match="log_partition must be a one-element tensor"):
        gebm.save(tmp_path / "gebm.pt", 0.5)
    gebm.spec = {"network": MLP}
    with pytest.raises(TypeError, match="GEBM.spec must be JSON-able"):
        gebm.save(tmp_path / "gebm.pt")
    assert not list(tmp_path.iterdir())


def test_kale_fasts_networks_are_rebuilt_from_the_recorded_spec_and_a_run_folder_loads(tmp_path):
    config = TrainConfig.from_dict({**TINIER, "out_dir": str(tmp_path), "energy_clamp": -10.0,
                                    "spectral_norm": True})
    run = load_run(train(config, progress=False))
    run.gebm.save(tmp_path / "gebm.pt", run.log_partition)
    for source in (tmp_path / "gebm.pt", tmp_path / "tiny"):
        loaded, log_partition = kf.load_gebm(source)
        assert _same_weights(loaded, run.gebm) and torch.equal(log_partition, run.log_partition)
        x = torch.randn(7, 2)
        assert torch.equal(loaded.energies(x), run.gebm.energies(x))
        z = torch.randn(4, config.model.latent_dim)
        assert torch.equal(loaded.base(z), run.gebm.base(z))
    with pytest.raises(ValueError, match="is a run folder"):
        kf.load_gebm(tmp_path / "tiny", base=MLP(3, 2, (8,)), energy=MLP(2, 1, (8,)))
    with pytest.raises(FileNotFoundError, match="no such file or run folder"):
        kf.load_gebm(tmp_path / "nosuch.pt")
    with pytest.raises(ValueError, match="not a file of GEBM.save"):
        kf.load_gebm(tmp_path / "tiny" / "checkpoint.pt")


def test_loading_a_crafted_gebm_file_runs_no_code(tmp_path):
    marker = tmp_path / "marker"
    _own_gebm().save(tmp_path / "gebm.pt")
    saved = torch.load(tmp_path / "gebm.pt", weights_only=True)
    payload = pickle.dumps(Payload(marker))
    pickle.loads(payload)  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    torch.save({**saved, "spec": Payload(marker)}, tmp_path / "crafted.pt")
    with pytest.raises(ValueError, match="refuses to load"):
        kf.load_gebm(tmp_path / "crafted.pt", base=MLP(3, 2, (8,)), energy=MLP(2, 1, (8,)))
    assert not marker.exists()


def test_log_prob_knows_the_loaded_log_partition_and_other_files_are_named(tmp_path):
    """kf.load_gebm attaches the learned A: gebm.log_prob(x) needs no second argument (a flow base); gebm(x) and
    a GEBM without a known A say what to call instead; a CSV, an empty file or bytes say what they are."""
    torch.manual_seed(0)
    gebm = kf.GEBM(kf.models.RealNVP(2, 2, 8), MLP(2, 1, (8,)), latent_dim=2)
    with pytest.raises(ValueError, match="log_prob needs the log-partition A: pass log_partition="):
        gebm.log_prob(torch.randn(3, 2))
    with pytest.raises(TypeError, match=r"no single forward: gebm.energies\(x\)"):
        gebm(torch.randn(3, 2))
    gebm.save(tmp_path / "flow.pt", torch.tensor(0.25))
    loaded, log_partition = kf.load_gebm(tmp_path / "flow.pt", base=kf.models.RealNVP(2, 2, 8),
                                         energy=MLP(2, 1, (8,)))
    x = torch.randn(6, 2)
    assert torch.equal(loaded.log_prob(x), loaded.log_prob(x, log_partition))
    assert torch.equal(loaded.log_prob(x, torch.tensor(0.0)), loaded.log_prob(x) + 0.25)
    (tmp_path / "mix.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "noise.bin").write_bytes(bytes(range(200, 256)) * 3)
    for name, what in (("mix.csv", "text, starting 'a,b'"), ("empty.pt", "empty"),
                       ("noise.bin", "binary data of another format")):
        with pytest.raises(ValueError, match=f"not a file of GEBM.save .*this one is {what}"):
            kf.load_gebm(tmp_path / name)


def test_fp64_networks_get_fp64_latents_and_a_log_partition():
    """The latent prior is drawn in the networks' dtype: fp64 networks (as in gradcheck-style checks) sample and
    estimate A without a dtype mismatch, within Monte-Carlo error of the fp32 networks' on the same weights (fp64
    normal draws are another stream than fp32 ones under one seed)."""
    gebm32 = kf.GEBM(MLP(3, 2, (8,)), MLP(2, 1, (8,)), latent_dim=3)
    gebm64 = kf.GEBM(MLP(3, 2, (8,)), MLP(2, 1, (8,)), latent_dim=3).double()
    gebm64.load_state_dict({k: v.double() for k, v in gebm32.state_dict().items()})
    assert gebm64.latent(4).dtype == torch.float64 and gebm32.latent(4).dtype == torch.float32
    a64, se64 = gebm64.log_partition(2000, generator=torch.Generator().manual_seed(0))
    a32, se32 = gebm32.log_partition(2000, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(a64) and 0 < se64 < 1
    assert abs(a64 - a32) <= 4 * torch.hypot(se64, se32)
