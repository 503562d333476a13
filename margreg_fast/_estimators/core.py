r"""The estimators of R(x) = ||grad_x S(f(x))||^2 (S from :mod:`.quantities`) and of its theta-gradient.

Every estimator first computes g = grad_x S exactly, by one backward to the input only (no
parameter gradients), from the same forward that gives the logits. The finite differences then work
along v = g / ||g|| (detached), where d/de S(f(x + e v)) at e = 0 is g . v = ||g||. Costs count passes
through the model (F = forward, B_x = backward to the input, B = the training backward through
everything that was built):

* ``exact``: R = ||g||^2 with g built with ``create_graph``; theta-gradient by double backprop.
  F + B_x(with graph) + double backward. Fails clearly (:mod:`.errors`) on ops without double backward.
* ``jvp``: R = (d/de S(f(x + e v)))^2 by ``torch.func.jvp`` (forward mode). Exact value and gradient:
  d/dtheta (g . v)^2 = 2 (g . v)(dg/dtheta . v) = d||g||^2/dtheta since v is parallel to g.
  F + B_x + a forward with tangents + B.
* ``fd``: R = sigma^2 with the forward secant sigma = (S(x + h v) - S(x)) / h. F + B_x + F + B.
  sigma = ||g|| + (h/2) v^T H v + ..., and training can learn a negative curvature term along v;
  on max-pool ReLU nets it did, through the kinks and ties its one-sided probe crossed, before
  the probes replayed activation patterns (``benchmarks/results/estimator_training.md`` now shows
  fd's true R within 1.05x of its exact-trained twin's). Every probe computes
  ReLU, clamps and max pooling on the clean pass's linear piece (activation-pattern replay,
  :mod:`.patterns`), so the secant converges to autograd's directional derivative at x, also at
  kinks and max-pool ties.
* ``central``: R = ((S(x + h v) - S(x - h v)) / 2h)^2, error O(h^2). One more forward than fd; the
  two probes run as two forwards of B inputs, each replaying the clean pass's random draws (one
  forward of 2B would draw masks of another shape, and recompile a compiled model for a new shape).
* ``rfd`` (the default): R = ||g||^2, exact, and the theta-gradient of ||g||^2 = 2 ||g|| d(g . v)/dtheta
  from a randomly signed secant,

      surrogate = ||g||^2 + 2 ||g|| (sigma_s - stopgrad(sigma_s)),
      sigma_s   = (S(x + s h v) - S(x)) / (s h),   s = +-1 uniformly per sample.

  Its value is the exact R; its gradient is 2 ||g|| dsigma_s/dtheta. sigma_s = ||g|| + s (h/2) v^T H v
  + O(h^2), so the curvature term that fd's training exploits enters with a random sign and cancels
  in expectation: E_s[dsigma_s/dtheta] = d/dtheta of the central secant (S(x + hv) - S(x - hv)) / 2h,
  i.e. the gradient of ||g||^2 with O(h^2) bias, at fd's cost (F + B_x + F + B). With the clean
  pass's activation patterns replayed in the probe, that is the derivative inside x's linear piece,
  the pattern held constant, as exact's double backprop takes it. s is drawn from
  ``generator`` (a ``torch.Generator`` on x's device) or, without one, torch's global generator.
  Under ``torch.no_grad()`` (evaluation) no parameter gradient is wanted: rfd returns ||g||^2 and
  its slope ||g|| (ratio 1) with no probe forward and no draw.

**Autocast.** Under ``torch.autocast`` to bf16 or fp16 on x's device, the forward at x runs as the
caller's, in the autocast dtype: its logits serve the CE, it updates the running statistics once and
draws the random masks. Every pass of the penalty -- a capture of x that gives g, the probes,
exact's double backward -- runs with autocast off, in the model's own precision (fp32): the capture
computes its own fp32 batch statistics (changing no state) from the generator states the caller's
forward started from, so it draws the same masks, and the probes hold those statistics and replay
those draws. (With ``passes`` given -- the regulariser's ``fraction`` < 1 on a batch-coupled model --
the regulariser's clean pass over the whole batch is the same pair, the caller's forward and an fp32
capture (:func:`autocast_clean_pass`), and the subset's probes hold that capture's fp32 statistics.)
A difference of two bf16 forwards carries the forward's rounding (about 2^-8 of the activations at
every layer), which no step can beat on a deep net: a step large enough to rise
above it leaves the range where a secant measures a slope, and the parameter gradient of the
penalty loses its direction while its value and secant ratio stay near fp32's. The cost: one fp32
forward more than the bf16 one, and the penalty's passes at fp32 speed
(``benchmarks/results/estimator_autocast.md``).

Every estimate also returns the secant slope sigma next to ||g|| (detached), so a training loop can
watch sigma / ||g||, which is 1 when the finite difference measures what it should
(:mod:`margreg_fast._monitor`). v and h are detached. Every pass goes through
:class:`.passes.ModelPasses`: the clean pass through the model as given (DDP, compiled), probes
with no second update of running statistics, train-mode batch-norm statistics held as the clean
batch's and the clean pass's random draws (dropout, drop-path) replayed -- the one per-sample
meaning that all estimators share.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import errors
from .checks import check_output
from .passes import ModelPasses, RandomState, has_train_mode_batchnorm, outside_inference_mode
from .quantities import PENALTY_KINDS, difference, value
from .registry import ESTIMATORS
from .steps import Step, broadcast_step, resolve_step, unit_direction


class Estimate(NamedTuple):
    """Per-sample results, all of shape (B,)."""

    value: torch.Tensor  #: estimate of R(x), differentiable in the model's parameters
    ce: Optional[torch.Tensor]  #: CE of the logits at x (only when asked for)
    grad_norm: torch.Tensor  #: ||grad_x S||, exact (detached)
    slope: torch.Tensor  #: the estimator's directional slope along v (detached); ||g|| for exact
    logits: torch.Tensor  #: (B, C) logits at x of the estimate's forward (z0; they may serve a loss, see the regulariser)


def _logits_and_grad_source(passes: ModelPasses, x: torch.Tensor, logits: Optional[torch.Tensor], held: bool
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_in, z0, zg): z0 = the logits at x; zg = logits computed from x_in (requires grad) for grad_x.

    Without ``logits`` one forward serves both. With ``logits`` computed from an x that requires
    grad they serve both too, unless a train-mode BatchNorm module's statistics must be captured
    (random draws of the caller's forward cannot be replayed: the probes check that they draw none,
    :meth:`.ModelPasses.share`). Otherwise the
    gradient needs one more forward of a grad-enabled copy (changing no state), and its logits serve
    as z0 too: given logits that were detached, or computed from another x, would give the finite
    differences a wrong base point and parameter gradient. With ``held`` the batch statistics were
    captured by an earlier clean pass over a larger batch: the forward at x is then a probe too.
    """
    if held:
        x_in = x.detach().requires_grad_(True)
        z0 = check_output(passes.probe(x_in), x)
        return x_in, z0, z0
    if x.requires_grad and logits is not None and not has_train_mode_batchnorm(passes.inner):
        passes.share(x)
        return x, logits, logits
    x_in = x if x.requires_grad else x.detach().requires_grad_(True)
    z0 = check_output(passes.clean(x_in) if logits is None else passes.capture(x_in), x)
    return x_in, z0, z0


