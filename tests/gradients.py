"""Test helper: a loss's gradient in a model's parameters as one flat vector."""
import torch


def parameter_gradient(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """d loss / d theta flattened, zeros for parameters the loss does not use (the joint penalty z_y
    does not see the other classes' biases)."""
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(model.parameters(), grads)])
