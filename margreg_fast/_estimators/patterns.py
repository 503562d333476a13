r"""Activation-pattern replay: the probes compute each piecewise-linear op on the clean pass's piece.

A ReLU net is piecewise linear in x: S(x) = logsumexp f(x) is smooth inside the region where every
ReLU mask, clamp side and max-pool argmax is that of the clean point x, and has kinks on its
boundary. Exact's double backprop differentiates inside that region (relu'' = 0: each mask is a
constant). A probe at x + h v that leaves the region measures an average of the pieces' slopes, at
any step that is not tiny against the distance to the nearest kink (on a ReLU EfficientNet the
default's parameter gradient had cosine -0.14..0.39 with exact's at the automatic step,
``benchmarks/results/estimator_training_gradient.md``).

So the clean pass records, per call in call order, the pattern of each piecewise-linear op, and each
probe pass applies the clean piece's linear map to the probe's own input:

==========================================  ======================  =========================================
op (functional, in place, Tensor method)    recorded at x           probe output for input t
==========================================  ======================  =========================================
relu                                        m = (a > 0), bool       t * m
relu6, hardtanh(lo, hi)                     side: int8, 0 inside    t inside, lo below, hi above
                                            (lo, hi), 1 below, 2
                                            above
leaky_relu(slope)                           m = (a > 0), bool       t * where(m, 1, slope)
max_pool1d / 2d / 3d                        argmax indices (int64)  t gathered at those indices
==========================================  ======================  =========================================

Then S along the probe, P(e) = S evaluated with x's pattern at x + e v, is smooth in e and in the
parameters; P(0) = S(x) and P'(0) = g . v (the pattern is that of x, so the derivative is autograd's at
x). The secant (P(h) - P(0)) / h = ||g|| + (h/2) P''(xi) has an O(h) error from the smooth ops'
curvature only (the softmax head, BatchNorm's held scale, smooth activations), and its parameter
gradient treats the pattern as a constant, as exact's does. Ops not listed (smooth activations, a
``torch.max`` or ``amax`` in user code, adaptive max pooling) run as they are.

Matching is by call ORDER among the listed ops of a pass, as for held batch statistics: a probe's
k-th call must be the same op on an input of the same shape as the clean pass's k-th, and it must
make as many calls, or :class:`PatternReplayError` says where they part. For the regulariser's
``fraction`` < 1 the clean pass runs over the whole batch and the probes over a subset of its rows:
:meth:`Patterns.rows` keeps those rows of each pattern whose leading dimension is the batch's (a
pattern of another leading size, e.g. after a reshape that merges the batch, cannot be cut to the
subset, and its op runs as it is in the subset's probes).

Memory: one byte per element of each recorded activation (bool or int8), int64 indices for max-pool
outputs, held from the clean pass until the estimate ends.
"""
from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F


class PatternReplayError(RuntimeError):
    """A probe pass's piecewise-linear calls cannot be matched with the clean pass's recorded patterns."""


class _Call(NamedTuple):
    """One piecewise-linear call: the op's kind, its input, its parameters, in place or not."""

    kind: str  # "relu", "hardtanh", "leaky_relu", "max_pool"
    input: torch.Tensor
    params: tuple  # hardtanh: (lo, hi); leaky_relu: (slope,); max_pool: (dims, kernel, stride, padding, dilation, ceil)
    inplace: bool
    indices: bool = False  # max_pool: the caller asked for the indices too


def _relu(inplace: bool) -> Callable:
    return lambda input: _Call("relu", input, (), inplace)


def _f_relu(input, inplace=False):
    return _Call("relu", input, (), inplace)


def _hardtanh(inplace: bool) -> Callable:
    def parse(input, min_val=-1.0, max_val=1.0):
        return _Call("hardtanh", input, (min_val, max_val), inplace)
    return parse


def _f_hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    return _Call("hardtanh", input, (min_val, max_val), inplace)


def _relu6(inplace: bool) -> Callable:
    return lambda input: _Call("hardtanh", input, (0.0, 6.0), inplace)


def _f_relu6(input, inplace=False):
    return _Call("hardtanh", input, (0.0, 6.0), inplace)


def _leaky(inplace: bool) -> Callable:
    def parse(input, negative_slope=0.01):
        return _Call("leaky_relu", input, (negative_slope,), inplace)
    return parse


def _f_leaky(input, negative_slope=0.01, inplace=False):
    return _Call("leaky_relu", input, (negative_slope,), inplace)


