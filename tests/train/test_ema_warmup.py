"""ema_warmup: energy_ema's and base_ema's average with the decay min(a, (n + 1) / (n + 10)) at its n-th update
after the first (TensorFlow's num_updates rule), whose early average is polynomial-decay averaging."""
import math

import pytest
import torch
from torch import nn

from kale_fast.train import TrainConfig, Trainer, train
from kale_fast.train.trainer import moving_average

FLOW_ML = dict(objective="ml", base="realnvp", latent_dim=3, flow_layers=2, flow_hidden=8, flow_batch_norm=True,
               batch_size=32, n_eval=64, log_every=2, validate_every=2)
FLOW_GEBM = dict(base="realnvp", latent_dim=3, flow_layers=2, flow_hidden=8, hidden=16, depth=2, n_iter_d_init=2,
                 n_iter_d=2, batch_size=32, n_eval=64, sampler_steps=4, log_every=2, validate_every=2,
                 n_partition_samples=256)


def test_the_warmed_up_average_is_polynomial_decay_averaging_in_closed_form():
    # before the cap (n < 9 / (1 - a) - 10), update u's weight in the average of N updates is
    # 9 (u + 2)(u + 3)...(u + 9) / ((N + 1)(N + 2)...(N + 9)), and 10! / (the same) for the first, copied one
    network = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    average = moving_average(network, 0.999, warmup=True)
    n_updates = 20
    generator = torch.Generator().manual_seed(0)
    states = []
    for _ in range(n_updates):
        with torch.no_grad():
            for tensor in (*network.parameters(), network[1].running_mean, network[1].running_var):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
        network[1].num_batches_tracked += 1
        states.append({k: v.clone() for k, v in network.state_dict().items()})
        average.update_parameters(network)
    denominator = math.prod(range(n_updates + 1, n_updates + 10))
    weights = [math.factorial(10) / denominator] + [9 * math.prod(range(u + 2, u + 10)) / denominator
                                                     for u in range(1, n_updates)]
    assert sum(weights) == pytest.approx(1.0)
    assert weights[-1] > 20 * weights[n_updates // 2]  # the last steps dominate: about the last 10-20% of them
    averaged = average.module.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        expected = sum(w * state[key].double() for w, state in zip(weights, states))
        assert torch.allclose(averaged[key].double(), expected, atol=1e-5), key
    # a plain 0.999 average keeps 0.999^19 of the first state: far from the warmed-up one
    plain = moving_average(network, 0.999)
    for state in states:
        network.load_state_dict(state)
        plain.update_parameters(network)
    assert not torch.allclose(plain.module.state_dict()["0.weight"], averaged["0.weight"], atol=1e-2)


def _expected_average(states, decay, warmup):
    """The recurrence: copy the first state, then a = d a + (1 - d) w with d = decay, or with the warm-up
    d = min(decay, (n + 1) / (n + 10))."""
    expected = None
    for n, state in enumerate(states):
        step_decay = min(decay, (n + 1) / (n + 10)) if warmup else decay
        expected = state if expected is None else {k: step_decay * expected[k] + (1 - step_decay) * state[k]
                                                   for k in state}
    return expected


@pytest.mark.parametrize("stage", ["base", "energy"])
def test_both_averages_warm_up_then_hold_their_decay(stage):
    decay = 0.5  # reached at n = 8: 12 updates see the warm-up and the cap
    config = (dict(FLOW_ML, base_ema=decay) if stage == "base" else dict(FLOW_GEBM, energy_ema=decay))
    data = torch.randn(200, 3, generator=torch.Generator().manual_seed(0)) ** 3
    trainer = Trainer.create(TrainConfig.from_dict({**config, "ema_warmup": True}), data)
    network, average = ((trainer.gebm.base, trainer.base_average) if stage == "base"
                        else (trainer.gebm.energy, trainer.energy_average))
    states = []
    for _ in range(12):
        trainer.base_step(data) if stage == "base" else trainer.energy_step(data)
        states.append({k: v.detach().clone().double() for k, v in network.state_dict().items()})
    averaged = average.module.state_dict()
    expected = _expected_average(states, decay, warmup=True)
    assert all(torch.allclose(averaged[k].double(), expected[k], atol=1e-6) for k in expected)
    plain = _expected_average(states, decay, warmup=False)
    assert not all(torch.allclose(averaged[k].double(), plain[k], atol=1e-6) for k in expected)


def test_a_resume_continues_the_warm_up(tmp_path):
    rows = torch.randn(300, 3, generator=torch.Generator().manual_seed(1)) ** 3
    path = tmp_path / "table.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows.tolist()))
    common = {**FLOW_ML, "dataset": str(path), "out_dir": str(tmp_path), "base_ema": 0.99, "ema_warmup": True,
              "n_iter": 12, "checkpoint_every": 6}
    last = torch.load(train(TrainConfig.from_dict({**common, "name": "straight"}), progress=False)
                      / "checkpoint.pt", weights_only=True)
    train(TrainConfig.from_dict({**common, "name": "split", "n_iter": 6}), progress=False)
    again = torch.load(train(TrainConfig.from_dict({**common, "name": "split"}), resume=True, progress=False)
                       / "checkpoint.pt", weights_only=True)
    assert int(last["base_average"]["n_averaged"]) == 12
    assert all(torch.equal(last["base_average"][k], again["base_average"][k]) for k in last["base_average"])


@pytest.mark.parametrize("values", [dict(FLOW_ML), dict(FLOW_GEBM)])
def test_a_warm_up_without_an_average_is_refused(values):
    with pytest.raises(ValueError, match="'ema_warmup' warms up energy_ema's or base_ema's average"):
        TrainConfig.from_dict({**values, "ema_warmup": True})
