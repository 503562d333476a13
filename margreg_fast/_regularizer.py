r"""Drop-in training objective: loss + weight * mean penalty, in one call.

Usage (a training loop changes by one line)::

    reg = MarginalDensityRegularizer(weight=1.0)
    loss, stats = reg(model, x, y)      # was: loss = F.cross_entropy(model(x), y)
    loss.backward(); optimizer.step()
    print(stats["ce"], stats["penalty"], stats["grad_norm"], stats["secant_ratio"])

Any loss on the same logits (soft targets, label smoothing, mixup, class weights)::

    loss, stats = reg(model, x, target, criterion=criterion)   # was: loss = criterion(model(x), target)

A loop that owns its loss (a Hugging Face ``Trainer.compute_loss``, a LightningModule's
``training_step``) takes the logits and the penalty of the one forward::

    logits, penalty = reg.logits_and_penalty(model, x)
    loss = its_loss(logits) + reg.weight * penalty

A model whose output is not the logits tensor (a Hugging Face ``ModelOutput``, timm's distillation
tuple, a dict) is read through ``output=``: ``MarginalDensityRegularizer(1.0, output=lambda out: out.logits)``.

The logits of x are computed once and serve both the loss and the penalty; for ``rfd`` and ``fd`` the
default CE of those logits comes out of the same fused head pass as the finite difference. Every step the
regulariser feeds the estimator's secant ratio to a :class:`~margreg_fast._monitor.SecantMonitor`,
which warns once if the finite difference stops measuring the gradient, and at once if the penalty
diverges (see :mod:`._monitor`). A step synchronises with the device once, on every backend: the
statistics, the monitor's two sums and the head op's target range checks are stacked into one
tensor and transferred together (so an out-of-range label raises after the step's passes). With
``sync=False`` a step does not synchronise at all: the statistics stay on the device, for loops that
log every N steps. Under ``torch.inference_mode`` (Lightning's evaluation) a step computes the true
value, as under ``torch.no_grad`` (:func:`._estimators.passes.outside_inference_mode`).

With ``fraction`` f < 1 the penalty is computed on a random subset of m = max(1, round(f B)) samples,
scaled so that its expectation, and so the expected parameter gradient, is fraction 1's at the same
weight (:mod:`._subsample`); the loss (the CE or the criterion) still covers the whole batch. How the batch goes through the model
depends on whether its forward couples the samples (``batch_coupled``; by default detected:
a train-mode BatchNorm or timm's EvoNorm-B couples them):

* **Coupled** (one forward of the whole batch): the CE's forward is the one ordinary train-mode forward
  of the B samples, through the model the caller passed; the subset's passes are probes of it, so
  train-mode BatchNorm normalises the subset with the whole batch's statistics (held from that
  forward) and the penalty keeps its one documented meaning. Cost on top of a plain step (F + B):
  about f (2F + B_x + 2B): the subset's forward at x cannot be the CE's, whose input gradient would
  take a backward through the whole batch.
* **Sample-wise** (the batch split in two): the subset's forward at x is its estimate's clean pass
  and serves both its CE and the penalty (as at f = 1), and the other B - m samples take a forward of
  their own for their CE. The CE is the same mean over the whole batch (sample i's logits do not
  depend on the others), and the cost on top of plain is about f (F + B_x + B), f times fraction 1's.
  Under DDP the subset's forward is the step's one DDP forward; the rest runs through the wrapped
  module. A train-mode batch-norm call in either forward raises (pass ``batch_coupled=True``).
  A ``criterion`` sees the logits of both forwards put back in the batch's order, so its target's
  rows (mixup's mixed targets, per-sample weights) match them as in a plain step.

**Criteria and labelled penalties.** The marginal penalty needs no label, so ``criterion`` may take
any target. The conditional and joint penalties are defined on integer class labels: with a
criterion, their ``target`` must be those labels (B,), which both the criterion and the penalty
read (e.g. a label-smoothed CE with ``penalty_kind="conditional"``); any other target raises, naming
``penalty_kind="marginal"``.

Cost at f = 1: F + B_x + B on top of plain, its forward at x shared with the CE (F forward, B_x backward
to the input only, B training backward).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._estimators import DEFAULT_ESTIMATOR, DEFAULT_STEP, PENALTY_KINDS, Estimate, estimate
from ._estimators.checks import (check_choice, check_criterion, check_data, check_estimator_options, check_fraction,
                                check_generator, check_labels, check_loss, check_optional_flag, check_output,
                                check_output_function, check_step, check_weight)
from ._estimators.passes import ModelPasses, couples_batch, outside_inference_mode, sample_wise_forward
from ._estimators.steps import Step
from ._audit import DirectionAudit, audit_cosine
from ._estimators.core import autocast_clean_pass, autocast_device
from ._monitor import (DEFAULT_BAND, DEFAULT_WARMUP, DEFAULT_WINDOW, SecantMonitor, ratio_of_sums, secant_sums,
                      stats_dtype)
from ._renames import ESTIMATOR_KEYWORDS, renamed_attribute, renamed_keywords
from ._ops import IGNORE_INDEX
from ._ops.validation import DeferredTargetCheck, deferred_target_checks
from ._reduction import reduce
from ._subsample import complement, draw_subset, subset_mean

#: What ``penalty_kind=`` accepts: the estimators' PENALTY_KINDS and "none" (plain cross-entropy).
PENALTY_OPTIONS = PENALTY_KINDS + ("none",)
#: ``criterion(logits, target)`` -> the scalar loss the penalty is added to.
Criterion = Callable[[torch.Tensor, Any], torch.Tensor]


class MarginalDensityRegularizer(nn.Module):
    """loss = criterion(logits, target) + weight * mean R(x); ``reg(model, x, y, criterion=None) -> (loss, stats)``.

    Args:
        weight: lambda >= 0 (a Python or NumPy number, or a 0-d tensor).
        estimator: estimator of R: ``"rfd"`` (default: exact value, randomly signed secant for the
            gradient), ``"exact"``, ``"jvp"``, ``"fd"`` or ``"central"`` (see :mod:`._estimators.core`).
        step: h of the finite differences (float > 0 or ``"auto"``, see :mod:`._estimators.steps`).
        penalty_kind: ``"marginal"`` (||grad_x logsumexp f||^2, MDR), ``"conditional"`` (||grad_x CE||^2,
            IGR), ``"joint"`` (||grad_x f_y||^2) or ``"none"`` (plain CE).
        backend: implementation of the fused head op.
        fraction: share f in (0, 1] of each batch that the penalty is computed on (a random subset of
            max(1, round(f B)) samples, the penalty scaled to keep its expectation; see :mod:`._subsample`).
            The CE always covers the whole batch.
        batch_coupled: for ``fraction`` < 1, does the model's train-mode forward couple the samples of
            a batch? True: one forward of the whole batch, the subset's passes probes of it (BatchNorm's
            statistics are the whole batch's); False: the subset's forward serves its CE and the
            penalty, the rest of the batch takes a forward of its own (f (F + B_x + B) on top of plain
            instead of f (2F + B_x + 2B)); None (default): True when the model holds a train-mode
            BatchNorm or timm EvoNorm-B layer. A layer that couples samples by other means (batch-wise
            attention, a custom batch statistic) needs True.
        monitor_window: the :class:`~margreg_fast._monitor.SecantMonitor`'s window of steps.
        monitor_band: the band its median secant ratio must stay in.
        monitor_warmup: the steps before it judges.
        generator: a ``torch.Generator`` (on the inputs' device) for the random draws: the subset of
            ``fraction`` < 1 and ``rfd``'s signs; None draws them from torch's global generator.
        output: None (the model returns the (B, C) logits) or a function reading them from its output,
            ``output(model(x))``: ``lambda out: out.logits`` (Hugging Face), ``lambda out: out[0]``
            (a tuple), ``lambda out: out["logits"]`` (a dict). Every pass, the probes too, goes through it.
        audit_every: None (default: no audit) or N: every N steps (the first included) the direction
            audit (:mod:`._audit`) compares the estimator's parameter gradient of the penalty with fp32
            exact's (central's where exact is refused) on 8 samples; ``stats["audit_cosine"]`` holds the
            cosine (NaN on the other steps), and a :class:`~margreg_fast._audit.GradientDirectionWarning`
            says once when it falls below 0.5.
        sync: True (default): ``stats`` holds Python floats, from the step's one host transfer, and the
            secant monitor checks every step. False: no host synchronisation at all; ``stats`` and
            :attr:`last_stats` hold 0-d tensors on the device (float64; float32 on MPS), to be read when
            logging (``{k: float(v) ...}``, one transfer per read); the monitor, which needs the values
            on the host, is not fed (call ``reg.monitor.update(ratio, penalty, grad_norm)`` with the read
            values to keep it), and an out-of-range label fails a device assert instead of a ValueError.

    ``stats`` holds detached Python floats (see ``sync``): ``ce`` (the loss term: the mean CE, or the criterion's
    value), ``penalty`` (mean R),
    ``grad_norm`` (mean ||grad_x S|| of the penalised quantity S) and ``secant_ratio``
    (sqrt(sum slope^2 / sum ||grad_x S||^2), 1 when the estimator measures the gradient); the last
    two are NaN for ``penalty_kind="none"``. :attr:`last_stats` holds the last step's, also after
    :meth:`logits_and_penalty` (without ``ce``).

    ``model`` is an ``nn.Module`` or any function of x returning (B, C) logits (or, with ``output=``,
    an output they are read from). Labels of -100 mark
    unlabelled samples, as in ``F.cross_entropy``: the CE and the conditional / joint penalties
    are 0 there and averaged over the labelled samples; the marginal penalty, which needs no
    label, is averaged over all samples.
    """

    @renamed_keywords(ESTIMATOR_KEYWORDS)
    def __init__(self, weight: float, estimator: str = DEFAULT_ESTIMATOR, step: Step = DEFAULT_STEP,
                 penalty_kind: str = "marginal", backend: str = "auto", fraction: float = 1.0,
                 batch_coupled: Optional[bool] = None, monitor_window: int = DEFAULT_WINDOW,
                 monitor_band: Tuple[float, float] = DEFAULT_BAND, monitor_warmup: int = DEFAULT_WARMUP,
                 generator: Optional[torch.Generator] = None, output: Optional[Callable] = None,
                 audit_every: Optional[int] = None, sync: bool = True) -> None:
        super().__init__()
        if not isinstance(sync, bool):
            raise TypeError(f"sync must be True or False, got {type(sync).__name__}")
        self.sync = sync
        self.generator = check_generator(generator)
        self.output = check_output_function(output)
        self.last_stats: Dict[str, float] = {}
        check_estimator_options(estimator, backend)
        self.weight, self.step = check_weight(weight), check_step(step)
        self.estimator, self.backend = estimator, backend
        self.fraction = check_fraction(fraction)
        self.batch_coupled = check_optional_flag(batch_coupled, "batch_coupled")
        self.penalty_kind = check_choice("penalty_kind", penalty_kind, PENALTY_OPTIONS)
        self.monitor = SecantMonitor(estimator, monitor_window, monitor_band, monitor_warmup)
        self.audit = None if audit_every is None else DirectionAudit(audit_every, estimator)

    method = renamed_attribute("method", "estimator")
    penalty = renamed_attribute("penalty", "penalty_kind")

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, estimator={self.estimator!r}, step={self.step!r}, "
                f"penalty_kind={self.penalty_kind!r}, fraction={self.fraction}, batch_coupled={self.batch_coupled}")

    @outside_inference_mode
    def forward(self, model: nn.Module, x: torch.Tensor, target, criterion: Optional[Criterion] = None
                ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``(loss, stats)``: loss = criterion(logits, target) + weight * mean R(x), logits = output(model(x)).

        ``criterion=None``: the mean cross-entropy with ``ignore_index=-100``, ``target`` integer class
        indices (B,). Otherwise ``criterion(logits, target)`` returns the scalar loss and ``target`` is
        whatever it takes (soft (B, C) targets, mixup's mixed targets); it sees the logits of the whole
        batch, in the batch's order, for every ``fraction``.
        """
        model = check_data(model, x, self.output)
        check_generator(self.generator, x)
        check_criterion(criterion)
        labels = self._labels(target, x, criterion)
        if self.penalty_kind == "none":
            logits = check_output(model(x), x)
            data = _cross_entropy(logits, labels) if criterion is None else check_loss(criterion(logits, target))
            self.last_stats = {"ce": data.item() if self.sync else data.detach(), "penalty": 0.0,
                               "grad_norm": float("nan"), "secant_ratio": float("nan")}
            return data, dict(self.last_stats)
        with deferred_target_checks() as checks:  # read at _observe's one transfer
            data, est, penalty, est_labels = self._passes(model, x, labels, with_ce=criterion is None)
        if criterion is not None:  # data: the whole batch's logits
            data = check_loss(criterion(data, target))
        self._observe(est, penalty, est_labels, x, checks, ce=data)
        self._audit(model, x, labels)
        return data + self.weight * penalty, dict(self.last_stats)

    @outside_inference_mode
    def logits_and_penalty(self, model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penalty)`` for a loop that owns its loss: loss = its_loss(logits) + weight * penalty.

        ``logits``: (B, C), the whole batch's, in its order, from the forward that the penalty shares
        (for every ``fraction``; ``output=`` applied). ``penalty``: the differentiable mean marginal
        penalty, ``fraction`` applied (a subset's mean scaled as in :mod:`._subsample`) and the weight
        NOT applied. The monitor updates as in :meth:`forward`, and :attr:`last_stats` holds the step's
        ``penalty``, ``grad_norm`` and ``secant_ratio``. Only for ``penalty_kind="marginal"`` (which needs no
        label) and ``"none"`` (penalty 0).
        """
        model = check_data(model, x, self.output)
        check_generator(self.generator, x)
        if self.penalty_kind in ("conditional", "joint"):
            raise ValueError(f"logits_and_penalty takes no labels, and penalty_kind={self.penalty_kind!r} needs them: call "
                             f"reg(model, x, y, criterion=...) instead, or use penalty_kind='marginal'")
        if self.penalty_kind == "none":
            logits = check_output(model(x), x)
            self.last_stats = {"penalty": 0.0, "grad_norm": float("nan"), "secant_ratio": float("nan")}
            return logits, logits.new_zeros(())
        with deferred_target_checks() as checks:
            logits, est, penalty, _ = self._passes(model, x, None, with_ce=False)
        self._observe(est, penalty, None, x, checks)
        self._audit(model, x, None)
        # the estimate's forward runs with grad enabled (for grad_x); a caller without grad gets values
        return (logits, penalty) if torch.is_grad_enabled() else (logits.detach(), penalty.detach())

    def _labels(self, target, x: torch.Tensor, criterion: Optional[Criterion]) -> Optional[torch.Tensor]:
        """The integer labels that the default CE or a labelled penalty reads from ``target`` (None: neither)."""
        if criterion is None:
            return check_labels(target, x)
        if self.penalty_kind in ("marginal", "none"):
            return None
        try:
            return check_labels(target, x)
        except (TypeError, ValueError) as err:
            raise type(err)(f"penalty_kind={self.penalty_kind!r} is defined on integer class labels, so with a criterion its "
                            f"target must be the labels (B,). Soft or mixed targets need penalty_kind='marginal', "
                            f"which needs no label. ({err})") from err

    def _passes(self, model, x: torch.Tensor, labels: Optional[torch.Tensor], with_ce: bool
                ) -> Tuple[torch.Tensor, Estimate, torch.Tensor, Optional[torch.Tensor]]:
        """(data, estimate, mean penalty, the labels of the estimate's samples) of one step.

        data: the mean CE over the whole batch (``with_ce``: the default criterion, fused with the head
        op where the estimate's forward serves it) or the whole batch's logits in its order.
        """
        needs_label = self.penalty_kind != "marginal"  # the marginal penalty needs no label
        if self.fraction == 1.0:
            est = self._estimate(model, x, labels, with_ce=with_ce)
            data = reduce(est.ce, "mean", labels=labels) if with_ce else est.logits
            return data, est, reduce(est.value, "mean", labels=labels if needs_label else None), labels
        data, est, idx = self._subset_estimate(model, x, labels, with_ce)
        penalty = subset_mean(est.value, x.shape[0], labels=labels if needs_label else None)
        return data, est, penalty, _rows(labels, idx)

    def _subset_estimate(self, model, x: torch.Tensor, labels: Optional[torch.Tensor], with_ce: bool
                         ) -> Tuple[torch.Tensor, Estimate, torch.Tensor]:
        """(data as in :meth:`_passes`, the estimate on a drawn subset, the subset's indices)."""
        detected = couples_batch(model)
        if detected and self.batch_coupled is False:  # before any pass: a refused step changes no state
            raise ValueError("batch_coupled=False, but the model holds a train-mode BatchNorm (or timm EvoNorm-B) "
                             "layer, whose statistics couple the samples of a batch; leave batch_coupled=None")
        if detected or self.batch_coupled:
            passes, device_type = ModelPasses(model), autocast_device(x)
            # under autocast: the CE's forward in its dtype, the penalty's held statistics an fp32 capture's
            logits = check_output(passes.clean(x), x) if device_type is None else \
                autocast_clean_pass(passes, model, x, x, device_type)[0]
            data = _cross_entropy(logits, labels) if with_ce else logits
            idx = draw_subset(x.shape[0], self.fraction, x.device, self.generator)
            passes.rows(idx, x.shape[0])  # the subset's rows of the clean pass's activation patterns
            return data, self._estimate(model, x[idx], _rows(labels, idx), passes=passes), idx
        idx = draw_subset(x.shape[0], self.fraction, x.device, self.generator)
        rest = complement(idx, x.shape[0])
        rest_logits = None
        if rest.numel():  # the rest first: a batch-norm call it refuses has then changed no state
            x_rest = x[rest]
            rest_logits = check_output(sample_wise_forward(model, x_rest), x_rest)
        est = self._estimate(model, x[idx], _rows(labels, idx), with_ce=with_ce)
        if not with_ce:
            return _in_batch_order(est.logits, rest_logits, idx, rest), est, idx
        ce = est.ce if rest_logits is None else torch.cat(
            [est.ce, F.cross_entropy(rest_logits, labels[rest], reduction="none", ignore_index=IGNORE_INDEX)])
        return reduce(ce, "mean", labels=labels), est, idx

    def _observe(self, est: Estimate, penalty: torch.Tensor, est_labels: Optional[torch.Tensor], x: torch.Tensor,
                 checks: List[DeferredTargetCheck], ce: Optional[torch.Tensor] = None) -> None:
        """Feed the monitor and set :attr:`last_stats`, in one host synchronisation: the statistics, the
        monitor's two sums and the head op's target range checks travel in one tensor (``sync=False``:
        none; the statistics stay on the device and the range checks become device asserts)."""
        grad_norm = reduce(est.grad_norm, "mean", labels=est_labels if self.penalty_kind != "marginal" else None)
        named = ({} if ce is None else {"ce": ce}) | {"penalty": penalty, "grad_norm": grad_norm}
        dtype = stats_dtype(penalty.device)
        means = torch.stack([t.detach().to(dtype) for t in named.values()])
        sums = secant_sums(est.slope, est.grad_norm)
        bad = [check.bad.any() for check in checks]
        if not self.sync:
            for flag, check in zip(bad, checks):
                torch._assert_async(~flag, f"margreg_fast: target contains a class index outside "
                                           f"[0, {check.num_classes}) (and not ignore_index={check.ignore_index})")
            stats = dict(zip(named, means.unbind()))
            stats["secant_ratio"] = torch.where(sums[1] > 0, (sums[0] / sums[1]).sqrt(), float("nan"))
            self.last_stats = stats
            return
        host = torch.cat([means, sums] + ([torch.stack(bad).to(dtype)] if bad else [])).tolist()
        n = len(named)
        values, (slope_sq, grad_sq), flags = host[:n], host[n:n + 2], host[n + 2:]
        for flag, check in zip(flags, checks):
            check.raise_if_bad(flag != 0)
        stats = dict(zip(named, values))
        stats["secant_ratio"] = ratio_of_sums(slope_sq, grad_sq)
        self.monitor.update(stats["secant_ratio"], stats["penalty"], stats["grad_norm"], x)
        self.last_stats = stats

    def _audit(self, model, x: torch.Tensor, labels: Optional[torch.Tensor]) -> None:
        """With ``audit_every``: the direction audit's cosine in :attr:`last_stats` (NaN on unaudited steps)."""
        if self.audit is None:
            return
        cosine = float("nan")
        if self.audit.due():
            cosine, reference = audit_cosine(model, x, labels, penalty_kind=self.penalty_kind, estimator=self.estimator,
                                             step=self.step, backend=self.backend, samples=self.audit.samples)
            self.audit.check(cosine, reference, self.last_stats["secant_ratio"], autocast_device(x) is not None)
        self.last_stats["audit_cosine"] = cosine

    def _estimate(self, model, x: torch.Tensor, y: Optional[torch.Tensor], **options) -> Estimate:
        return estimate(model, x, y, penalty_kind=self.penalty_kind, estimator=self.estimator, step=self.step, backend=self.backend,
                        generator=self.generator, **options)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The default criterion: mean CE over the labelled samples (``F.cross_entropy``'s ignore_index)."""
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def _rows(labels: Optional[torch.Tensor], idx: torch.Tensor) -> Optional[torch.Tensor]:
    return None if labels is None else labels[idx]


def _in_batch_order(subset_logits: torch.Tensor, rest_logits: Optional[torch.Tensor], idx: torch.Tensor,
                    rest: torch.Tensor) -> torch.Tensor:
    """The whole batch's logits in its order, from the subset's (rows ``idx``) and the rest's (rows ``rest``)."""
    rows, order = (subset_logits, idx) if rest_logits is None else (
        torch.cat([subset_logits, rest_logits]), torch.cat([idx, rest]))
    return rows[torch.argsort(order)]  # row j holds sample order[j]: the inverse permutation puts it back
