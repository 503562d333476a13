"""Call one backend's kernels directly on its device, with CPU tensors in and out."""
from margreg_fast._ops import backends


def _to(t, device):
    return None if t is None else t.to(device)


def run_forward(backend, z0, z1, target=None, ignore_index=-100):
    """(D, ce, stats) of backend ``(name, device)`` on the CPU."""
    name, device = backend
    out = backends.BACKENDS[name].forward(_to(z0, device), _to(z1, device), _to(target, device), ignore_index)
    return [t.cpu() for t in out]


def run_backward(backend, z0, z1, target, ignore_index, stats, grad_d, grad_ce):
    """(dz0, dz1) of backend ``(name, device)`` on the CPU."""
    name, device = backend
    dz0, dz1 = backends.BACKENDS[name].backward(_to(z0, device), _to(z1, device), _to(target, device), ignore_index,
                                                _to(stats, device), _to(grad_d, device), _to(grad_ce, device))
    return dz0.cpu(), dz1.cpu()
