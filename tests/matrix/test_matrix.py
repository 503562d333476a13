r"""The regulariser across wrappers, processes and precisions: every cell of tests/matrix/cells.py
gives the 1-process eager fp32 loss and parameter gradient, or raises an error that says what to do.

The reference of a cell is the same model and method run eagerly in fp32 in this process: on the
whole batch for a 1-process cell; for a 2-process cell, on each rank's part of the batch from that
rank's seed (train-mode BatchNorm normalises each rank's part by its own statistics, and each rank
draws its own dropout masks), the rank's loss against its part's and the averaged gradient against
the mean of the two parts' gradients.

Tolerances (relative: |loss - ref| / |ref|, ||grad - ref|| / ||ref||), by what differs from the reference:

* eager fp32 under DDP or FSDP2: the same operations; only the gradient average is summed in
  another order (and FSDP's reduce-scatter pads and splits). Rounding of a few fp32 ulps:
  loss 1e-6, gradient 1e-5.
* torch.compile in fp32: inductor fuses and reorders the operations, so every logit carries a few
  fp32 ulps of other rounding, and the finite difference divides logit differences by the step
  h = 4 eps^(1/3) RMS(x) (about 1e-2 here): the gradient's relative error is of order
  eps32 |z| / (h ||g||) ~ 1e-5. Loss 1e-5, gradient 1e-4.
* bf16 autocast: convolutions, linear layers and attention compute in bf16 (eps_bf16 = 2^-8 =
  3.9e-3), the loss and the head op in fp32. Loss within eps_bf16 and gradient within
  8 eps_bf16 = 3.1e-2 (the gradient is that of an input-gradient norm: two bf16 backward passes).

Cells that must raise (``cells.expected_error``) must raise ``UnsupportedEstimatorError`` whose
message names the obstacle and the way out (another method, or FSDP's setting).

Cost: one launch of two processes per process kind runs all 24 of its cells
(tests/workers/matrix.py). The compiled cells are slow the first time on a machine (inductor
compiles C++), then read inductor's on-disk cache.
"""
from __future__ import annotations

import pytest
import torch

from margreg_fast.estimators import UnsupportedEstimatorError
from tests.matrix import cells
from tests.workers.lifecycle import launch

BF16_EPS = 2.0 ** -8
#: (loss, gradient) relative tolerances by (mode, precision); see the module docstring.
TOLERANCES = {("eager", "fp32"): (1e-6, 1e-5), ("compile", "fp32"): (1e-5, 1e-4),
              ("eager", "bf16"): (BF16_EPS, 8 * BF16_EPS), ("compile", "bf16"): (BF16_EPS, 8 * BF16_EPS)}


@pytest.fixture(scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference_cell(cell: cells.Cell) -> cells.Cell:
    return cells.Cell("eager", "single", "fp32", cell.model, cell.method)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, _one_thread):
    """{process kind: {rank: {cell id: outcome}}}, each multi-process kind from one launch (on first use)."""
    cache = {}

    def get(kind):
        if kind not in cache:
            x, y = cells.data()
            if kind == "single":
                cache[kind] = {0: {c.id: cells.step(c, x, y) for c in cells.cells(kind)}}
            else:
                out = tmp_path_factory.mktemp(kind)
                proc = launch("tests.workers.matrix", out, kind, timeout=900)
                assert proc.returncode == 0, proc.stderr[-4000:]
                cache[kind] = {r: torch.load(out / f"{kind}_rank{r}.pt") for r in range(cells.WORLD)}
        return cache[kind]
    return get


@pytest.fixture(scope="module")
def references(_one_thread):
    """The reference outcome of a cell for each rank: on the whole batch (rank None) or on a rank's part."""
    cache = {}

    def get(cell, rank):
        key = (_reference_cell(cell), rank)
        if key not in cache:
            x, y = cells.data()
            if rank is not None:
                x, y = cells.shard(x, rank), cells.shard(y, rank)
            cache[key] = cells.step(key[0], x, y, cells.SEED + (rank or 0))
            assert "error" not in cache[key], cache[key]["traceback"]
        return cache[key]
    return get


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cell", cells.cells(), ids=[c.id for c in cells.cells()])
def test_cell_matches_the_single_process_eager_fp32_step_or_raises_clearly(cell, outcomes, references):
    runs = outcomes(cell.processes)
    expected = cells.expected_error(cell)
    for rank, results in runs.items():
        got = results[cell.id]
        if expected is not None:
            assert got.get("error") == UnsupportedEstimatorError.__name__, got
            assert expected in got["message"] and ("method=" in got["message"]), got["message"]
            continue
        assert "error" not in got, got.get("traceback", got)
        loss_tol, grad_tol = TOLERANCES[(cell.mode, cell.precision)]
        if cell.processes == "single":
            ref = references(cell, None)
            ref_loss, ref_grad = ref["loss"], ref["grad"]
        else:
            ref_loss = references(cell, rank)["loss"]
            ref_grad = sum(references(cell, r)["grad"] for r in range(cells.WORLD)) / cells.WORLD
        assert _rel(got["loss"], ref_loss) <= loss_tol, (rank, _rel(got["loss"], ref_loss))
        assert _rel(got["grad"], ref_grad) <= grad_tol, (rank, _rel(got["grad"], ref_grad))
