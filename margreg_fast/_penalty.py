r"""Input-gradient penalties of a classifier, differentiable in its parameters.

* :func:`marginal_density_penalty` -- R(x) = ||grad_x logsumexp f(x)||^2, the squared score of the
  model's input density log p(x) = logsumexp f(x) - log Z (marginal density regularisation, MDR).
* :func:`input_gradient_penalty` -- the baselines ||grad_x CE(f(x), y)||^2 (``penalty_kind="conditional"``,
  input-gradient regularisation) and ||grad_x f(x)_y||^2 (``penalty_kind="joint"``).

Estimators (``estimator``; details and costs in :mod:`margreg_fast._estimators.core`): ``"rfd"`` (the
default: the exact value, and a parameter gradient from a randomly signed finite difference along
v = g / ||g|| at the cost of one extra forward; training cannot game it), ``"exact"`` (double
backprop), ``"jvp"`` (exact, forward mode over the reverse-mode input gradient), ``"fd"`` (one-sided
forward difference, error O(h)) and ``"central"`` (error O(h^2), one more
forward). ``step`` is h of the finite differences: a positive float, or ``"auto"`` (see
:mod:`margreg_fast._estimators.steps`). Both functions default to ``estimator="rfd"``, ``step="auto"``
(:mod:`margreg_fast._estimators.defaults`). The finite differences go through the fused head op
:func:`margreg_fast.energy_difference` (``backend`` picks its implementation).

``model`` is an ``nn.Module`` or any function of x returning (B, C) logits; anything else (a
(B, T, C) or (B, C, 1, 1) tensor, a tuple, a dict) raises, whatever the estimator, unless ``output=``
reads the logits from it: ``output(model(x))`` must be (B, C) logits, e.g. ``output=lambda out: out.logits``
for a Hugging Face ``ModelOutput``, ``lambda out: out[0]`` for a tuple, ``lambda out: out["logits"]``
for a dict. Every pass of the estimate (the probes too) goes through it.

Example::

    x.requires_grad_(True)            # optional: lets the penalty reuse these logits' graph
    logits = model(x)
    loss = F.cross_entropy(logits, y) + lam * marginal_density_penalty(model, x, logits=logits)
    loss.backward()

This works with any loss on those logits. In a training loop, :class:`~margreg_fast.MarginalDensityRegularizer`
does the same in one call and adds ``fraction=`` and the monitor: ``reg(model, x, target, criterion=...)``,
or ``logits, penalty = reg.logits_and_penalty(model, x)`` for a loop that owns its loss.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import nn

from ._estimators import DEFAULT_ESTIMATOR, DEFAULT_STEP, PENALTY_KINDS, estimate
from ._estimators.checks import (check_choice, check_data, check_estimator_options, check_generator, check_labels,
                                check_output, check_step)
from ._estimators.steps import Step
from ._renames import renamed_keywords
from ._reduction import REDUCTIONS, reduce

#: The baselines of :func:`input_gradient_penalty` (every penalty but the marginal one).
BASELINES = PENALTY_KINDS[1:]
Model = Union[nn.Module, Callable[[torch.Tensor], torch.Tensor]]
#: ``output(model(x))`` -> (B, C) logits.
Output = Callable[[Any], torch.Tensor]


def _check_call(model, x, estimator: str, step: Step, reduction: str, logits: Optional[torch.Tensor],
                backend: str, generator: Optional[torch.Generator], output: Optional[Output]) -> Tuple[nn.Module, Step]:
    """The arguments both penalty functions share; returns (model as a module, step as a float or "auto")."""
    model = check_data(model, x, output)
    check_generator(generator, x)
    check_estimator_options(estimator, backend)
    check_choice("reduction", reduction, REDUCTIONS)
    if logits is not None:
        check_output(logits, x, name="logits")
    return model, check_step(step)


@renamed_keywords({"method": "estimator"})
def marginal_density_penalty(model: Model, x: torch.Tensor, *, estimator: str = DEFAULT_ESTIMATOR, step: Step = DEFAULT_STEP,
                             reduction: str = "mean", logits: Optional[torch.Tensor] = None,
                             backend: str = "auto", generator: Optional[torch.Generator] = None,
                             output: Optional[Output] = None) -> torch.Tensor:
    """R(x) = ||grad_x logsumexp(model(x))||^2 per sample (``reduction="none"``), or its mean / sum.

    Args:
        model: the classifier, returning logits of shape (B, C) (anything else raises, unless
            ``output`` reads them from its output). An ``nn.Module`` or any function of x. May be
            wrapped in DDP or compiled (``exact`` and ``jvp`` do not work on compiled models; they raise
            :class:`~margreg_fast._estimators.UnsupportedEstimatorError`).
        x: inputs (B, ...), any floating dtype.
        estimator: ``"rfd"`` (default), ``"exact"``, ``"jvp"``, ``"fd"`` or ``"central"``.
        step: h of the finite differences, a positive float or ``"auto"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        logits: ``model(x)`` if already computed with grad enabled from this very ``x`` (which must then
            require grad), to share its forward (e.g. with the CE): its graph gives grad_x and its
            values the base point of the finite differences. Logits that do not depend on x raise ValueError. If ``x``
            does not require grad the logits cannot give grad_x, so the one forward that the
            estimator needs anyway recomputes them and serves every role: ``logits`` is then only
            shape-checked (a detached copy, or logits of another x, cannot skew the result).
        backend: implementation of the fused head op (``"auto"``, ``"torch"``, ``"native"``, ``"triton"``).
        generator: a ``torch.Generator`` on x's device for ``rfd``'s random signs (None: torch's
            global generator). Under ``torch.no_grad()`` ``rfd`` draws nothing and runs no probe.
        output: None, or a function giving the (B, C) logits from the model's output,
            ``output(model(x))`` (``logits``, when given, are those already read logits).
    """
    model, step = _check_call(model, x, estimator, step, reduction, logits, backend, generator, output)
    est = estimate(model, x, None, penalty_kind="marginal", estimator=estimator, step=step, logits=logits, backend=backend,
                   generator=generator)
    return reduce(est.value, reduction)


@renamed_keywords({"method": "estimator", "penalty": "penalty_kind"})
def input_gradient_penalty(model: Model, x: torch.Tensor, y: torch.Tensor, *, penalty_kind: str = "conditional",
                           estimator: str = DEFAULT_ESTIMATOR, step: Step = DEFAULT_STEP, reduction: str = "mean",
                           logits: Optional[torch.Tensor] = None, backend: str = "auto",
                           generator: Optional[torch.Generator] = None, output: Optional[Output] = None) -> torch.Tensor:
    """Baselines: ||grad_x CE(model(x), y)||^2 (``penalty_kind="conditional"``) or ||grad_x model(x)_y||^2 (``"joint"``).

    Same estimators, defaults and arguments as :func:`marginal_density_penalty` (the default estimator
    is ``"rfd"``, as there; it used to be ``"exact"`` with step 1e-2 here); ``y`` holds integer class
    indices (B,). A sample labelled -100 (``F.cross_entropy``'s ignore_index) has no label: its
    penalty is 0 and ``reduction="mean"`` averages over the labelled samples only.
    """
    model, step = _check_call(model, x, estimator, step, reduction, logits, backend, generator, output)
    y = check_labels(y, x)
    check_choice("penalty_kind", penalty_kind, BASELINES)
    est = estimate(model, x, y, penalty_kind=penalty_kind, estimator=estimator, step=step, logits=logits, backend=backend,
                   generator=generator)
    return reduce(est.value, reduction, labels=y)
