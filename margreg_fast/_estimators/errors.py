r"""Clear errors for the exact estimators (``exact``, ``jvp``) on models whose ops lack the derivative they need.

``exact`` needs the derivative of every op's backward (double backprop); ``jvp`` needs forward-mode
AD. Neither exists for some ops, notably ``torch.nn.functional.scaled_dot_product_attention`` on
its fused kernels (on CPU, the pinned torch runs ``aten::_scaled_dot_product_flash_attention_for_cpu``,
whose backward has no derivative and which has no forward-AD formula: tests/test_models_conditions.py), and any ``torch.compile``'d
model (AOTAutograd has no double backward). PyTorch reports the missing double-backward only when
the *training* backward reaches it, far from the estimator call; :func:`check_twice_differentiable`
finds the placeholder node (``NotImplemented``, or AOTAutograd's ``CompiledFunctionBackwardBackward``)
right after the first-order gradient so the error is raised at once.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) ``exact`` needs the parameters to stay
unsharded from the input-gradient backward to the training backward: the double-backward graph
holds the unsharded parameters, whose storage FSDP frees when it reshards after a backward.
:func:`check_fsdp_exact` says so before the model runs.

Errors are classified by type and graph structure, never by message text: ``NotImplementedError``
(torch's type for a missing forward-AD formula or derivative formula), the ``NotImplemented`` and
``CompiledFunctionBackwardBackward`` nodes in the gradient's graph, a compiled module in the model.
Torch names the failing op only in its message text, so the text is read to *name* the op in the
error (:func:`_failing_op`), never to decide whether an error is a missing derivative.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
from torch import nn

from .registry import ESTIMATORS

#: Autograd nodes that stand for a missing derivative (their name is the structure torch exposes).
_NOT_IMPLEMENTED_NODE = "torch::autograd::NotImplemented"
#: AOTAutograd's node for differentiating a compiled backward; it always raises this message.
_COMPILED_DOUBLE_BACKWARD_NODE = "CompiledFunctionBackwardBackward"
_COMPILED_DOUBLE_BACKWARD_MESSAGE = "torch.compile with aot_autograd does not currently support double backward"
_COMPILED = "torch.compile (AOTAutograd)"
#: Where torch names the failing op only in its message text, the op is read from it (for the message only).
_OP_IN_MESSAGE = (
    re.compile(r"derivative for '?(\S+?)'? is not implemented"),
    re.compile(r"forward AD with (\S+) that does not support it"),
)


class UnsupportedEstimatorError(NotImplementedError):
    """The requested estimator needs a derivative some op of the model does not have (a RuntimeError)."""


def _failing_op(message: str) -> Optional[str]:
    """The op named in a missing-derivative message, for the error text only (never to classify)."""
    for pattern in _OP_IN_MESSAGE:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


def unsupported(estimator: str, err: BaseException, op: Optional[str] = None) -> UnsupportedEstimatorError:
    """An error naming the op that made ``estimator`` fail (``op``, else read from ``err``'s message) and
    pointing at the finite differences."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    op = op or _failing_op(str(err))
    need = "forward-mode AD (a jvp)" if ESTIMATORS[estimator].forward_mode else \
        "a twice-differentiable backward (double backprop)"
    what = f"op {op}" if op else "an op"
    if op and "scaled_dot_product" in op:
        what += " (torch.nn.functional.scaled_dot_product_attention)"
    return UnsupportedEstimatorError(
        f"estimator={estimator!r} needs {need}, which {what} of this model does not provide "
        f"(PyTorch said: {message}). Use the default estimator='rfd' (or 'central'), which needs only first derivatives."
    )


def is_derivative_error(err: BaseException) -> bool:
    """Whether an error raised while building an exact (``exact``, ``jvp``) estimate is a missing derivative.

    Classified by type: torch raises ``NotImplementedError`` for an op without a forward-AD formula
    and for a derivative formula marked not implemented. A missing *backward* of a backward shows
    up as a ``torch::autograd::NotImplemented`` node, which raises a plain ``RuntimeError`` only when
    run; :func:`check_twice_differentiable` finds that node by the graph's structure before it runs.
    Every other error (a ``CheckpointError``, a shape error, ...) is the model's own and propagates.
    """
    return isinstance(err, NotImplementedError) and not isinstance(err, UnsupportedEstimatorError)


def check_twice_differentiable(g: torch.Tensor, estimator: str) -> None:
    """Raise :class:`UnsupportedEstimatorError` if backpropagating through ``g``'s graph hits a missing derivative."""
    seen, stack = set(), [g.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() in (_NOT_IMPLEMENTED_NODE, _COMPILED_DOUBLE_BACKWARD_NODE):
            compiled = node.name() == _COMPILED_DOUBLE_BACKWARD_NODE
            err = RuntimeError(_COMPILED_DOUBLE_BACKWARD_MESSAGE) if compiled else _provoke(node)
            raise unsupported(estimator, err, _COMPILED if compiled else None) from err
        stack.extend(child for child, _ in node.next_functions)


def _provoke(node) -> BaseException:
    """The error PyTorch itself raises for a NotImplemented node (it names the op), obtained cheaply."""
    try:
        node(*[torch.zeros(meta.shape, dtype=meta.dtype) for meta in node._input_metadata])
    except RuntimeError as err:
        return err
    except Exception:  # noqa: BLE001 - private metadata API changed: fall back to a generic message
        pass
    return RuntimeError("the graph holds a torch::autograd::NotImplemented node (derivative not implemented)")


def _reshards_after_backward(module: nn.Module) -> bool:
    """Whether an FSDP2 module frees its unsharded parameters after a backward (FSDP's default)."""
    groups = getattr(module._get_fsdp_state(), "_fsdp_param_groups", [])  # private: FSDP2 has no getter
    return any(getattr(group, "reshard_after_backward", False) for group in groups)


def check_compiled_exact(model: nn.Module) -> None:
    """Raise :class:`UnsupportedEstimatorError` before any pass if ``exact`` would differentiate a compiled backward.

    AOTAutograd's compiled backward is once differentiable. Differentiating it again fails, and
    not always with its own message (a train-mode BatchNorm model graph-breaks at each batch-norm
    call, and a retained compiled segment can fail on its tangents first), so the check looks for
    compiled modules instead of waiting for the error.
    """
    from torch._dynamo.eval_frame import OptimizedModule

    if any(isinstance(m, OptimizedModule) for m in model.modules()):
        raise unsupported("exact", RuntimeError(_COMPILED_DOUBLE_BACKWARD_MESSAGE), _COMPILED)


def check_fsdp_exact(model: nn.Module) -> None:
    """Raise :class:`UnsupportedEstimatorError` if ``exact`` would hit parameters FSDP2 has resharded."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed support
        return
    if any(isinstance(m, FSDPModule) and _reshards_after_backward(m) for m in model.modules()):
        raise UnsupportedEstimatorError(
            "estimator='exact' under FSDP2 (fully_shard) needs the parameters unsharded through the double "
            "backward, but FSDP reshards them after the input-gradient backward. Use the default estimator='rfd', 'central' "
            "or 'jvp', which work with FSDP's defaults, or call model.set_reshard_after_backward(False) once "
            "and, after every optimizer step, m.reshard() for each FSDPModule m in model.modules() (otherwise "
            "the next forward reuses the stale gathered parameters)."
        )
