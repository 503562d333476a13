r"""The library on real timm models (tests/zoo/models.py): random init, train mode, small inputs.

For each model:

* **the default step** (``MarginalDensityRegularizer(1.0)``: rfd at step auto, float32, SDPA where the
  model has it) gives a finite loss and parameter gradient, and a secant ratio in [0.8, 1.25];
* **exact's per-sample penalty equals the independent reference** (tests/zoo/reference.py: an
  eval-mode copy holding the batch's biased statistics, with the same dropout / drop-path masks)
  within 1e-4 relative. In float64, where the two computations differ only by rounding through a
  few dozen layers (the bound leaves orders of magnitude for that, and none for a wrong definition:
  the bugs of issue 14 were off by many orders of magnitude); attention runs in plain ops,
  since SDPA's fused kernel has no double backward, and MobileNetV3's hardsigmoid gates as clamps
  (the same function; aten's hardsigmoid_backward has no derivative, and on the stock model exact
  raises UnsupportedEstimatorError naming it);
* **rfd's parameter gradient points where exact's does**: cosine >= 0.99.
  - Smooth models (GELU / SiLU / average pooling / attention): in float32 at the default step.
  - ReLU / max-pool models: exact's gradient is the derivative of the one linear piece x sits on,
    and any secant over a step h averages the pieces it crosses; in float32 the default step is
    large enough for the probe to cross ReLU kinks, and the cosine there is not an accuracy
    measure (docs/guides/estimators.md, "Judged by the model they train", and the relu-max columns of the
    committed benchmarks/results/estimator_agreement.md). In float64 the default step,
    4 eps^(1/3) RMS(x) = 2.4e-5 RMS(x), is small enough to stay on one piece for almost every unit,
    and the cosine must reach 0.99 there too. Every model is checked in float64.

* **fraction < 1** splits the batch in two forwards exactly on the models without BatchNorm, and there
  the split trains as one forward would (float64, the models without dropout or drop-path).

Every test builds its model afresh (seeded), so each can run alone. The suite's time is measured
(``pytest --durations``), not asserted.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast._estimators import UnsupportedEstimatorError
from tests.gradients import rows_of_each_forward
from tests.zoo.models import BATCH, NUM_CLASSES, STEP_RULE_MODELS, ZOO, build_at
from tests.zoo.reference import reference_penalty

SEED = 1234


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model_and_batch(name: str, dtype=torch.float32):
    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build().to(dtype).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, *entry.shape, generator=gen, dtype=dtype)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
    return model, x, y


class _ClampHardsigmoid(torch.nn.Module):
    """hardsigmoid(a) = relu6(a + 3) / 6 in ops that have a double backward (aten's hardsigmoid_backward has none)."""

    def forward(self, a):
        return F.relu6(a + 3) / 6


def _twice_differentiable(model):
    """The same function in ops exact can differentiate twice: timm attention in plain matmul / softmax
    ops instead of SDPA's fused kernel, and nn.Hardsigmoid (MobileNetV3's squeeze-excite gates) by clamps."""
    for name, m in list(model.named_modules()):
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
        for child_name, child in m.named_children():
            if isinstance(child, torch.nn.Hardsigmoid):
                setattr(m, child_name, _ClampHardsigmoid())
    return model


def _parameter_gradient(model, penalty):
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]).double()


def _penalty_and_gradient(model, x, method):
    torch.manual_seed(SEED)  # the clean pass's masks; rfd's signs come after them
    penalty = marginal_density_penalty(model, x, estimator=method, reduction="none")
    return penalty.detach(), _parameter_gradient(model, penalty.mean())


def _cosine(a, b):
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.mark.parametrize("name", list(ZOO))
def test_default_step_is_finite_and_its_secant_measures_the_gradient(name):
    model, x, y = _model_and_batch(name)
    torch.manual_seed(SEED)
    loss, stats = MarginalDensityRegularizer(1.0)(model, x, y)
    loss.backward()
    assert torch.isfinite(loss), stats
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert math.isfinite(stats["penalty"]) and stats["penalty"] > 0, stats
    assert 0.8 <= stats["secant_ratio"] <= 1.25, stats


