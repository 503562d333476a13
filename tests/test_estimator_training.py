"""Judge an estimator by the model it trains: can training game it?

Small max-pool CNNs (ReLU, and GELU as the smooth activation) train for 8 epochs at weight 10 on
8x8 digits placed on a zero 20x20 canvas, where max-pool windows hold exact ties. Afterwards, on
held-out images, the true penalty (exact R) must be within 1.5x the estimator's own estimate and
within 3x what an exact-trained twin reaches, and the regulariser's secant monitor must stay quiet.

The default estimator passes. The same check fails for ``method="fd"``, which training games
(measured: true R 13-29x its estimate and 12-48x the twin's, secant ratio 0.2-0.3), and the
monitor warns: so the check can fail.
"""
import warnings

import pytest
import torch

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast.estimators import DEFAULT_METHOD, DEFAULT_STEP
from margreg_fast.kit.data import load_digits_images, place_on_canvas
from margreg_fast.kit.models import MaxPoolCNN
from margreg_fast.monitor import SecantWarning

WEIGHT, EPOCHS, BATCH, TRAIN = 10.0, 8, 64, 1400
#: Stated in the issue that asked for this test; both are about training outcome, not init.
MAX_TRUE_OVER_OWN, MAX_TRUE_OVER_TWIN = 1.5, 3.0


@pytest.fixture(scope="module")
def data():
    images, labels = load_digits_images()
    return place_on_canvas(images, 20, seed=0), labels


def train(data, method, activation):
    """(model, SecantWarnings raised) after training with ``method`` (seeded, one thread of work)."""
    x, y = data
    torch.manual_seed(1)
    model = MaxPoolCNN(width=16, image_size=20, hidden=128, activation=activation)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    reg = MarginalDensityRegularizer(WEIGHT, method=method, step=DEFAULT_STEP)
    order = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SecantWarning)
        for _ in range(EPOCHS):
            perm = torch.randperm(TRAIN, generator=order)
            for i in range(0, TRAIN, BATCH):
                idx = perm[i:i + BATCH]
                loss, _ = reg(model, x[idx], y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model, [w for w in caught if issubclass(w.category, SecantWarning)]


def outcome(data, model, method):
    """(true R, the estimator's own estimate), means over held-out images."""
    x_test = data[0][TRAIN:]
    torch.manual_seed(2)
    own = marginal_density_penalty(model, x_test, method=method, step=DEFAULT_STEP).item()
    return marginal_density_penalty(model, x_test, method="exact").item(), own


@pytest.fixture(scope="module")
def twins(data):
    """True R of the exact-trained twin, per activation."""
    return {act: outcome(data, train(data, "exact", act)[0], "exact")[0] for act in ("relu", "gelu")}


def judged(data, twins, method, activation):
    model, warned = train(data, method, activation)
    true, own = outcome(data, model, method)
    return true / own, true / twins[activation], warned


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_default_estimator_trains_what_exact_trains(data, twins, activation):
    over_own, over_twin, warned = judged(data, twins, DEFAULT_METHOD, activation)
    assert over_own <= MAX_TRUE_OVER_OWN, f"true R is {over_own:.2f}x the estimate"
    assert over_twin <= MAX_TRUE_OVER_TWIN, f"true R is {over_twin:.2f}x the exact-trained twin's"
    assert not warned, [str(w.message) for w in warned]


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_fd_is_gamed_and_the_monitor_says_so(data, twins, activation):
    over_own, over_twin, warned = judged(data, twins, "fd", activation)
    assert over_own > MAX_TRUE_OVER_OWN or over_twin > MAX_TRUE_OVER_TWIN, (over_own, over_twin)
    assert len(warned) == 1 and "'fd'" in str(warned[0].message)
