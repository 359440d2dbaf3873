"""Sample distances: the reference bandwidth and the MMD it fixes."""
import pytest
import torch


def test_reference_bandwidth_is_the_data_scale_and_fixes_the_kernel():
    from kale_fast.metrics import median_bandwidth, mmd, reference_bandwidth

    data = torch.randn(400, 2, generator=torch.Generator().manual_seed(0)) * 3
    bandwidth = reference_bandwidth(data)
    assert bandwidth == median_bandwidth(data[:200], data[200:]) and 3.5 < bandwidth < 5  # 3 sqrt(2 ln 4) = 5.0
    # far apart, MMD^2 is the two within-sample kernel means: 1 / (1 + 2 * 3^2 / bandwidth^2) each (2-D Gaussians)
    assert mmd(data + 100, data, bandwidth.item()) == pytest.approx(2 / (1 + 18 / bandwidth.item() ** 2), rel=0.1)
