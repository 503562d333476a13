"""Test helpers: a loss's gradient in a model's parameters as one flat vector; the rows of each forward of a step."""
import torch


def parameter_gradient(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """d loss / d theta flattened, zeros for parameters the loss does not use (the joint penalty z_y
    does not see the other classes' biases)."""
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(model.parameters(), grads)])


def rows_of_each_forward(model: torch.nn.Module, reg, x: torch.Tensor, y: torch.Tensor):
    """(loss, stats, rows): one regularised step ``reg(model, x, y)`` and its backward, with the batch
    size of every forward it made through ``model``, in order."""
    rows = []
    handle = model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        loss, stats = reg(model, x, y)
        loss.backward()
    finally:
        handle.remove()
    return loss, stats, rows
