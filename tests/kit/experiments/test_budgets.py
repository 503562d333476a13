"""Attack budgets: unit-norm similarities against their definition, and the curves' points at the
claims' own budgets equal to the single-budget rows of a real trained model."""
import math

import pytest
import torch

from margreg_fast.kit import metrics
from margreg_fast.kit.attacks import SIMILARITIES, attribution_similarity
from margreg_fast.kit.experiments.budgets import (ATTACK_BUDGETS, ATTACK_MEASURES, PGD_L2_BUDGETS, PGD_LINF_BUDGETS,
                                                  budget_scores, key, unit_l2, unit_norm)
from margreg_fast.kit.experiments.datasets import build_datasets
from margreg_fast.kit.experiments.evaluation import evaluate_model
from margreg_fast.kit.experiments.runner import deterministic
from margreg_fast.kit.experiments.training import train_run


def test_unit_norm_maps_leave_the_similarities_and_define_the_distance():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64)
    b = a + 0.3 * torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64)
    scale = torch.tensor([1e-3, 0.1, 1.0, 3.0, 50.0, 1e3], dtype=torch.float64).view(-1, 1, 1, 1)
    ua, ub = unit_norm(a), unit_norm(b * scale)
    assert torch.allclose(ua.flatten(1).norm(dim=1), torch.ones(6, dtype=torch.float64))
    raw, unit = attribution_similarity(a, b * scale, 8), attribution_similarity(ua, ub, 8)
    for m in SIMILARITIES:  # a positive factor per map changes none of them
        assert unit[m] == pytest.approx(raw[m], abs=1e-12), m
    # ||a/|a| - b/|b| ||_2 = sqrt(2 - 2 cos(a, b)) on the signed maps
    cos = (a.flatten(1) * b.flatten(1)).sum(1) / (a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1))
    assert unit_l2(a, b * scale) == pytest.approx(torch.sqrt(2 - 2 * cos).mean().item(), rel=1e-12)
    zero = torch.zeros_like(a)
    assert torch.equal(unit_norm(zero), zero) and math.isnan(unit_l2(zero, b))


def test_budget_curves_on_a_trained_model(tmp_path, tiny_config, one_thread):
    cfg = tiny_config.replace(epochs=3, max_train=300, eval_samples=12, pgd_steps=3, attack_steps=3)
    with deterministic():
        train, test = build_datasets(cfg, 0)
        model = train_run(cfg, "none", 0, train, tmp_path, quiet=True).model.eval()
        result = evaluate_model(model, test, cfg, 0)
        got = budget_scores(model, test, cfg, 0)
    expected = {key(m, e) for e in ATTACK_BUDGETS for m in ATTACK_MEASURES}
    expected |= {key("pgd_linf_acc", e) for e in PGD_LINF_BUDGETS} | {key("pgd_l2_acc", e) for e in PGD_L2_BUDGETS}
    assert set(got) == expected
    # the points at the claims' budgets are the claims' rows: same attack, same noise, same PGD
    assert (cfg.attack_eps, cfg.pgd_linf_eps, cfg.pgd_l2_eps) == (0.1, 0.1, 1.0)
    for m in SIMILARITIES:
        assert got[key(m, 0.1)] == result["metrics"][m], m
        assert got[key(m + "_random", 0.1)] == result["extra"][m + "_random"], m
    assert got[key("pgd_linf_acc", 0.1)] == result["metrics"]["pgd_linf_acc"]
    assert got[key("pgd_l2_acc", 1.0)] == result["metrics"]["pgd_l2_acc"]
    x, y = test.x[:cfg.eval_samples], test.y[:cfg.eval_samples]
    assert got[key("pgd_linf_acc", 0.0)] == metrics.accuracy(model, x, y)
    linf = [got[key("pgd_linf_acc", e)] for e in PGD_LINF_BUDGETS]
    assert linf[-1] <= linf[0]  # the strongest attack leaves at most the clean accuracy
    for e in ATTACK_BUDGETS:
        for m in SIMILARITIES:
            assert got[key(m + "_unit", e)] == pytest.approx(got[key(m, e)], abs=1e-9)
        assert 0 <= got[key("unit_l2", e)] <= 2
    # a larger budget moves the maps further under the noise, whose direction is the same at every budget
    noise = [got[key("unit_l2_random", e)] for e in ATTACK_BUDGETS]
    assert noise == sorted(noise)
