"""GEBM methods (log-partition, KALE, log_prob, sampling) and the networks build_gebm makes."""
import numpy as np
import pytest
import torch

import kale_fast as kf
from kale_fast.train import TrainConfig, load_run, train
from tests._helpers import TINY


def test_gebm_log_partition_kale_and_log_prob():
    torch.manual_seed(0)

    class Linear(torch.nn.Module):  # E(x) = -mu x: KALE(N(mu, 1) || N(0, 1)) = mu^2 / 2, A = mu^2 / 2
        def forward(self, x):
            return -0.8 * x[:, 0]

    gebm = kf.GEBM(torch.nn.Identity(), Linear(), latent_dim=1)
    a, se = gebm.log_partition(200_000, chunk_size=30_000)
    assert abs(a.item() - 0.32) < 5 * se.item() + 1e-3 and 0 < se.item() < 0.01
    x = torch.randn(200_000, 1) + 0.8
    assert abs(gebm.kale(x, n_base=200_000).item() - 0.32) < 0.02
    with pytest.raises(TypeError, match="exact density"):
        gebm.log_prob(x, a)
    samples, result = gebm.sample(4000, kf.MALA(0.5), 100)  # the GEBM is N(0.8, 1)
    assert abs(samples.mean().item() - 0.8) < 0.1 and abs(samples.var().item() - 1) < 0.1


def test_spectral_norm_option_and_the_papers_32x32_networks_on_a_local_cifar10(tmp_path):
    import pickle

    from kale_fast.models import build_gebm

    gebm = build_gebm(TrainConfig.from_dict({**TINY, "spectral_norm": True}).model, (2,))
    for _ in range(30):  # power iterations run in train-mode forwards
        gebm.energies(torch.randn(8, 2))
    for layer in gebm.energy.net:
        if isinstance(layer, torch.nn.Linear):
            assert torch.linalg.matrix_norm(layer.weight, ord=2).item() == pytest.approx(1.0, rel=1e-3)
    assert not hasattr(build_gebm(TrainConfig.from_dict(TINY).model, (2,)).energy.net[0], "parametrizations")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [i % 10] * 4}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    config = TrainConfig.from_dict({**TINY, "dataset": "cifar10", "data_dir": str(tmp_path), "base": "sngan32",
                                    "latent_dim": 8, "spectral_norm": True, "n_test": 4, "batch_size": 4,
                                    "n_partition_samples": 8,
                                    "n_iter": 2, "n_iter_d_init": 1, "n_iter_d": 1, "out_dir": str(tmp_path)})
    _, gebm, _, rounds, _ = load_run(train(config, progress=False))
    assert rounds == 2 and gebm.base_sample(3).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"needs \(3, 32, 32\) images"):
        train(TrainConfig.from_dict({**TINY, "name": "bad", "dataset": "digits", "base": "sngan32",
                                     "out_dir": str(tmp_path)}), progress=False)
