"""Worker for tests/matrix/test_matrix.py (started by torch.distributed.run, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node 2 -m tests.workers.matrix OUT_DIR {ddp,fsdp}
Runs every cell of that process kind (tests/matrix/cells.py) in one launch: each rank steps on its
part of the global batch, from seed SEED + rank, and saves {cell id: outcome} to
OUT_DIR/{kind}_rank{r}.pt.
"""
import os
import sys

import torch
import torch.distributed as dist

from tests.matrix import cells
from tests.workers.lifecycle import finish


def main(out_dir, kind):
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    x, y = cells.data()
    outcomes = {cell.id: cells.step(cell, cells.shard(x, rank), cells.shard(y, rank), cells.SEED + rank)
                for cell in cells.cells(kind)}
    torch.save(outcomes, os.path.join(out_dir, f"{kind}_rank{rank}.pt"))
    finish()


if __name__ == "__main__":
    main(*sys.argv[1:3])
