"""The regulariser across processes (gloo, CPU): DDP and FSDP2 steps equal the single-process step.

Each test starts two worker processes (tests/workers/) with torch.distributed.run.
"""
import pytest
import torch

from margreg_fast._estimators import UnsupportedEstimatorError
from tests.workers import ddp, fsdp
from tests.workers.lifecycle import launch


def _assert_close(expected, actual):
    for name, value in expected.items():
        assert (value - actual[name]).abs().max() <= 1e-5, name


def test_ddp_two_processes_match_single_process(tmp_path):
    proc = launch("tests.workers.ddp", tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    model = ddp.mlp()
    x, y = ddp.data()
    ddp.step(model, x, y)  # one process, the concatenated batch
    _assert_close(model.state_dict(), torch.load(tmp_path / "params.pt"))
    for rank in range(2):
        assert torch.load(tmp_path / f"bn_rank{rank}.pt")["buffers_equal"], rank
    # DDP(torch.compile(BatchNorm CNN)): the estimate's passes eager (estimators/passes.py, torch.compile), the
    # model compiled outside them, and the ranks' gradients all-reduced
    ranks = [torch.load(tmp_path / f"compiled_rank{rank}.pt") for rank in range(2)]
    for run in ranks:
        assert run["graphs_in_step"] == 0 and run["graphs"] > 0
        for compiled, eager in zip(run["compiled"], run["eager"]):
            assert (compiled - eager).abs().max() <= 1e-5
    for a, b in zip(ranks[0]["compiled"], ranks[1]["compiled"]):
        assert (a - b).abs().max() <= 1e-6  # different local batches: equal only if all-reduced
    # fraction=0.5: DDP's step is SGD on the mean over ranks of each rank's own subset-penalty gradient,
    # with the whole batch in one forward (BatchNorm) and split in two (sample-wise)
    for build, method, name in ((ddp.bn_cnn, "exact", "fraction.pt"), (ddp.cnn, "rfd", "fraction_split.pt")):
        grads = []
        for rank, (xs, ys) in enumerate(zip(x.chunk(2), y.chunk(2))):
            model = build()
            loss, _ = ddp.fraction_regularizer(rank, method)(model, xs, ys)
            grads.append(torch.autograd.grad(loss, list(model.parameters())))
        expected = [p.detach() - ddp.LR * (g0 + g1) / 2 for p, g0, g1 in zip(build().parameters(), *grads)]
        for want, got in zip(expected, torch.load(tmp_path / name)):
            assert (want - got).abs().max() <= 1e-5, name


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """One two-process FSDP2 run of every case (the workers' start-up dominates their cost)."""
    out = tmp_path_factory.mktemp("fsdp")
    proc = launch("tests.workers.fsdp", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.parametrize("method", fsdp.METHODS + ("exact",))
def test_fsdp2_steps_match_single_process(fsdp_run, method):
    model = fsdp.mlp()
    x, y = fsdp.data()
    fsdp.train(model, x, y, method)  # one process, the concatenated batch
    _assert_close(model.state_dict(), torch.load(fsdp_run / f"fsdp_{method}.pt"))


def test_fsdp2_exact_with_resharding_raises_a_clear_error(fsdp_run):
    error = torch.load(fsdp_run / "fsdp_exact_error.pt")
    assert error is not None and error["type"] == UnsupportedEstimatorError.__name__
    assert "FSDP" in error["message"] and "set_reshard_after_backward(False)" in error["message"]
