"""DistributedDataParallel with the marginal-density penalty and gradient accumulation (``no_sync``).

    torchrun --nproc_per_node 2 examples/torchrun_ddp.py --steps 20 --accumulate 4

Each process takes its own micro-batches; the first ``accumulate - 1`` backwards of a step run under
``model.no_sync()`` and the last one all-reduces the accumulated gradient, as in any DDP loop. The
regulariser takes the DDP model as it is: its forward at x is the step's one DDP forward, and its
probe passes run through ``model.module``, so DDP sees one forward per backward. Each rank draws
rfd's random signs from its own generator (seeded with the rank): the ranks' penalties are
independent estimates, averaged by the all-reduce like the CE's gradients.

Runs on random images with gloo on CPU (nccl when CUDA is there), and prints from rank 0 the
median step time of plain DDP training and of regularised training, and whether the ranks' parameters
agree after training (they must: DDP averaged every step's gradient).
"""
import argparse
import contextlib
import copy
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from margreg_fast import MarginalDensityRegularizer


def small_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, num_classes))


def train(model: DistributedDataParallel, args, device, rank: int, reg=None) -> list:
    """``args.steps`` optimizer steps of ``args.accumulate`` micro-batches each; returns the step times."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        for micro in range(args.accumulate):
            x = torch.rand(args.batch_size, 1, 28, 28, generator=gen).to(device)
            y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
            last = micro == args.accumulate - 1
            with contextlib.nullcontext() if last else model.no_sync():  # all-reduce on the last micro-batch only
                if reg is None:
                    loss = F.cross_entropy(model(x), y)
                else:
                    loss, _ = reg(model, x, y)
                (loss / args.accumulate).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def parameters_agree(model: nn.Module) -> bool:
    """Whether every rank holds rank 0's parameters."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    agree = torch.tensor([float(torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(agree, op=dist.ReduceOp.MIN)
    return bool(agree.item())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--accumulate", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--weight", type=float, default=0.1)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is left out of the timing)")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same initial model on every rank (DDP also broadcasts rank 0's)
    net = small_cnn().to(device)

    plain_times = train(DistributedDataParallel(copy.deepcopy(net)), args, device, rank)
    reg = MarginalDensityRegularizer(args.weight, generator=torch.Generator(device).manual_seed(rank))
    model = DistributedDataParallel(net)
    reg_times = train(model, args, device, rank, reg=reg)
    agree = parameters_agree(model)
    if rank == 0:
        plain, regularised = statistics.median(plain_times[1:]), statistics.median(reg_times[1:])
        print(f"last step: {', '.join(f'{k} {v:.4g}' for k, v in reg.last_stats.items())}")
        print(f"parameters agree across {dist.get_world_size()} ranks: {agree}")
        print(f"step time ({dist.get_world_size()} processes, {args.accumulate} micro-batches of {args.batch_size}, "
              f"median of {args.steps - 1} steps after the first): plain {1e3 * plain:.1f} ms, "
              f"regularised {1e3 * regularised:.1f} ms ({regularised / plain:.2f}x plain)")
    dist.destroy_process_group()
    # gloo's worker threads can outlive the interpreter's finalisation on CPU, and a rank then hangs or
    # aborts at exit after its work is done; leaving at once, streams flushed, skips finalisation.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
