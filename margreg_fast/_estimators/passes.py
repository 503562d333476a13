r"""The passes an estimate makes through the model: batch-norm statistics held, random draws replayed.

**Train-mode BatchNorm.** A train-mode BatchNorm normalises each sample with the mean and variance of
the whole batch, so E_i = logsumexp f(x)_i depends on every x_j and "the input gradient of sample i"
is ambiguous: double backprop of sum_j E_j picks up cross-sample terms through the statistics, while
moving the whole batch along V (fd, jvp) reads another quantity again. margreg_fast defines, for
every estimator,

    R_i = || d/dx_i E_i(x_i; theta, mu(theta, X), var(theta, X)) ||^2,

the statistics (mu, var) of the clean batch X held fixed in x, but still functions of theta. So the
penalty is that of the model with BatchNorm frozen at this batch's statistics, and its theta-gradient
includes the path through the statistics. The cross-entropy is untouched: the clean forward is an
ordinary train-mode forward (running statistics updated once, gradient through the batch statistics).

**Stochastic layers.** Dropout, drop-path and any op drawing from torch's generators draw in the
clean pass; each probe pass starts from the generator states recorded just before the clean pass
(CPU and the device of x), so every pass draws the same masks, and afterwards the generators are put
back where they were before the probe. Every estimator then computes the penalty of the network with
the clean pass's masks.

**The mechanism.** One :class:`torch.overrides.TorchFunctionMode` is active around each pass of an
estimate. It intercepts the batch-norm *computation* (``torch.nn.functional.batch_norm`` and
``torch.batch_norm``), whatever module or user code calls it: ``nn.BatchNorm*``, subclasses that add
an activation (timm's ``BatchNormAct2d``), ``F.batch_norm`` in a user's forward, single-process
``SyncBatchNorm``. Calls are keyed by their ORDER among the train-mode calls of a pass (a train-mode
call: ``training=True``, which modules also pass when they keep no running statistics).

* **Clean pass** (:meth:`ModelPasses.clean`, through the object the user passed: the DDP wrapper, the
  compiled module). Each train-mode call runs unchanged (running statistics updated once, BatchNorm's
  own training gradient); the handler records the batch statistics ``(mean, biased var)`` of its
  input, with their theta graph, and wraps exactly the call's output in :class:`_HeldStatsGradient`,
  an identity whose backward, only while the estimator asks for grad_x
  (:meth:`ModelPasses.input_gradient`), sends ``grad_out * weight / sqrt(var + eps)`` to the call's
  input -- the Jacobian with the statistics fixed -- instead of BatchNorm's own backward. An
  activation the module applies afterwards (in place or not) is differentiated as usual. ``exact``
  differentiates that gradient again; the scale keeps its graph, so theta-gradients through the
  statistics are included.
* **Probe passes** (x + h v, jvp; :meth:`ModelPasses.probe`) through the unwrapped module (DDP's
  ``.module``, which may be compiled: never a second DDP forward). The k-th train-mode call
  normalises with the k-th captured statistics, by the eval-mode ``batch_norm`` with the statistics
  detached and a reparametrised affine, ``gamma' = gamma s_d / s`` and
  ``beta' = beta - gamma' (mu - mu_d) / s_d`` (s = sqrt(var + eps), _d = detached), whose values equal
  gamma and beta and whose gradients carry the statistics' theta path:
  (a - mu_d) gamma' / s_d + beta' = (a - mu) gamma / s + beta. Nothing is written to the running
  statistics. A probe whose train-mode calls differ in number or channel count from the clean pass's
  raises :class:`HeldStatisticsError`.
* **Capture** (:meth:`ModelPasses.capture`): the clean pass at x changing no state (when the caller
  brought its own logits). Captures and probes run with the BatchNorm modules'
  ``track_running_stats`` off (:func:`frozen_running_stats`), and a capture's functional train-mode
  calls run without the running buffers they pass: no running statistic or counter moves. The flag
  is restored in a ``finally``, on every exit (tested with a model that raises in a pass).

The statistics of a native train-mode call are read from its autograd node (``NativeBatchNormBackward0``'s
saved mean and 1 / sqrt(var + eps): private attributes, :func:`native_statistics`), and recomputed
wherever that read is not certain (another node, other attributes; tested by renaming the node).

Multi-process ``SyncBatchNorm`` (CUDA, world size > 1) computes its statistics with
``torch.batch_norm_stats`` and gathers them across processes; holding such statistics is not
implemented, and those ops raise :class:`HeldStatisticsError` that says so (use per-process
``nn.BatchNorm*d`` under DDP, or put the SyncBatchNorm layers in eval mode). The mode is
thread-local, so forwards in other threads escape it: ``nn.DataParallel`` over several devices is
refused (:func:`check_passable`), as are timm's EvoNorm-B layers in train mode, whose batch variance
is computed in their own code, with no batch-norm call to hold.

**Activation patterns** (:mod:`.patterns`). The same mode records, in the clean pass (and a
capture), the pattern of each piecewise-linear call in call order -- relu's mask, the side of each
element of relu6 / hardtanh, leaky_relu's mask, max pooling's argmax indices -- and each probe
computes the op as the clean piece's linear map of its own input (t * mask, the clamp values
outside, t gathered at the clean indices). S along the probe is then smooth in x and theta, its
secant converges to autograd's directional derivative at x with an O(h) error from the smooth ops'
curvature only, and its theta-gradient treats the pattern as a constant, as exact's double
backprop does (relu'' = 0). A probe whose piecewise-linear calls differ from the clean pass's in
order, kind, shape or number raises :class:`.patterns.PatternReplayError`. Where the passes stay
compiled (below) the mode does not see the ops inside dynamo's graphs: nothing is recorded and the
probes compute the ops as they are, crossing kinks as before (``ModelPasses.replays_patterns`` is
False). With shared logits (below) the caller's forward was not seen either: nothing is replayed.

**Shared logits.** When the caller's own logits serve as the clean pass (``logits=``, x requiring
grad, no train-mode ``_BatchNorm`` module), the masks of the caller's forward are unknown: the probes
then start from one recorded state, and a probe that draws random numbers raises
:class:`HeldStatisticsError` (omit ``logits=``), as does a probe that makes train-mode batch-norm
calls that no module announced.

**Activation checkpointing** (``torch.utils.checkpoint``, non-reentrant, timm's
``set_grad_checkpointing``). A checkpointed region saves nothing and recomputes its forward in
backward, outside any pass: a probe's batch norm would be recomputed with the probe's own statistics,
and torch's consistency check fails. Inside a pass each op stores its saved tensors itself while the
innermost saved-tensor hooks are a checkpoint's (:func:`_stored_here`): nothing is recomputed, the
values are the uncheckpointed model's, and the regularised step needs the memory of an
uncheckpointed forward for those regions.

**Inference mode.** ``torch.inference_mode`` forbids the autograd that every penalty needs (grad_x);
:func:`outside_inference_mode` lifts it around an estimate and the regulariser's step, so they give
the true value, as under ``torch.no_grad``.

**torch.compile.** The handler of the batch-norm calls cannot be traced: the gradient switch is a
Python flag its backward reads, which dynamo would bake into the compiled graph as a constant. A
compiled graph broken at each batch-norm call would hand the call's output to the next graph as an
input, and AOTAutograd fails on an input that the graph both saves and modifies in place (an in-place
activation after BatchNorm, timm's ``BatchNormAct2d``: "modified by an inplace operation"). So the
passes of a compiled model with train-mode BatchNorm run eagerly
(``torch.compiler.set_stance("force_eager")``, only while an estimate runs: the model's own forward
elsewhere stays compiled), and so does their input-gradient backward. A compiled model without
train-mode BatchNorm stays compiled in every pass; its functional train-mode batch-norm calls, if
any, graph-break at the handler, and its activation patterns are not replayed (a graph break at
every ReLU would cost the compiled speed, and in-place activations hit the AOTAutograd failure
above): its probes are today's, which cross kinks at the automatic step. ``torch._functorch.config.donated_buffer`` is switched off around
the passes of compiled models only (:func:`_compiled_graphs_retainable`).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
from contextlib import contextmanager
from typing import Iterator, List, NamedTuple, Optional, Tuple

import torch
import torch._functorch.config
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from .checks import OutputModel
from .patterns import PIECEWISE, Patterns


class HeldStatisticsError(RuntimeError):
    """A pass's batch-norm calls cannot be matched with the clean pass's held statistics."""


class _BatchNormCall(NamedTuple):
    """One batch-norm call, whichever function made it, in ``F.batch_norm``'s argument order."""

    input: torch.Tensor
    running_mean: Optional[torch.Tensor]
    running_var: Optional[torch.Tensor]
    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    training: bool
    momentum: Optional[float]
    eps: float