def _input_gradient(s: torch.Tensor, x_in: torch.Tensor, passes: ModelPasses, logits_given: bool,
                    create_graph: bool) -> torch.Tensor:
    g = None
    if s.requires_grad:  # logits with no graph at all do not depend on x either
        with passes.input_gradient():
            (g,) = torch.autograd.grad(s.sum(), x_in, retain_graph=True, create_graph=create_graph, allow_unused=True)
    if g is None:
        if logits_given:
            raise ValueError("logits do not depend on x: pass the logits of model(x) computed from this x with "
                             "grad enabled (or omit logits)")
        g = torch.zeros_like(x_in)
    return g


def _exact_gradient(s: torch.Tensor, x_in: torch.Tensor, passes: ModelPasses, logits_given: bool,
                    name: str) -> torch.Tensor:
    """g with its graph, for the double backward of estimator ``name`` (named in its errors)."""
    try:
        g = _input_gradient(s, x_in, passes, logits_given, create_graph=True)
    except RuntimeError as err:
        if errors.is_derivative_error(err):
            raise errors.unsupported(name, err) from err
        raise
    errors.check_twice_differentiable(g, name)
    return g


def _jvp_slope(passes: ModelPasses, x: torch.Tensor, v: torch.Tensor, penalty_kind: str,
               target: Optional[torch.Tensor], name: str) -> torch.Tensor:
    """d/de S(x + e v) at e = 0 by forward mode, for estimator ``name`` (named in its errors)."""
    try:
        _, slope = torch.func.jvp(lambda xx: value(penalty_kind, passes.probe(xx), target), (x,), (v,))
    except RuntimeError as err:  # NotImplementedError included
        if errors.is_derivative_error(err):
            raise errors.unsupported(name, err) from err
        raise
    return slope


