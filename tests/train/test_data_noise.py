"""data_noise: Gaussian noise of a given standard deviation added to each maximum-likelihood training batch of a flow,
fresh each step from the run's generator; validation scores clean data, and 0 leaves the step as it was."""
import json

import pytest
import torch

from kale_fast.data import load_data
from kale_fast.train import TrainConfig, Trainer, load_run, train

FLOW_ML = dict(objective="ml", base="realnvp", latent_dim=3, flow_layers=2, flow_hidden=8, flow_batch_norm=True,
               batch_size=32, n_eval=64, log_every=2, validate_every=2)
DATA = torch.randn(200, 3, generator=torch.Generator().manual_seed(0)) ** 3


def _csv(tmp_path):
    rows = torch.randn(300, 3, generator=torch.Generator().manual_seed(1)) ** 3
    path = tmp_path / "table.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows.tolist()))
    return str(path)


def _expected_step(trainer: Trainer, noise: float):
    """The loss of the next base step, and the generator's state after it, redone by hand on a copy of the
    generator: the batch's rows, then (noise > 0) the noise of the batch's shape, from the same stream."""
    generator = torch.Generator().set_state(trainer.generator.get_state())
    batch = DATA[torch.randint(0, len(DATA), (FLOW_ML["batch_size"],), generator=generator)]
    if noise:
        batch = batch + noise * torch.randn(batch.shape, generator=generator)
    with torch.no_grad():
        trainer.gebm.base.train()
        saved = {k: v.clone() for k, v in trainer.gebm.base.state_dict().items()}
        loss = -trainer.gebm.base.log_prob(batch).mean()
        trainer.gebm.base.load_state_dict(saved)  # (batch norm's running statistics moved: put them back)
    return loss, generator.get_state()


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_the_step_trains_on_the_rows_plus_noise_of_that_std_drawn_from_the_run_generator(noise):
    trainer = Trainer.create(TrainConfig.from_dict({**FLOW_ML, "data_noise": noise}), torch.zeros(1, 3))
    for _ in range(3):
        loss, generator_after = _expected_step(trainer, noise)
        assert trainer.base_step(DATA)["base_loss"] == pytest.approx(loss.item(), rel=1e-6)
        # noise 0 draws nothing beyond the batch's rows: the stream of a run without the key, bit for bit
        assert torch.equal(trainer.generator.get_state(), generator_after)


def test_noise_changes_the_loss_and_a_run_is_reproducible_from_its_seed():
    def losses(noise):
        trainer = Trainer.create(TrainConfig.from_dict({**FLOW_ML, "data_noise": noise}), torch.zeros(1, 3))
        return [trainer.base_step(DATA)["base_loss"].item() for _ in range(4)]

    clean, noisy = losses(0.0), losses(0.5)
    assert clean[0] != noisy[0]  # the same rows, the same weights: only the noise differs at the first step
    assert losses(0.5) == noisy


def test_validation_scores_clean_data_and_a_resume_continues_the_noise_exactly(tmp_path):
    common = {**FLOW_ML, "dataset": _csv(tmp_path), "out_dir": str(tmp_path), "data_noise": 0.2, "n_iter": 12,
              "checkpoint_every": 6}
    run_dir = train(TrainConfig.from_dict({**common, "name": "straight"}), progress=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validations = {line["round"]: line["validation_nll"] for line in lines if "validation_nll" in line}
    best = load_run(run_dir)
    validation = load_data(best.config.data, best.config.run.seed).validation
    assert -best.gebm.base.log_prob(validation).mean().item() == pytest.approx(validations[best.rounds_done],
                                                                                rel=1e-6)
    last = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    train(TrainConfig.from_dict({**common, "name": "split", "n_iter": 6}), progress=False)
    resumed = train(TrainConfig.from_dict({**common, "name": "split"}), resume=True, progress=False)
    again = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(last["gebm"][k], again["gebm"][k]) for k in last["gebm"])
    clean = train(TrainConfig.from_dict({**common, "name": "clean", "data_noise": 0.0}), progress=False)
    clean_last = torch.load(clean / "checkpoint.pt", weights_only=True)
    assert not all(torch.equal(last["gebm"][k], clean_last["gebm"][k]) for k in last["gebm"])
    with pytest.raises(ValueError, match="data_noise"):  # a resume cannot change what a round does
        train(TrainConfig.from_dict({**common, "name": "split", "n_iter": 18, "data_noise": 0.1}), resume=True,
              progress=False)


@pytest.mark.parametrize("values, error, match", [
    (dict(data_noise=-0.1), ValueError, "'data_noise' must be >= 0"),
    (dict(data_noise=float("nan")), ValueError, "'data_noise' must be a finite number"),
    (dict(data_noise=float("inf")), ValueError, "'data_noise' must be a finite number"),
    (dict(data_noise="0.1"), TypeError, "'data_noise' must be"),
    (dict(data_noise=0.1, objective="kale"), ValueError, "'data_noise' smooths the "
     "training batches of a flow trained by maximum likelihood"),
])
def test_bad_values_are_refused_naming_the_key(values, error, match):
    with pytest.raises(error, match=match):
        TrainConfig.from_dict({**FLOW_ML, **values})