@pytest.mark.parametrize("name", list(ZOO))
def test_exact_equals_the_independent_reference(name):
    model, x, _ = _model_and_batch(name, torch.float64)
    _twice_differentiable(model)
    reference = reference_penalty(model, x, SEED)
    torch.manual_seed(SEED)
    exact = marginal_density_penalty(copy.deepcopy(model), x, estimator="exact", reduction="none").detach()
    rel = ((exact - reference).abs() / reference.abs()).max().item()
    assert rel <= 1e-4, (rel, exact, reference)


#: Every model in float64; the smooth ones in float32 too (see the module docstring).
AGREEMENT_CASES = [(name, torch.float64) for name in ZOO] + [(name, torch.float32) for name in ZOO if ZOO[name].smooth]


@pytest.mark.parametrize("name, dtype", AGREEMENT_CASES, ids=[f"{n}-{str(d)[6:]}" for n, d in AGREEMENT_CASES])
def test_rfd_parameter_gradient_points_where_exacts_does(name, dtype):
    model, x, _ = _model_and_batch(name, dtype)
    _twice_differentiable(model)  # exact needs it; rfd computes the same function either way
    _, g_exact = _penalty_and_gradient(model, x, "exact")
    _, g_rfd = _penalty_and_gradient(model, x, "rfd")
    assert _cosine(g_rfd, g_exact) >= 0.99, _cosine(g_rfd, g_exact)


def test_exact_on_hardsigmoid_raises_a_clear_error():
    """Stock MobileNetV3 gates its squeeze-excite blocks with nn.Hardsigmoid, whose backward has no
    derivative: exact says so, naming the op, when the penalty is built (not at loss.backward())."""
    model, x, _ = _model_and_batch("mobilenetv3_small_100")
    with pytest.raises(UnsupportedEstimatorError, match="hardsigmoid_backward"):
        marginal_density_penalty(model, x, estimator="exact")


#: The zoo models whose train-mode forward couples the samples of a batch (BatchNorm, timm's BatchNormAct).
BATCH_COUPLED = ("resnet18", "efficientnet_b0", "mobilenetv3_small_100", "regnetx_002")


@pytest.mark.parametrize("name", list(ZOO))
def test_fraction_splits_the_batch_exactly_when_no_layer_couples_it(name):
    """fraction=0.5 (2 of 4 samples), the default estimator: a BatchNorm model forwards the whole batch
    once and probes the subset (4, 2, 2 rows); any other model forwards the rest and the subset, whose
    forward serves its CE and the penalty (2, 2, 2). The step is finite either way (drop-path included)."""
    model, x, y = _model_and_batch(name)
    torch.manual_seed(SEED)
    reg = MarginalDensityRegularizer(1.0, fraction=0.5, generator=torch.Generator().manual_seed(SEED))
    loss, stats, rows = rows_of_each_forward(model, reg, x, y)
    assert rows == ([4, 2, 2] if name in BATCH_COUPLED else [2, 2, 2]), rows
    assert torch.isfinite(loss) and stats["penalty"] > 0, stats
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


#: Sample-wise zoo models without stochastic layers: one forward and the split must train the same.
DETERMINISTIC_SAMPLE_WISE = ("convnext_atto", "deit_tiny_patch16_224", "resnet18_groupnorm_silu")


