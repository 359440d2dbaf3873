"""The Inception-v3 branch of feature_network_from_file, without torch-fidelity and without downloading anything:
torch-fidelity's network is replaced by a stand-in that reads its weights file as torch-fidelity does (a plain
torch.load, which unpickles code on torch < 2.6). What is checked is kale_fast's side: the user's file is read as
weights only (a pickled payload is refused before any network is built), torch-fidelity is handed a copy written
by kale_fast holding exactly the user's tensors (never the user's file), wrong weights are named, and the features
take [0, 1] images as torch-fidelity's uint8 RGB."""
import os
import pickle

import pytest
import torch
from torch import nn

from kale_fast.metrics.image_scores import InceptionFeatures, feature_network_from_file

# A small stand-in for the Inception weights: any state dict that is not DigitFeatures' is read as Inception's.
WEIGHTS = {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4)}


class _Payload:
    """Unpickling it creates the file `marker` (what an attacker's code could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class _FidelityInception(nn.Module):
    """What torchmetrics' NoTrainInceptionV3 does with feature_extractor_weights_path under torch-fidelity:
    torch.load the path (pickle allowed), then load_state_dict (strict). Records what it was given."""

    given = []

    def __init__(self, name, features_list, feature_extractor_weights_path):
        super().__init__()
        assert name == "inception-v3-compat" and features_list == ["2048"]
        self.conv = nn.Conv2d(3, 4, 3)
        loaded = torch.load(feature_extractor_weights_path, weights_only=False)
        type(self).given.append((feature_extractor_weights_path, loaded))
        self.load_state_dict(loaded)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return self.conv(x.float() / 255).mean((2, 3))


@pytest.fixture
def fidelity(monkeypatch):
    """torch-fidelity 'installed' as the stand-in above."""
    import torchmetrics.image.fid
    import torchmetrics.utilities.imports

    _FidelityInception.given = []
    monkeypatch.setattr(torchmetrics.utilities.imports, "_TORCH_FIDELITY_AVAILABLE", True)
    monkeypatch.setattr(torchmetrics.image.fid, "NoTrainInceptionV3", _FidelityInception)
    return _FidelityInception


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Payload(path)))  # the payload is live: plain unpickling runs it
    assert path.exists()
    path.unlink()
    yield path
    assert not path.exists(), "loading the crafted file ran its code"


def test_inception_weights_reach_torch_fidelity_as_a_copy_of_tensors(tmp_path, fidelity):
    torch.save(WEIGHTS, tmp_path / "pt_inception.pth")
    net = feature_network_from_file(tmp_path / "pt_inception.pth", (1, 8, 8))
    assert isinstance(net, InceptionFeatures) and net.num_features == 2048
    (path, loaded), = fidelity.given
    assert path != str(tmp_path / "pt_inception.pth")  # a file written by kale_fast, not the user's
    assert set(loaded) == set(WEIGHTS) and all(torch.equal(loaded[k], WEIGHTS[k]) for k in WEIGHTS)
    grey = torch.rand(2, 1, 8, 8)  # [0, 1] grey images: repeated to RGB, scaled to bytes
    torch.testing.assert_close(net(grey), net.inception.conv((grey.expand(-1, 3, -1, -1) * 255).byte().float()
                                                             / 255).mean((2, 3)))


def test_inception_weights_from_safetensors(tmp_path, fidelity):
    from safetensors.torch import save_file

    save_file(WEIGHTS, tmp_path / "inception.safetensors")
    assert isinstance(feature_network_from_file(tmp_path / "inception.safetensors", (3, 8, 8)), InceptionFeatures)
    (_, loaded), = fidelity.given
    assert all(torch.equal(loaded[k], WEIGHTS[k]) for k in WEIGHTS)


def test_inception_weights_with_a_pickled_payload_are_refused_unrun(tmp_path, fidelity, marker):
    torch.save({**WEIGHTS, "conv.bias": _Payload(marker)}, tmp_path / "inception.pth")
    with pytest.raises(ValueError, match="inception.pth holds Python objects other than tensors .* refuses to load"):
        feature_network_from_file(tmp_path / "inception.pth", (1, 8, 8))
    assert fidelity.given == []  # refused before torch-fidelity saw anything


def test_weights_that_are_not_inception_s_are_named(tmp_path, fidelity):
    torch.save({"conv.weight": torch.randn(4, 3, 5, 5), "conv.bias": torch.randn(4)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth does not hold torch-fidelity's Inception-v3 weights: .*size "
                                         "mismatch"):
        feature_network_from_file(tmp_path / "other.pth", (1, 8, 8))


def test_without_torch_fidelity_the_install_line_is_named(tmp_path, monkeypatch):
    import torchmetrics.utilities.imports

    monkeypatch.setattr(torchmetrics.utilities.imports, "_TORCH_FIDELITY_AVAILABLE", False)
    torch.save(WEIGHTS, tmp_path / "inception.pth")
    with pytest.raises(ModuleNotFoundError, match="needs torch-fidelity: pip install torch-fidelity"):
        feature_network_from_file(tmp_path / "inception.pth", (1, 8, 8))


def test_the_copy_handed_to_torch_fidelity_is_gone_afterwards(tmp_path, fidelity):
    torch.save(WEIGHTS, tmp_path / "inception.pth")
    feature_network_from_file(tmp_path / "inception.pth", (1, 8, 8))
    (path, _), = fidelity.given
    assert not os.path.exists(path)