def _max_pool(dims: int, indices: Optional[bool]) -> Callable:
    """Parser of a max-pool function of ``dims`` spatial dims; ``indices``: None when the call says."""
    def parse(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        stride = kernel_size if stride is None or (isinstance(stride, (list, tuple)) and not stride) else stride
        wants = return_indices if indices is None else indices
        return _Call("max_pool", input, (dims, kernel_size, stride, padding, dilation, ceil_mode), False, wants)
    return parse


#: The intercepted functions, each with the parser of its arguments.
PIECEWISE: Dict[Callable, Callable[..., _Call]] = {
    F.relu: _f_relu, torch.relu: _relu(False), torch.relu_: _relu(True),
    torch.Tensor.relu: _relu(False), torch.Tensor.relu_: _relu(True),
    F.relu6: _f_relu6, torch._C._nn.relu6: _relu6(False), torch._C._nn.relu6_: _relu6(True),
    F.hardtanh: _f_hardtanh, torch._C._nn.hardtanh: _hardtanh(False), torch._C._nn.hardtanh_: _hardtanh(True),
    F.leaky_relu: _f_leaky, torch._C._nn.leaky_relu: _leaky(False), torch._C._nn.leaky_relu_: _leaky(True),
    F.max_pool1d: _max_pool(1, None), F.max_pool2d: _max_pool(2, None), F.max_pool3d: _max_pool(3, None),
    F.max_pool1d_with_indices: _max_pool(1, True), F.max_pool2d_with_indices: _max_pool(2, True),
    F.max_pool3d_with_indices: _max_pool(3, True),
    torch.max_pool1d: _max_pool(1, False), torch.max_pool2d: _max_pool(2, False), torch.max_pool3d: _max_pool(3, False),
}

_WITH_INDICES = {1: F.max_pool1d_with_indices, 2: F.max_pool2d_with_indices, 3: F.max_pool3d_with_indices}


class _Pattern(NamedTuple):
    kind: str
    shape: Optional[Tuple[int, ...]]  # of the op's input; None: not checked (see Patterns.rows)
    data: Optional[torch.Tensor]  # mask, side code or indices; None: the op runs as it is (see Patterns.rows)


def _describe(kind: str, shape) -> str:
    return f"{kind} on an input of shape {tuple(shape)}"


class Patterns:
    """The patterns of one clean pass, in call order, and the replay of them in probe passes."""

    def __init__(self) -> None:
        self.recorded: List[_Pattern] = []
        self.replayed = 0

    def __len__(self) -> int:
        return len(self.recorded)

    def record(self, func, call: _Call, args, kwargs):
        """The op as called (clean pass), its pattern at this input appended."""
        a = call.input
        if call.kind == "max_pool":
            dims, kernel, stride, padding, dilation, ceil = call.params
            out, idx = _WITH_INDICES[dims](a, kernel, stride, padding, dilation, ceil, return_indices=True)
            self.recorded.append(_Pattern("max_pool", tuple(a.shape), idx))
            return (out, idx) if call.indices else out
        with torch.no_grad():
            if call.kind == "hardtanh":
                lo, hi = call.params
                data = (a <= lo).to(torch.int8) + 2 * (a >= hi).to(torch.int8)
            else:
                data = a > 0
        self.recorded.append(_Pattern(call.kind, tuple(a.shape), data))
        return func(*args, **kwargs)

    def start(self) -> None:
        self.replayed = 0

    def replay(self, func, call: _Call, args, kwargs):
        """The op as the clean pass's piece (probe pass)."""
        k, t = self.replayed, call.input
        pattern = self.recorded[k] if k < len(self.recorded) else None
        if pattern is None or pattern.kind != call.kind or pattern.shape not in (None, tuple(t.shape)):
            clean = "none" if pattern is None else _describe(pattern.kind, pattern.shape)
            raise PatternReplayError(
                f"margreg_fast: piecewise-linear call #{k + 1} of a probe pass is {_describe(call.kind, t.shape)}; the "
                f"clean pass's call #{k + 1}: {clean}. The model must make the same relu / hardtanh / leaky_relu / "
                "max_pool calls on every forward")
        self.replayed += 1
        if pattern.data is None:
            return func(*args, **kwargs)
        if call.kind == "max_pool":
            idx = pattern.data
            n = call.params[0]
            out = t.flatten(-n).gather(-1, idx.flatten(-n)).view(idx.shape)
            return (out, idx) if call.indices else out
        if call.kind == "relu":
            factor = pattern.data
        elif call.kind == "leaky_relu":
            factor = torch.where(pattern.data, torch.ones((), dtype=t.dtype, device=t.device),
                                 torch.full((), call.params[0], dtype=t.dtype, device=t.device))
        else:
            lo, hi = call.params
            side = pattern.data
            outside = torch.zeros_like(t).masked_fill_(side == 1, lo).masked_fill_(side == 2, hi)
            return t.mul_(side == 0).add_(outside) if call.inplace else t * (side == 0) + outside
        return t.mul_(factor) if call.inplace else t * factor

    def check_complete(self) -> None:
        """After a probe pass: it made as many piecewise-linear calls as the clean pass."""
        if self.replayed != len(self.recorded):
            raise PatternReplayError(
                f"margreg_fast: a probe pass made {self.replayed} piecewise-linear (relu / hardtanh / leaky_relu / "
                f"max_pool) calls, the clean pass {len(self.recorded)}; the model must make the same calls on every "
                "forward")

    def rows(self, idx: torch.Tensor, batch: int) -> None:
        """Keep rows ``idx`` of the patterns recorded over a batch of ``batch`` samples (the regulariser's
        subset); a pattern whose leading dimension is not the batch's is dropped to 'run as it is'."""
        self.recorded = [
            _Pattern(p.kind, (idx.numel(),) + p.shape[1:], p.data[idx]) if p.shape is not None and p.shape[0] == batch
            else _Pattern(p.kind, None, None) for p in self.recorded]
