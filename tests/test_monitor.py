"""The secant monitor: the ratio it reports, its warm-up, window and band, and that it warns once."""
import math
import warnings

import pytest
import torch

from margreg_fast.monitor import SecantMonitor, SecantWarning, secant_ratio


def test_ratio_is_rms_slope_over_rms_grad_norm():
    slope, norm = torch.tensor([1.0, -2.0, 2.0]), torch.tensor([2.0, 2.0, 2.0])
    assert secant_ratio(slope, norm) == pytest.approx(math.sqrt(9 / 12))
    assert math.isnan(secant_ratio(slope, torch.zeros(3)))


def feed(monitor, ratios):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        medians = [monitor.update(r) for r in ratios]
    return medians, [w for w in caught if issubclass(w.category, SecantWarning)]


def test_warns_once_when_the_window_median_leaves_the_band_after_warmup():
    monitor = SecantMonitor("fd", window=4, band=(0.5, 2.0), warmup=3)
    medians, warned = feed(monitor, [0.1] * 3 + [1.0] * 4 + [0.2] * 10)
    assert medians[:6] == [None] * 6 and medians[6] == 1.0  # warm-up ignored, then a full window
    assert len(warned) == 1 and "'fd'" in str(warned[0].message) and "0.2x" in str(warned[0].message)


@pytest.mark.parametrize("ratios", [[1.0] * 20, [0.6, 1.7] * 10, [float("nan")] * 20])
def test_quiet_inside_the_band(ratios):
    _, warned = feed(SecantMonitor("rfd", window=4, warmup=0), ratios)
    assert not warned


def test_too_large_a_slope_warns_too():
    _, warned = feed(SecantMonitor("central", window=2, warmup=0), [3.0, 3.0])
    assert len(warned) == 1


@pytest.mark.parametrize("kwargs", [dict(window=0), dict(window=True), dict(band=(1.2, 2.0)), dict(band=(0.5, 0.9)),
                                    dict(warmup=-1)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        SecantMonitor("rfd", **kwargs)