def _functional_call(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-5) -> _BatchNormCall:
    return _BatchNormCall(input, running_mean, running_var, weight, bias, training, momentum, eps)


def _aten_call(input, weight, bias, running_mean, running_var, training, momentum, eps,
               cudnn_enabled=True) -> _BatchNormCall:
    return _BatchNormCall(input, running_mean, running_var, weight, bias, training, momentum, eps)


#: The intercepted functions and how each orders its arguments.
_BATCH_NORMS = {F.batch_norm: _functional_call, torch.batch_norm: _aten_call}
#: Ops of multi-process SyncBatchNorm, whose cross-process statistics cannot be held.
_SYNC_BATCH_NORM_OPS = (torch.batch_norm_stats, torch.batch_norm_gather_stats_with_counts, torch.batch_norm_elemt)


class _Switch:
    """Mutable flag shared by one estimate's gradient switches: is the current backward the input-gradient pass?"""

    def __init__(self) -> None:
        self.input_gradient = False


class _HeldStatsGradient(torch.autograd.Function):
    """Identity on a batch-norm output; in input-gradient mode its backward is grad * scale to the call's input."""

    @staticmethod
    def forward(ctx, output, layer_input, scale, switch):
        ctx.switch, ctx.scale = switch, scale
        # An in-place identity: no copy. Nothing has saved this fresh output yet, so marking it dirty
        # invalidates no saved tensor, and in-place activations after it stay legal.
        ctx.mark_dirty(output)
        return output

    @staticmethod
    def backward(ctx, grad):
        if ctx.switch.input_gradient:
            return None, grad * ctx.scale, None, None
        return grad, None, None, None


