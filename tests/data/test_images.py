"""Image loaders reading local files, and a missing optional package named with its install line."""
import numpy as np
import pytest


def test_image_loaders_read_local_files(tmp_path):
    import pickle

    from kale_fast.data.images import load_cifar10, load_digits, load_npz, load_png_folder

    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.min() >= -1 and images.max() <= 1 and labels.max() == 9
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):  # the standard layout, tiny
        batch = {b"data": np.full((2, 3072), 10 * i, dtype=np.uint8), b"labels": [i, i + 1]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    cifar, cifar_labels = load_cifar10(folder)
    assert cifar.shape == (10, 3, 32, 32) and cifar_labels.tolist()[:2] == [1, 2]
    np.savez(tmp_path / "set.npz", images=np.zeros((4, 6, 6, 3), dtype=np.uint8), labels=np.arange(4))
    npz, npz_labels = load_npz(tmp_path / "set.npz")
    assert npz.shape == (4, 3, 6, 6) and (npz == -1).all() and npz_labels.tolist() == [0, 1, 2, 3]
    import matplotlib.image

    (tmp_path / "png").mkdir()
    for i in range(3):
        matplotlib.image.imsave(tmp_path / "png" / f"{i}.png", np.full((5, 5), i / 2), cmap="gray", vmin=0, vmax=1)
    assert load_png_folder(tmp_path / "png").shape == (3, 3, 5, 5)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py folder not found"):
        load_cifar10(tmp_path / "missing")


def test_a_missing_optional_package_is_named_with_its_install_line(monkeypatch):
    import importlib.util

    from kale_fast.data import images

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "sklearn" else find_spec(name, *args))
    with pytest.raises(ImportError, match=r"dataset: digits needs the package 'sklearn'.*kale_fast\[images\]"):
        images.load_digits()
