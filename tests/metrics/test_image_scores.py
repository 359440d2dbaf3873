"""Image scores: feature-network files checked before use, KID seeded, FidScorer equal to fid_and_kid."""
import warnings

import pytest
import torch

from kale_fast.metrics.image_scores import DigitFeatures, FidScorer, fid_and_kid


def test_feature_network_files_are_checked(tmp_path):
    from kale_fast.metrics.image_scores import feature_network_from_file

    with pytest.raises(FileNotFoundError, match="DigitFeatures or of torch-fidelity's Inception-v3"):
        feature_network_from_file(tmp_path / "missing.pt", (1, 8, 8))
    torch.save(DigitFeatures(3).state_dict(), tmp_path / "digits-rgb.pt")
    with pytest.raises(ValueError, match="takes 3-channel images, the run's have 1"):
        feature_network_from_file(tmp_path / "digits-rgb.pt", (1, 8, 8))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "inception.pth")  # not DigitFeatures: read as Inception
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ModuleNotFoundError, match="needs torch-fidelity"):
            feature_network_from_file(tmp_path / "inception.pth", (1, 8, 8))
    else:
        with pytest.raises(ValueError, match="does not hold torch-fidelity's Inception-v3 weights"):
            feature_network_from_file(tmp_path / "inception.pth", (1, 8, 8))


def test_kid_is_seeded_and_fid_scorer_matches_fid_and_kid_without_the_buffer_warning():
    torch.manual_seed(0)
    net = DigitFeatures().eval()
    real, fake = torch.rand(60, 1, 8, 8) * 2 - 1, torch.rand(60, 1, 8, 8) ** 2 * 2 - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = torch.get_rng_state()
        first = fid_and_kid(real, fake, net, kid_subset_size=30)
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
        scorer = FidScorer(real, net)
        fids = scorer(fake), scorer(real[:30]), scorer(fake)
    assert not [w for w in caught if "extracted features in buffer" in str(w.message)]
    assert fid_and_kid(real, fake, net, kid_subset_size=30) == first
    assert fid_and_kid(real, fake, net, kid_subset_size=30, seed=1)["kid"] != first["kid"]
    assert first["kid_std"] > 0
    assert fids[0] == pytest.approx(first["fid"], rel=1e-6) and fids[2] == fids[0] and fids[1] < fids[0]