class _BatchStatistics(torch.autograd.Function):
    r"""Per-channel mean and biased variance of a (N, C, L) tensor, with a fused backward.

    Forward: the statistics the native batch-norm kernel has just computed for this tensor
    (``known``: its saved mean and variance), or else two passes (mean, then the mean of squared
    deviations); backward in one fused pass over a, d/da = gmean / n + (a - mean) c with c = 2 gvar / n,
    evaluated as (gmean / n - c mean) + c a: a single ``addcmul`` that allocates only its output (the
    centred form takes a second pass and a temporary, about 8x the time on a 4 MiB activation on CPU).
    Its rounding error, eps |c| (|a| + |mean|), is of the order of the error eps |a| that the stored
    activation already carries, times |c|. The statistics are fp32 for fp16 / bf16 activations
    (autocast), computed and differentiated from the activation itself: no fp32 copy is saved.
    """

    @staticmethod
    def forward(ctx, v, known):
        n = v.shape[0] * v.shape[2]
        if known is not None:
            mean, var = (t.clone() for t in known)
        else:  # accumulated in fp32 (fp64 for fp64) without keeping an upcast copy of v
            acc = torch.promote_types(v.dtype, torch.float32)
            mean = v.mean(dim=(0, 2), dtype=acc)
            var = (v.to(acc) - mean[None, :, None]).square().sum(dim=(0, 2)) / n
        ctx.save_for_backward(v, mean)  # v as given (bf16 under autocast): the tensor batch-norm saves anyway
        return mean, var

    @staticmethod
    def backward(ctx, gmean, gvar):
        v, mean = ctx.saved_tensors
        n = v.shape[0] * v.shape[2]
        gmean = torch.zeros_like(mean) if gmean is None else gmean
        gvar = torch.zeros_like(mean) if gvar is None else gvar
        c = 2 * gvar / n
        grad = torch.addcmul((gmean / n - c * mean)[None, :, None], v, c[None, :, None])
        return grad.to(v.dtype), None


