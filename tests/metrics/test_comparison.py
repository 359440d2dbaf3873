"""GEBM-against-base comparisons: the differences' standard errors calibrated, the verdict lines consistent with
the numbers they print."""
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kale_fast.metrics import Comparison, mmd_difference, paired_difference, share_difference, verdict


def test_mmd_difference_is_calibrated_under_the_null_and_detects_a_shift():
    """Both sample sets from the reference's law: |difference| > 2 SE about 8% of the time (a t with 9 degrees of
    freedom: 7.6%; 150 repeats: a standard deviation of 2.2%); one set shifted by 0.7 standard deviations: detected
    (worse) nearly always."""
    generator = torch.Generator().manual_seed(0)
    draw = lambda shift=0.0: torch.randn(200, 2, generator=generator) + shift  # noqa: E731
    false_alarms = sum(abs(c.difference) > 2 * c.se for c in (mmd_difference(draw(), draw(), draw())
                                                                for _ in range(150)))
    assert 0.01 <= false_alarms / 150 <= 0.15
    detected = sum(c.difference > 2 * c.se for c in (mmd_difference(draw(), draw(0.7), draw()) for _ in range(20)))
    assert detected >= 18
    with pytest.raises(ValueError, match="at least 20 samples"):
        mmd_difference(draw()[:10], draw(), draw())


def test_share_difference_se_matches_the_spread_over_repeats():
    generator = torch.Generator().manual_seed(1)
    differences = [(torch.rand(500, generator=generator) < 0.9).double().mean().item()
                   - (torch.rand(800, generator=generator) < 0.8).double().mean().item() for _ in range(2000)]
    comparison = share_difference(0.9, 0.8, 500, 800)
    assert comparison.difference == pytest.approx(0.1)
    assert torch.tensor(differences).std().item() == pytest.approx(comparison.se, rel=0.06)


def test_paired_difference():
    a, b = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 1.0, 2.0])
    comparison = paired_difference(a, b, extra_se=0.3)
    assert (comparison.a, comparison.b, comparison.difference) == pytest.approx((7 / 3, 7 / 6, 7 / 6))
    assert comparison.se == pytest.approx(math.sqrt(torch.tensor([0.5, 1.0, 2.0]).std().item() ** 2 / 3 + 0.09))


@pytest.mark.parametrize("difference, se, lower_is_better, outcome", [
    (-0.5, 0.1, True, "better"), (0.5, 0.1, True, "worse"), (0.5, 0.1, False, "better"), (0.15, 0.1, True,
                                                                                          "within noise"),
    (0.0, 0.0, True, "within noise")])
def test_verdict(difference, se, lower_is_better, outcome):
    result = verdict("m", Comparison(1.0 + difference, 1.0, se), lower_is_better)
    assert result["outcome"] == outcome and result["text"].startswith(f"GEBM vs base: {outcome} on m")


_PRINTED = re.compile(r"GEBM (\S+), base (\S+), difference (\S+) \+- (\S+) ")


def _check_printed_verdict(result: dict) -> None:
    """The printed difference has the sign of the printed values' difference, and the outcome agrees with it."""
    gebm, base, difference, se = map(float, _PRINTED.search(result["text"]).groups())
    assert math.copysign(1, difference) * (gebm - base) > 0 or difference == gebm - base == 0, result["text"]
    assert (result["difference"], result["gebm"] - result["base"]) == (pytest.approx(difference, rel=0.06, abs=0),
                                                                         pytest.approx(difference, rel=0.06, abs=0))
    lower = result["lower_is_better"]
    if result["outcome"] == "within noise":
        assert not abs(result["difference"]) >= 2 * result["se"] or result["difference"] == 0
    else:
        assert abs(difference) >= 2 * se * 0.9  # (both printed to 2 significant digits)
        assert (result["outcome"] == "better") == ((difference < 0) == lower), result["text"]


_values = st.one_of(st.floats(-1e6, 1e6), st.floats(-1e-3, 1e-3))


@settings(max_examples=400, deadline=None)
@given(gebm=_values, base=_values, nudge=st.one_of(st.just(0.0), st.floats(-1e-9, 1e-9)),
       se=st.floats(0, 1e3), lower_is_better=st.booleans())
def test_a_printed_difference_has_the_sign_of_the_printed_values(gebm, base, nudge, se, lower_is_better):
    """Over random values (near-equal pairs included: `nudge`), every verdict line is consistent with itself."""
    _check_printed_verdict(verdict("m", Comparison(gebm, base + nudge if nudge else base, se), lower_is_better))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shift=st.floats(0, 0.5), n=st.integers(40, 200))
def test_the_mmd_verdict_prints_one_estimators_numbers(seed, shift, n):
    """The MMD^2 verdict's values and difference are one estimator's (the block means): never the full-sample
    values beside a block difference of the other sign."""
    generator = torch.Generator().manual_seed(seed)
    reference, a, b = (torch.randn(n, 2, generator=generator) + s for s in (0.0, shift, 0.0))
    comparison = mmd_difference(reference, a, b, blocks=4)
    assert comparison.difference == comparison.a - comparison.b
    _check_printed_verdict(verdict("MMD^2", comparison, lower_is_better=True))