@pytest.mark.parametrize("name", DETERMINISTIC_SAMPLE_WISE)
def test_split_batch_gives_the_one_forward_loss_and_gradient(name):
    """float64: the two schedules compute the same sums in another order. The secant's gradient divides a
    difference of forwards by h, so their rounding (~eps64 = 2.2e-16) is amplified 1/h-fold: at a fixed
    h = 1e-4 that is ~2e-12, under the 1e-10 bound (the auto rule's float64 step, sqrt(eps64) RMS ~ 1e-8,
    would amplify it to ~1e-8, which tests the step rule rather than the schedules)."""
    model, x, y = _model_and_batch(name, torch.float64)
    runs = []
    for coupled in (True, False):
        reg = MarginalDensityRegularizer(1.0, step=1e-4, fraction=0.5, batch_coupled=coupled,
                                         generator=torch.Generator().manual_seed(SEED))
        loss, _ = reg(model, x, y)
        runs.append((loss.item(), _parameter_gradient(model, loss)))
    (one_loss, one_grad), (split_loss, split_grad) = runs
    assert math.isclose(split_loss, one_loss, rel_tol=1e-10)
    assert (split_grad - one_grad).abs().max() <= 1e-10 * one_grad.abs().max()


#: The step rule's cases: every zoo model and deep mobile family, 64 px and (slow) 224 px, with and without
#: dropout and drop-path. Measured ratios: benchmarks/results/estimator_step_rule.md.
STEP_RULE_CASES = [pytest.param(name, size, drop, id=f"{name}-{size}px-{'drop' if drop else 'nodrop'}",
                                marks=[pytest.mark.slow] if size == 224 else [])
                   for size in (64, 224) for name in STEP_RULE_MODELS for drop in (False, True)]


@pytest.mark.parametrize("name, size, drop", STEP_RULE_CASES)
def test_auto_step_keeps_the_secant_ratio_in_the_band(name, size, drop):
    """The curvature bound h ||g|| <= 0.03 (estimators/steps.py): the regulariser's secant ratio, for the
    default rfd (random signs) and the one-sided fd (s = +1), lies in [0.8, 1.25] at random init,
    where the rounding bound alone gave 0.03-0.6 on the deep BatchNorm nets (batch 4 at 64 px, 2 at 224 px)."""
    torch.manual_seed(0)
    model = build_at(name, size, drop)
    gen = torch.Generator().manual_seed(1)
    batch = 4 if size == 64 else 2
    x, y = torch.rand(batch, 3, size, size, generator=gen), torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    for method in ("rfd", "fd"):
        torch.manual_seed(SEED)
        _, stats = MarginalDensityRegularizer(1.0, estimator=method)(model, x, y)
        assert 0.8 <= stats["secant_ratio"] <= 1.25, (method, stats)


#: Smooth nets under bf16 autocast (64 px, batch 4): the ViT runs SDPA, whose missing double backward
#: makes its reference fp32 central. Measured cosines: benchmarks/results/estimator_autocast.md.
AUTOCAST_MODELS = ("efficientnet_b0", "convnext_atto", "vit_tiny_patch16_224")
DRAWS = 3


def _median_cosine(model, x, reference, autocast: bool) -> float:
    cosines = []
    for draw in range(DRAWS):
        torch.manual_seed(SEED + draw)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            penalty = marginal_density_penalty(model, x)
        cosines.append(_cosine(_parameter_gradient(model, penalty.float()), reference))
    return sorted(cosines)[DRAWS // 2]


@pytest.mark.parametrize("name", AUTOCAST_MODELS)
def test_bf16_autocast_keeps_the_default_gradients_direction(name):
    """The issue's bound: under bf16 autocast the default's parameter gradient of the penalty has, as the
    median over sign draws, at least 0.9x the fp32 default's cosine with the fp32 reference (exact, or
    central where SDPA refuses exact)."""
    torch.manual_seed(0)
    model = build_at(name, 64, drop=False)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(SEED)
    try:
        reference = _parameter_gradient(model, marginal_density_penalty(model, x, estimator="exact"))
    except UnsupportedEstimatorError:
        torch.manual_seed(SEED)
        reference = _parameter_gradient(model, marginal_density_penalty(model, x, estimator="central"))
    fp32 = _median_cosine(model, x, reference, autocast=False)
    bf16 = _median_cosine(model, x, reference, autocast=True)
    assert bf16 >= 0.9 * fp32, (bf16, fp32)