def batch_statistics(a: torch.Tensor, known: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a (N, C, ...) tensor (the statistics batch_norm uses),
    differentiable; ``known``: their values, already computed (``native_statistics``)."""
    return _BatchStatistics.apply(a.reshape(a.shape[0], a.shape[1], -1), known)


#: The autograd node of the native train-mode batch-norm kernel, whose saved mean and 1 / sqrt(var + eps)
#: :func:`native_statistics` reads (private attributes: any mismatch falls back to recomputing them).
NATIVE_BATCH_NORM_NODE = "NativeBatchNormBackward0"


def native_statistics(out: torch.Tensor, a: torch.Tensor, eps: float) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The batch mean and biased variance that the native train-mode batch-norm kernel computed for
    input ``a`` on its way to ``out``, read from its autograd node (which saves the mean and
    1 / sqrt(var + eps), in fp32 for fp16 / bf16 inputs) instead of recomputed.

    None -- and the caller recomputes them -- wherever the read is not certain: ``out`` has no such
    node (no grad, cuDNN's or another kernel), the node lacks the private attributes, or they are not
    per-channel tensors in ``a``'s accumulation dtype on its device."""
    node = out.grad_fn
    if node is None or type(node).__name__ != NATIVE_BATCH_NORM_NODE:
        return None
    mean, invstd = getattr(node, "_saved_result1", None), getattr(node, "_saved_result2", None)
    acc = torch.promote_types(a.dtype, torch.float32)
    for t in (mean, invstd):
        if not isinstance(t, torch.Tensor) or t.dtype != acc or t.shape != (a.shape[1],) or t.device != a.device:
            return None
    return mean, invstd.pow(-2) - eps


def _channel_shape(x: torch.Tensor) -> Tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


class _HeldStats(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor


class _BatchNormMode(TorchFunctionMode):
    """Routes every batch-norm call of one pass to ``handler(func, call, args, kwargs)`` and, with
    ``pieces``, every piecewise-linear call (:mod:`.patterns`) outside dynamo's tracing to
    ``pieces(func, call, args, kwargs)``; all else runs as is."""

    def __init__(self, handler, pieces=None) -> None:
        super().__init__()
        self.handler, self.pieces = handler, pieces

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with _stored_here():
            if func in _BATCH_NORMS:
                return _handle(self.handler, func, args, kwargs)
            if self.pieces is not None and func in PIECEWISE and not torch.compiler.is_compiling():
                return self.pieces(func, PIECEWISE[func](*args, **kwargs), args, kwargs)
            if func in _SYNC_BATCH_NORM_OPS:
                raise HeldStatisticsError(
                    f"margreg_fast: {func.__name__} (multi-process SyncBatchNorm) computes statistics gathered "
                    "across processes, which the penalty's passes cannot hold; use per-process BatchNorm "
                    "(nn.BatchNorm*d) under DDP, or put the SyncBatchNorm layers in eval mode")
            return func(*args, **kwargs)


def _identity(t):
    return t


def _stored_here():
    """Inside a pass, tensors saved for backward are stored as they are, even in an activation-checkpoint
    region (``torch.utils.checkpoint``, non-reentrant: timm's ``set_grad_checkpointing``).

    Checkpointing saves nothing in forward and recomputes the region's forward in backward, outside
    any pass, so without the mode: train-mode batch-norm would normalise with the probe's own
    statistics (other values) and save other tensors than the pass did (torch's CheckpointError).
    Innermost saved-tensor hooks win, so identity hooks around each op of the pass keep its saved
    tensors out of the checkpoint's: nothing is recomputed, at the memory of an uncheckpointed
    forward for the region during a regularised step. Only where the innermost hooks are the
    checkpoint's (recognised by the module that defines them; other hooks, e.g. ``save_on_cpu``,
    recompute nothing and stay), and never while dynamo traces (inside a compiled graph AOTAutograd
    recomputes without Python modes).
    """
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    if hooks is None or getattr(hooks[0], "__module__", None) != _CHECKPOINT_MODULE:
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_identity, _identity)


#: The module whose saved-tensor hooks recompute a region in backward (activation checkpointing).
_CHECKPOINT_MODULE = "torch.utils.checkpoint"


@torch.compiler.disable
def _handle(handler, func, args, kwargs):
    # Kept out of dynamo's graphs: the gradient switch reads a Python flag in backward (see module docstring).
    return handler(func, _BATCH_NORMS[func](*args, **kwargs), args, kwargs)


class InferenceModeError(RuntimeError):
    """The model was built under ``torch.inference_mode``: its tensors cannot take part in autograd."""


def _usable(value):
    """An inference tensor (made under ``torch.inference_mode``) as a normal tensor; anything else as is."""
    return value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value


def outside_inference_mode(fn):
    """``fn`` (an estimate, the regulariser's step) computed with autograd even under ``torch.inference_mode``.

    Every penalty needs grad_x, which inference mode forbids (``torch.enable_grad`` does not lift it;
    Lightning evaluates under it by default). Under inference mode ``fn`` runs inside
    ``torch.inference_mode(False)``, its tensor arguments made under inference mode cloned into
    normal tensors (inference tensors cannot be saved for backward), so it returns the true value,
    as under ``torch.no_grad``. A model whose parameters or buffers were themselves created under
    inference mode cannot take part in autograd: :class:`InferenceModeError`.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        grad = torch.is_grad_enabled()  # off under inference mode; inference_mode(False) would turn it on
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            for module in (v for v in (*args, *kwargs.values()) if isinstance(v, nn.Module)):
                if any(t.is_inference() for t in itertools.chain(module.parameters(), module.buffers())):
                    raise InferenceModeError(
                        "margreg_fast: the model's parameters or buffers were created under torch.inference_mode, "
                        "so no gradient can flow through them and the penalty (an input gradient) cannot be "
                        "computed; create or load the model outside inference mode")
            return fn(*[_usable(a) for a in args], **{k: _usable(v) for k, v in kwargs.items()})
    return wrapper


class RandomState:
    """The states of torch's CPU generator and of ``device``'s generator, recorded at construction."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.accelerator = None if device.type in ("cpu", "meta") else torch.get_device_module(device.type)
        self.states = self._get()

    def _get(self):
        cpu = torch.get_rng_state()
        return cpu, None if self.accelerator is None else self.accelerator.get_rng_state(self.device)

    def _set(self, states) -> None:
        torch.set_rng_state(states[0])
        if self.accelerator is not None:
            self.accelerator.set_rng_state(states[1], self.device)

    def unchanged(self) -> bool:
        """Are the generators in the recorded states (nothing drawn since)?"""
        return all(a is b or torch.equal(a, b) for a, b in zip(self._get(), self.states))

    @contextmanager
    def replayed(self) -> Iterator[None]:
        """Inside: the generators start from the recorded states; after: they are back where they were."""
        now = self._get()
        self._set(self.states)
        try:
            yield
        finally:
            self._set(now)


def has_train_mode_batchnorm(model) -> bool:
    """Does ``model`` (an ``nn.Module``) hold a BatchNorm module that normalises with batch statistics?"""
    return isinstance(model, nn.Module) and any(
        isinstance(m, _BatchNorm) and (m.training or not m.track_running_stats) for m in model.modules())


#: Layers outside ``_BatchNorm`` whose train-mode forward uses batch statistics computed in their own code
#: (timm's batch-variance EvoNorms), matched by class name so that timm need not be imported.
_BATCH_COUPLED_LAYERS = ("EvoNorm2dB0", "EvoNorm2dB1", "EvoNorm2dB2")


def couples_batch(model) -> bool:
    """Does ``model``'s forward, as it is now (train or eval), make one sample's output depend on the
    others of its batch? True for a train-mode BatchNorm (any ``_BatchNorm``, so timm's BatchNormAct
    too) and timm's EvoNorm-B layers; other couplings (a functional ``F.batch_norm`` call in training
    mode) are not visible from the modules, and :func:`sample_wise_forward` refuses them at run time."""
    return has_train_mode_batchnorm(model) or (isinstance(model, nn.Module) and any(
        m.training and type(m).__name__ in _BATCH_COUPLED_LAYERS for m in model.modules()))


def _refuse_batch_statistics(func, call: _BatchNormCall, args, kwargs):
    if call.training:
        raise HeldStatisticsError(
            "margreg_fast: the model made a train-mode batch-norm call, which couples the samples of a batch, "
            "in a forward that assumed none (batch_coupled=False, or undetected: a functional F.batch_norm); "
            "pass batch_coupled=True")
    return func(*args, **kwargs)


def sample_wise_forward(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` through the unwrapped module (DDP's ``.module``: the step's one DDP forward is the
    estimate's clean pass) for a model whose samples do not interact: a train-mode batch-norm call
    raises :class:`HeldStatisticsError` before it runs (so no running statistic moves)."""
    check_passable(model)
    with _BatchNormMode(_refuse_batch_statistics):
        return _unwrapped(model)(x)


@contextmanager
def frozen_running_stats(model) -> Iterator[None]:
    """Within the block ``model``'s train-mode BatchNorm modules use batch statistics but record nothing.

    With ``track_running_stats`` off a train-mode BatchNorm still normalises with the batch
    statistics, but it passes no running buffers to ``batch_norm`` and skips its counter, so neither
    changes (an in-place restore would bump version counters that autograd saved, and mutating a
    captured buffer inside ``torch.func.jvp`` is an error).
    """
    frozen = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats] \
        if isinstance(model, nn.Module) else []
    for m in frozen:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in frozen:
            m.track_running_stats = True


def is_compiled(model) -> bool:
    """Does ``model`` (an ``nn.Module``) hold a ``torch.compile``'d module (``torch.compile(m)`` or ``m.compile()``)?"""
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(model, nn.Module) and any(
        isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def _compiled_graphs_retainable(compiled: bool):
    """For a compiled model: graphs that torch.compile builds inside a pass keep their saved tensors.

    The input-gradient backward retains its graph for the training backward. AOTAutograd may compile
    a backward that frees ("donates") its saved tensors, and then refuses ``retain_graph``; it does so
    when a pass's new batch size (the regulariser's ``fraction``, central's probes) recompiles a
    model with dynamic shapes. Forwards compiled inside a pass are built without donation, and the
    input-gradient backward runs under the same setting (AOTAutograd checks it again at backward).
    The setting is process-wide, so it is set only around the passes of a compiled model.
    """
    return torch._functorch.config.patch(donated_buffer=False) if compiled else contextlib.nullcontext()


def check_passable(model) -> None:
    """Refuse, before any pass, the models whose forward the passes cannot hold or replay.

    * ``nn.DataParallel`` over several devices runs its replicas' forwards in other threads, where the
      passes' (thread-local) mode does not reach: batch-norm statistics would not be held and the
      other devices' generators not replayed.
    * timm's EvoNorm-B layers in train mode normalise with a batch variance computed in their own
      code (no batch-norm call to hold): the probes would normalise with their own statistics and
      update ``running_var`` again.
    """
    if not isinstance(model, nn.Module):
        return
    for m in model.modules():
        if isinstance(m, nn.DataParallel) and len(m.device_ids) > 1:
            raise HeldStatisticsError(
                "margreg_fast: nn.DataParallel over several devices runs the forward in other threads, where the "
                "penalty's passes cannot hold batch-norm statistics or replay random draws; use "
                "DistributedDataParallel (one process per device), or call the regulariser on the module itself")
        if m.training and type(m).__name__ in _BATCH_COUPLED_LAYERS:
            raise HeldStatisticsError(
                f"margreg_fast: {type(m).__name__} in train mode normalises with batch statistics that its own code "
                "computes, which the penalty's passes cannot hold (the probes would use their own and update "
                "running_var again); put these layers in eval mode, or use a sample-wise norm (EvoNorm-S, "
                "GroupNorm) or BatchNorm")


def _unwrapped(model):
    """DDP's ``.module``, also inside the :class:`.checks.OutputModel` of a model given with ``output=``."""
    if isinstance(model, OutputModel):
        inner = _unwrapped(model.model)
        return model if inner is model.model else OutputModel(inner, model.output)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ModelPasses:
    """The forward passes one estimate makes through ``model`` (see the module docstring).

    * :meth:`clean` -- the training forward at x through ``model`` itself (DDP all-reduces, a
      compiled model runs compiled), capturing train-mode batch statistics and the random state.
    * :meth:`capture` -- the same at x changing no state (when the caller brought logits).
    * :meth:`probe` -- forwards at other inputs (x + h v, jvp) through the unwrapped module, with the
      statistics held and the clean pass's random draws replayed.
    * :meth:`input_gradient` -- backwards inside see batch-norm with the statistics held fixed.

    Gradients from the probes reach the same parameters as the clean pass's, whose gradient hooks
    fire once per backward, so DDP averages them as usual.
    """

    def __init__(self, model) -> None:
        check_passable(model)
        self.model, self.inner = model, _unwrapped(model)
        self.stats: List[_HeldStats] = []
        self.switch = _Switch()
        self.random: Optional[RandomState] = None
        self._replayed, self._shared = 0, False
        self.compiled = is_compiled(model)
        # a compiled model with train-mode BatchNorm runs its passes eagerly (module docstring, torch.compile)
        self.eager = self.compiled and has_train_mode_batchnorm(model)
        # activation patterns are replayed wherever the passes run eagerly (module docstring, "Activation patterns")
        self.patterns = Patterns()
        self.replays_patterns = not self.compiled or self.eager

    def _compiled_setting(self):
        """The compiler setting of every pass and input-gradient backward (module docstring, torch.compile)."""
        return torch.compiler.set_stance("force_eager") if self.eager else _compiled_graphs_retainable(self.compiled)

    @property
    def held(self) -> bool:
        """Did the clean pass make train-mode batch-norm calls whose statistics are now held?"""
        return bool(self.stats)

    def _recorder(self):
        self.patterns = Patterns()
        return self.patterns.record if self.replays_patterns else None

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        self.random = RandomState(x.device)
        with self._compiled_setting(), _BatchNormMode(self._capture_call, self._recorder()):
            return self.model(x)

    def capture(self, x: torch.Tensor) -> torch.Tensor:
        self.random = RandomState(x.device)
        with self._compiled_setting(), frozen_running_stats(self.inner), \
                _BatchNormMode(self._capture_call_without_update, self._recorder()):
            return self.inner(x)

    def rows(self, idx: torch.Tensor, batch: int) -> None:
        """The probes that follow run on rows ``idx`` of the clean pass's batch of ``batch`` samples."""
        self.patterns.rows(idx, batch)

    def share(self, x: torch.Tensor) -> None:
        """The caller's logits of x serve as the clean pass (see "Shared logits" in the module docstring)."""
        self.random, self._shared = RandomState(x.device), True

    def probe(self, x: torch.Tensor) -> torch.Tensor:
        if self.random is None:
            raise RuntimeError("ModelPasses.probe needs a clean pass, capture or share first")
        self._replayed = 0
        # A clean pass that ran under the mode and held no statistics and recorded no activation pattern
        # leaves nothing to replay: the probe runs without the mode (whose per-op Python dispatch is the
        # mechanism's only cost on a model without batch-norm or piecewise-linear calls). Shared logits
        # saw no batch-norm call: their probes keep the mode, which refuses a train-mode call no module
        # announced.
        pieces = len(self.patterns) > 0
        self.patterns.start()
        needs_mode = self.stats or self._shared or pieces
        mode = _BatchNormMode(self._replay_call, self.patterns.replay if pieces else None) if needs_mode \
            else contextlib.nullcontext()
        with self.random.replayed():
            with self._compiled_setting(), frozen_running_stats(self.inner), mode:
                out = self.inner(x)
            drew = self._shared and not self.random.unchanged()
        hint = " (logits= was given: omit it)" if self._shared else ""
        if drew:
            raise HeldStatisticsError(
                "margreg_fast: the model draws random numbers (dropout, drop-path) in train mode, so the caller's "
                "logits cannot serve as the clean pass: their masks are unknown. Omit logits=")
        if self._replayed != len(self.stats):
            raise HeldStatisticsError(
                f"margreg_fast: a probe pass made {self._replayed} train-mode batch-norm calls, the clean pass "
                f"{len(self.stats)}; the model must make the same batch-norm calls on every forward{hint}")
        if pieces:
            self.patterns.check_complete()
        return out

    @contextmanager
    def input_gradient(self) -> Iterator[None]:
        """Backward passes inside this block see batch-norm with the statistics held fixed (and may retain graphs)."""
        self.switch.input_gradient = True
        try:
            with self._compiled_setting():
                yield
        finally:
            self.switch.input_gradient = False

    # handlers of one batch-norm call (args, kwargs: the call as made)
    def _capture_call(self, func, call: _BatchNormCall, args, kwargs):
        out = func(*args, **kwargs)
        return self._hold(call, out) if call.training else out

    def _capture_call_without_update(self, func, call: _BatchNormCall, args, kwargs):
        if not call.training:
            return func(*args, **kwargs)
        # running buffers passed by a functional call (no module to freeze) are left alone too
        return self._hold(call, F.batch_norm(call.input, None, None, call.weight, call.bias, True, 0.0, call.eps))

    def _hold(self, call: _BatchNormCall, out: torch.Tensor) -> torch.Tensor:
        a = call.input
        # fp16/bf16 activations (autocast): statistics in fp32, as batch_norm accumulates them and as
        # its mixed-precision form wants its running statistics next to fp32 parameters
        mean, var = batch_statistics(a, native_statistics(out, a, call.eps))
        self.stats.append(_HeldStats(mean, var))
        scale = torch.rsqrt(var + call.eps)
        if call.weight is not None:
            scale = scale * call.weight
        return _HeldStatsGradient.apply(out, a, scale.view(_channel_shape(a)), self.switch)

    def _replay_call(self, func, call: _BatchNormCall, args, kwargs):
        if not call.training:
            return func(*args, **kwargs)
        k, a = self._replayed, call.input
        if k >= len(self.stats) or self.stats[k].mean.shape[0] != a.shape[1]:
            held = f"{self.stats[k].mean.shape[0]} channels" if k < len(self.stats) else "none"
            raise HeldStatisticsError(
                f"margreg_fast: train-mode batch-norm call #{k + 1} of a probe pass has {a.shape[1]} channels; the "
                f"clean pass's call #{k + 1}: {held}. The model must make the same batch-norm calls on every forward"
                + (" (logits= was given, so no call was captured: omit it)" if self._shared else ""))
        self._replayed += 1
        mean, var = self.stats[k]
        mean_d, var_d = mean.detach(), var.detach()
        s = torch.sqrt(var + call.eps)
        s_d = s.detach()
        gamma = call.weight if call.weight is not None else torch.ones_like(s)
        beta = call.bias if call.bias is not None else torch.zeros_like(s)
        gamma_r = gamma * s_d / s
        beta_r = beta - gamma_r * (mean - mean_d) / s_d
        return F.batch_norm(a, mean_d, var_d, gamma_r, beta_r, training=False, eps=call.eps)
