"""Worker for tests/test_distributed.py::test_ddp_* (started by torch.distributed.run, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node 2 -m tests.workers.ddp OUT_DIR
Each rank takes its half of a fixed global batch and makes one regularised SGD step on
(1) an MLP wrapped in DDP -- rank 0 saves the updated parameters to OUT_DIR/params.pt;
(2) a BatchNorm CNN wrapped in DDP -- each rank saves whether its buffers equal those after one
plain forward of an unwrapped copy on its local batch (OUT_DIR/bn_rank{r}.pt);
(3) the same CNN as DDP(torch.compile(model)) and as DDP(model), one rfd step each -- each rank saves
both updated parameter sets and the number of graphs the compiling backend received
(OUT_DIR/compiled_rank{r}.pt). Different local data: only an all-reduce makes the ranks agree;
(4) the BatchNorm CNN in DDP with fraction=0.5 (exact, each rank's subset drawn from a generator seeded
with FRACTION_SEED + rank) -- rank 0 saves the updated parameters (OUT_DIR/fraction.pt);
(5) a CNN without BatchNorm (sample-wise: the batch is split into the subset's forward, the step's one
DDP forward, and the rest's) in DDP with fraction=0.5, rfd -- rank 0 saves the updated parameters
(OUT_DIR/fraction_split.pt).
"""
import copy
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from margreg_fast.kit import models
from margreg_fast._regularizer import MarginalDensityRegularizer
from tests.workers.lifecycle import finish

GLOBAL_BATCH, LR, WEIGHT, STEP = 8, 0.5, 2.0, 1e-2
FRACTION, FRACTION_SEED = 0.5, 100


def data():
    gen = torch.Generator().manual_seed(11)
    return torch.rand(GLOBAL_BATCH, 1, 8, 8, generator=gen), torch.randint(0, 10, (GLOBAL_BATCH,), generator=gen)


def mlp():
    torch.manual_seed(5)
    return models.MLP(in_features=64, num_classes=10, width=16, activation="tanh")


def bn_cnn():
    torch.manual_seed(6)
    return models.SmallCNN(width=4, image_size=8, batchnorm=True)


def cnn():
    torch.manual_seed(7)
    return models.SmallCNN(width=4, image_size=8)


def fraction_regularizer(rank, method="exact"):
    """The regulariser of cases (4) and (5) on ``rank``: fraction 0.5, its own seeded generator."""
    return MarginalDensityRegularizer(WEIGHT, estimator=method, fraction=FRACTION, step=STEP,
                                      generator=torch.Generator().manual_seed(FRACTION_SEED + rank))


def step(model, x, y, method="fd", reg=None):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    reg = reg or MarginalDensityRegularizer(WEIGHT, estimator=method, step=STEP)
    loss, _ = reg(model, x, y)
    loss.backward()
    opt.step()


def main(out_dir):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = data()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]

    ddp = DistributedDataParallel(mlp())
    step(ddp, xs, ys)
    if rank == 0:
        torch.save({k: v.detach() for k, v in ddp.module.state_dict().items()}, os.path.join(out_dir, "params.pt"))

    net = bn_cnn()
    plain = copy.deepcopy(net)
    plain(xs)  # one plain training-mode forward on the local batch
    ddp_bn = DistributedDataParallel(net)
    step(ddp_bn, xs, ys)
    same = all(torch.equal(a, b) for a, b in zip(net.buffers(), plain.buffers()))
    torch.save({"buffers_equal": same}, os.path.join(out_dir, f"bn_rank{rank}.pt"))

    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    compiled_net, eager_net = bn_cnn(), bn_cnn()
    compiled = DistributedDataParallel(torch.compile(compiled_net, backend=counting))
    torch.manual_seed(1)  # rfd's signs: the same on both runs
    step(compiled, xs, ys, method="rfd")
    in_step = len(graphs)  # the estimate's passes of a compiled BatchNorm model run eagerly
    torch.manual_seed(1)
    step(DistributedDataParallel(eager_net), xs, ys, method="rfd")
    params = [p.detach().clone() for p in compiled_net.parameters()]
    with torch.no_grad():
        compiled(xs)  # outside an estimate the model runs compiled
    torch.save({"compiled": params, "eager": [p.detach() for p in eager_net.parameters()],
                "graphs_in_step": in_step, "graphs": len(graphs)}, os.path.join(out_dir, f"compiled_rank{rank}.pt"))

    fraction_net = bn_cnn()
    step(DistributedDataParallel(fraction_net), xs, ys, reg=fraction_regularizer(rank))
    if rank == 0:
        torch.save([p.detach() for p in fraction_net.parameters()], os.path.join(out_dir, "fraction.pt"))

    split_net = cnn()
    step(DistributedDataParallel(split_net), xs, ys, reg=fraction_regularizer(rank, "rfd"))
    if rank == 0:
        torch.save([p.detach() for p in split_net.parameters()], os.path.join(out_dir, "fraction_split.pt"))
    finish()


if __name__ == "__main__":
    main(sys.argv[1])
