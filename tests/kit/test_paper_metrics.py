"""Leakage and insertion in the paper's units on hand-built attributions and models with known answers."""
import math

import pytest
import torch

from margreg_fast.kit.paper_metrics import (curve_area_paper, insertion_auc_paper, insertion_curve_paper,
                                            leakage_paper, leakage_topk)


def _mask(rows, shape=(1, 1, 2, 3)):
    m = torch.zeros(shape, dtype=torch.bool)
    m[..., rows, :] = True
    return m


def test_leakage_paper_sums_min_max_normalised_attribution():
    attr = torch.tensor([[6.0, -5, 4], [3, 2, 1]]).view(1, 1, 2, 3)  # |a| = 6..1 -> (|a| - 1) / 5
    assert leakage_paper(attr, _mask(1)) == pytest.approx(0.4 + 0.2 + 0.0)
    assert leakage_paper(attr, _mask(0)) == pytest.approx(1.0 + 0.8 + 0.6)
    two = torch.cat([attr, torch.ones_like(attr), -attr.flip(-1)])  # the constant map is left out
    # third map: |a| rows [4, 5, 6], [1, 2, 3] -> row 1 normalised to 0, 0.2, 0.4
    assert leakage_paper(two, _mask(1, (3, 1, 2, 3))) == pytest.approx((0.6 + 0.6) / 2)
    assert math.isnan(leakage_paper(torch.zeros(1, 1, 2, 3), _mask(1)))


def test_leakage_topk_share_of_top_pixels():
    attr = torch.tensor([[1.0, 2, 3, 4], [-9, 5, 6, 7]]).view(1, 1, 2, 4)
    mask = _mask(0, (1, 1, 2, 4))
    assert leakage_topk(attr, mask, fraction=0.25) == 0.0  # top 2: -9 and 7, both in row 1
    assert leakage_topk(attr, mask, fraction=0.5) == 0.0
    assert leakage_topk(attr, ~mask, fraction=0.3) == 1.0  # k = ceil(2.4) = 3: -9, 7, 6
    assert leakage_topk(attr, mask, fraction=0.75) == pytest.approx(2 / 6)  # k = 6: adds 5, 4 and 3
    with pytest.raises(ValueError, match="fraction"):
        leakage_topk(attr, mask, fraction=0.0)
    with pytest.raises(TypeError, match="bool"):
        leakage_topk(attr, mask.float())


def _linear(weights):
    lin = torch.nn.Linear(len(weights), 2, bias=False).double()
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0] = torch.tensor(weights, dtype=torch.float64)
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def test_insertion_curve_and_trapezoid_in_pixel_steps():
    """z = sum_j w_j x_j, x = 1: after t insertions y(t) = (w of the inserted pixels) / sum w."""
    model = _linear([1.0, 2, 3, 4, 5, 6])
    x = torch.ones(1, 1, 2, 3, dtype=torch.float64)
    attr = torch.tensor([6.0, 5, 4, 3, 2, 1], dtype=torch.float64).view(1, 1, 2, 3)  # inserts w = 1, 2, 3, ...
    curve = insertion_curve_paper(model, x, attr, 0, steps=3)
    torch.testing.assert_close(curve, torch.tensor([0, 1, 3, 6], dtype=torch.float64) / 21)
    # trapezoid, dx = 1: (0 + 1) / 2 + (1 + 3) / 2 + (3 + 6) / 2 = 7, over 21
    assert curve_area_paper(curve) == pytest.approx(7 / 21)
    assert insertion_auc_paper(model, x, attr, 0, steps=6) == pytest.approx((0 + 1 + 3 + 6 + 10 + 15 + 21 / 2) / 21)


def test_insertion_ratio_clipped_at_zero_and_nonpositive_logits_left_out():
    model = _linear([-3.0, 1, 1, 4])
    x = torch.ones(3, 1, 1, 4, dtype=torch.float64)
    attr = torch.tensor([4.0, 3, 2, 1], dtype=torch.float64).expand(3, 1, 1, 4)
    x[2] = torch.tensor([1.0, 0, 0, 0])  # z(x) = -3 <= 0: left out
    curve = insertion_curve_paper(model, x, attr, torch.tensor([0, 0, 0]), steps=4, batch_size=2)
    torch.testing.assert_close(curve, torch.tensor([0, 0, 0, 0, 1], dtype=torch.float64))  # -3/3, -2/3, -1/3 -> 0
    with pytest.raises(ValueError, match="steps"):
        insertion_curve_paper(model, x, attr, 0, steps=5)
    allbad = insertion_curve_paper(model, x[2:], attr[2:], 0, steps=2)
    assert torch.isnan(allbad).all()
