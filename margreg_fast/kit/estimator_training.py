r"""Judge an estimator by the model it trains, not by its value at initialisation.

:func:`judge` trains a small max-pool CNN (:class:`~margreg_fast.kit.models.MaxPoolCNN`) with the
marginal penalty at weight 10 on the 8x8 scikit-learn digits placed on a zero 20x20 canvas -- images
that are mostly background, where pooling windows hold exact ties and ReLU pre-activations sit on
their kinks -- and reports, on held-out images:

* ``true_over_own`` = exact R / the estimator's own estimate (a gamed estimator reports far less
  than the model's true penalty);
* ``over_twin(twin)`` = exact R / exact R of the same network trained with ``estimator="exact"``;
* ``secant_ratio``, the monitor's ratio on the held-out batch, and ``warned``, whether the
  regulariser's :class:`~margreg_fast._monitor.SecantMonitor` warned during training;
* ``accuracy`` on the held-out images.

The same judgement on real timm models (a deep BatchNorm ReLU MnasNet and a BatchNormAct SiLU
EfficientNet, fp32 and bf16 autocast, seeds): ``benchmarks/estimator_training_timm.py``.

``tests/test_estimator_training.py`` holds the default estimator to true_over_own <= 1.5 and
over_twin <= 3 and checks that ``fd`` fails; ``benchmarks/estimator_training.py`` writes the
table for every estimator.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .. import DEFAULT_STEP, MarginalDensityRegularizer, SecantWarning, marginal_density_penalty
from .data import load_digits_images, place_on_canvas
from .models import MaxPoolCNN

CANVAS, TRAIN, BATCH, EPOCHS, WEIGHT = 20, 1400, 64, 8, 10.0


@dataclass(frozen=True)
class Outcome:
    """What training with one estimator produced (see the module docstring)."""

    estimator: str
    activation: str
    true_penalty: float
    own_estimate: float
    secant_ratio: float
    accuracy: float
    warned: bool

    def over_twin(self, twin: "Outcome") -> float:
        return self.true_penalty / twin.true_penalty

    @property
    def true_over_own(self) -> float:
        return self.true_penalty / self.own_estimate


def canvas_digits() -> Tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits on zero 20x20 canvases (seeded positions) and their labels."""
    images, labels = load_digits_images()
    return place_on_canvas(images, CANVAS, seed=0), labels


def train(estimator: str, activation: str, data: Tuple[torch.Tensor, torch.Tensor], *, step: float | str = DEFAULT_STEP,
          epochs: int = EPOCHS, weight: float = WEIGHT) -> Tuple[torch.nn.Module, bool]:
    """(model trained on the first TRAIN images with ``estimator``, whether the secant monitor warned)."""
    x, y = data
    torch.manual_seed(1)
    model = MaxPoolCNN(width=16, image_size=CANVAS, hidden=128, activation=activation)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    reg = MarginalDensityRegularizer(weight, estimator=estimator, step=step)
    order = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SecantWarning)
        for _ in range(epochs):
            perm = torch.randperm(TRAIN, generator=order)
            for i in range(0, TRAIN, BATCH):
                idx = perm[i:i + BATCH]
                loss, _ = reg(model, x[idx], y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model, any(issubclass(w.category, SecantWarning) for w in caught)


def judge(estimator: str, activation: str, data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, *,
          step: float | str = DEFAULT_STEP) -> Outcome:
    """Train with ``estimator`` and measure the outcome on the held-out images."""
    data = canvas_digits() if data is None else data
    model, warned = train(estimator, activation, data, step=step)
    x_test, y_test = data[0][TRAIN:], data[1][TRAIN:]
    torch.manual_seed(2)
    # the estimator's own mean estimate and secant ratio on the held-out batch, as a training step reports them
    _, stats = MarginalDensityRegularizer(WEIGHT, estimator=estimator, step=step)(model, x_test, y_test)
    true = marginal_density_penalty(model, x_test, estimator="exact").item()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return Outcome(estimator, activation, true, stats["penalty"], stats["secant_ratio"], accuracy, warned)


def judge_all(estimators, activations, step: float | str = DEFAULT_STEP) -> Dict[Tuple[str, str], Outcome]:
    """:func:`judge` for every (estimator, activation), the exact twins included."""
    data = canvas_digits()
    return {(m, a): judge(m, a, data, step=step) for a in activations for m in dict.fromkeys(("exact",) + tuple(estimators))}