def autocast_device(x: torch.Tensor) -> Optional[str]:
    """x's device type when autocast to a lower precision than fp32 is active there, else None."""
    kind = x.device.type
    try:
        on = torch.is_autocast_enabled(kind)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        return None
    return kind if on and torch.get_autocast_dtype(kind) in (torch.bfloat16, torch.float16) else None


def penalty_precision(device_type: Optional[str]):
    """Autocast off on ``device_type`` inside (the penalty's passes in the model's own precision), or nothing."""
    return torch.autocast(device_type, enabled=False) if device_type is not None else contextlib.nullcontext()


def _autocast_sources(passes: ModelPasses, model, x: torch.Tensor, logits: Optional[torch.Tensor], device_type: str
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_in, z0, z_ce) under autocast: z_ce = the caller's forward in the autocast dtype (the CE's: it
    updates running statistics and draws the masks; ``logits`` when given), z0 = an fp32 capture of x_in
    with its own fp32 batch statistics (no state changed), from the generator states that the caller's
    forward started from (the same masks). Statistics from the bf16 forward would carry its rounding
    into every probe: on efficientnet_b0 at 64 px that alone turned the gradient's cosine with fp32
    exact from 0.9999 to 0.47."""
    x_in = x.detach().requires_grad_(True)
    z_ce, z0 = autocast_clean_pass(passes, model, x, x_in, device_type, logits)
    return x_in, z0, z_ce


def autocast_clean_pass(passes: ModelPasses, model, x: torch.Tensor, x_in: torch.Tensor, device_type: str,
                        logits: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(z_ce, z0): the caller's forward at x in the autocast dtype (``logits`` when given), then an fp32
    capture at ``x_in`` from the generator states that forward started from, whose statistics the probes
    hold. Also the clean pass of the regulariser's ``fraction`` < 1 on a batch-coupled model under
    autocast, whose subset's passes then hold the whole batch's fp32 statistics."""
    start = RandomState(x.device)
    z_ce = check_output(model(x), x) if logits is None else logits
    with start.replayed(), penalty_precision(device_type):
        z0 = check_output(passes.capture(x_in), x)
    return z_ce, z0


