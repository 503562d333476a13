"""Lazy regularisation (``BASE%K``): the penalty at K times the weight on steps 0, K, 2K, ... of the run,
plain cross-entropy on the others, and a step cost that counts one penalised step per K."""
import pytest
import torch
import torch.nn.functional as F

from margreg_fast.kit.experiments.datasets import build_datasets
from margreg_fast.kit.experiments.model_factory import build_model
from margreg_fast.kit.experiments.training import NUM_CLASSES, TrainedRun, _data_generator, train_run
from margreg_fast._regularizer import MarginalDensityRegularizer


def _by_hand(cfg, train, every: int, weight: float) -> torch.nn.Module:
    """Two epochs of Adam in the kit's data order, written out: the penalty (weight x every, the
    regulariser's default estimator and step) on steps 0, every, 2 every, ... counted across epochs."""
    torch.manual_seed(0)
    model = build_model(cfg, in_shape=tuple(train.x.shape[1:]), num_classes=NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    penalised = MarginalDensityRegularizer(weight * every, estimator=cfg.estimators["mdr"], step=cfg.step)
    order_gen, step = _data_generator(0), 0
    for _ in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(len(train.y), generator=order_gen).split(cfg.batch_size):
            x, y = train.x[idx], train.y[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = penalised(model, x, y)[0] if step % every == 0 else F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            step += 1
    return model


@pytest.mark.parametrize("every", [2, 3])
def test_lazy_run_is_the_schedule_written_out(tmp_path, tiny_config, every):
    """3 steps per epoch (96 images, batch 32) and 2 epochs: with every = 2 the schedule crosses the
    epoch boundary (steps 0, 2, 4), which a per-epoch counter would get wrong (0, 2 | 0, 2)."""
    cfg = tiny_config.replace(epochs=2, schemes=("none", "mdr", f"mdr%{every}"), weights={"mdr": 0.5})
    train, _ = build_datasets(cfg, seed=0)
    lazy = train_run(cfg, f"mdr%{every}", 0, train, tmp_path / "lazy", quiet=True).model
    expected = _by_hand(cfg, train, every, 0.5)
    for (name, a), b in zip(lazy.state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # and it is neither the every-step run nor plain training
    every_step = train_run(cfg, "mdr", 0, train, tmp_path / "mdr", quiet=True).model
    plain = train_run(cfg, "none", 0, train, tmp_path / "none", quiet=True).model
    for other in (every_step, plain):
        assert not all(torch.equal(a, b) for a, b in zip(lazy.state_dict().values(), other.state_dict().values()))


def test_lazy_step_cost_counts_one_penalised_step_per_window():
    times = [5.0, 1.0, 1.0, 1.0] * 10 + [5.0, 1.0]  # an unfinished last window is left out
    assert TrainedRun(model=None, step_times=times, resumed_from_epoch=0, every=4).median_step_time == 2.0
    assert TrainedRun(model=None, step_times=times, resumed_from_epoch=0).median_step_time == 1.0