def _random_signs(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """s = +-1 per sample, from ``generator`` (torch's global generator when None)."""
    return torch.randint(0, 2, (x.shape[0],), device=x.device, generator=generator).to(
        torch.float64 if x.dtype == torch.float64 else torch.float32).mul_(2).sub_(1)


@outside_inference_mode
def estimate(model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor], *, penalty_kind: str, estimator: str,
             step: Step, logits: Optional[torch.Tensor] = None, backend: str = "auto",
             with_ce: bool = False, generator: Optional[torch.Generator] = None,
             passes: Optional[ModelPasses] = None) -> Estimate:
    """Estimate R(x) per sample with ``estimator`` (arguments validated by the caller; ``generator`` draws rfd's signs).

    ``passes``: the :class:`.passes.ModelPasses` of ``model`` whose clean pass already ran over a
    batch that contains x (the regulariser's ``fraction`` < 1). Every pass of this estimate is then a
    probe: train-mode BatchNorm normalises x with that whole batch's statistics, and random draws
    replay that clean pass's generator states. Under autocast the penalty's passes run in fp32 (see
    "Autocast" in the module docstring).
    """
    entry = ESTIMATORS[estimator]
    held = passes is not None
    passes = passes if held else ModelPasses(model)
    # exact differentiates g itself; an exact value needs no probe when no parameter gradient is wanted
    probe_free = entry.double_backward or (entry.exact_value and not torch.is_grad_enabled())
    if entry.double_backward:  # before any pass: a failed estimate changes no state
        errors.check_fsdp_exact(model)
        errors.check_compiled_exact(model)
    device_type = autocast_device(x)
    z_ce = None
    with torch.enable_grad():  # grad_x is needed even when called under torch.no_grad() (evaluation)
        if device_type is not None and not held:
            x_in, z0, z_ce = _autocast_sources(passes, model, x, logits, device_type)
            zg = z0
        else:
            with penalty_precision(device_type):
                x_in, z0, zg = _logits_and_grad_source(passes, x, logits, held)
        with penalty_precision(device_type):
            s = value(penalty_kind, zg, target)
            if entry.double_backward:
                g = _exact_gradient(s, x_in, passes, logits is not None, entry.name)
            else:
                g = _input_gradient(s, x_in, passes, logits is not None, create_graph=False)
    z_ce = z0 if z_ce is None else z_ce
    # a forward secant's head-op pass on (z0, z1) also gives the CE of z0, when z0 is the CE's forward
    fused = entry.secant == "forward" and not probe_free and z_ce is z0
    ce = F.cross_entropy(z_ce.float() if z_ce is not z0 else z0, target, reduction="none") \
        if with_ce and not fused else None
    with penalty_precision(device_type):
        return _finish(entry, passes, x, target, g, z0, z_ce, ce, probe_free, step=step, penalty_kind=penalty_kind,
                       backend=backend, with_ce=with_ce and fused, generator=generator)


def _finish(entry, passes: ModelPasses, x: torch.Tensor, target: Optional[torch.Tensor], g: torch.Tensor,
            z0: torch.Tensor, z_ce: torch.Tensor, ce: Optional[torch.Tensor], probe_free: bool, *, step: Step,
            penalty_kind: str, backend: str, with_ce: bool, generator: Optional[torch.Generator]) -> Estimate:
    """The estimate from g = grad_x S and the logits z0 at x (``z_ce``: the logits that the CE read), made
    as the registry entry ``entry`` says: its secant, the sign of its step, and its value (the secant's
    square, or for an exact value the surrogate ||g||^2 + 2 ||g|| (sigma - stopgrad(sigma)))."""
    if probe_free:  # exact; rfd under no_grad, whose value ||g||^2 needs no probe
        r = g.flatten(1).pow(2).sum(dim=1)
        norm = r.detach().sqrt()
        return Estimate(r, ce, norm, norm, z_ce)

    v, g_norm = unit_direction(g)
    if entry.forward_mode:
        slope = _jvp_slope(passes, x, v, penalty_kind, target, entry.name)
        return Estimate(slope ** 2, ce, g_norm, slope.detach(), z_ce)

    h = resolve_step(step, x, z0.dtype, g_norm, entry)
    if entry.random_sign:
        h = _random_signs(x, generator) * h
    if entry.secant == "central":
        hv = broadcast_step(h, x) * v
        # two forwards of B, not one of 2B: each replays the clean pass's draws (masks of 2B rows would
        # differ), and a compiled model sees the shape it compiled for
        z_minus, z_plus = passes.probe(x - hv), passes.probe(x + hv)
        d, _ = difference(penalty_kind, z_minus, z_plus, target, backend, False)
        slope = d / (2 * h)
    else:  # "forward"
        d, fused_ce = difference(penalty_kind, z0, passes.probe(x + broadcast_step(h, x) * v), target, backend,
                                 with_ce)
        ce = fused_ce if with_ce else ce
        slope = d / h
    if not entry.exact_value:
        return Estimate(slope ** 2, ce, g_norm, slope.detach(), z_ce)
    g_norm = g_norm.to(slope.dtype)
    return Estimate(g_norm ** 2 + 2 * g_norm * (slope - slope.detach()), ce, g_norm, slope.detach(), z_ce)


__all__ = ["PENALTY_KINDS", "Estimate", "estimate"]
