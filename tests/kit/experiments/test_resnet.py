"""The second model: a small ResNet with BatchNorm (models.ResNet, config model="resnet").

Its penalty under the library's default estimator, in train mode (BatchNorm normalising by the batch's
statistics held fixed in x), is checked against an independent float64 reference: an eval-mode copy
holding the batch's biased statistics as running statistics, differentiated by plain autograd
(tests.estimators.references.batch_statistics_copy), and trained through the kit it beats chance.
"""
import pytest
import torch

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast.kit import models
from margreg_fast.kit.experiments.datasets import build_datasets
from margreg_fast.kit.experiments.model_factory import build_model
from margreg_fast.kit.experiments.training import train_run
from margreg_fast.kit.metrics import accuracy
from tests.estimators.references import batch_statistics_copy


def test_resnet_stages_and_shapes():
    model = models.ResNet(width=16)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 3 * 2 * 2  # stem + 3 stages x 2 blocks x 2 convs
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 1 + 12 + 2  # + 2 projections
    feats = model.stages(model.stem(torch.rand(2, 1, 56, 28)))
    assert feats.shape == (2, 64, 14, 7) and model(torch.rand(2, 1, 56, 28)).shape == (2, 10)


def _reference_penalty(model, x):
    frozen = batch_statistics_copy(model.train(), x)
    x_in = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.logsumexp(frozen(x_in), dim=1).sum(), x_in)
    return g.flatten(1).pow(2).sum(1)


def test_resnet_train_mode_penalty_is_the_held_statistics_one():
    """float64, 1x16x8 BlockMNIST-sized inputs, batch 6: the default estimator's per-sample value in
    train mode against the frozen reference (they differ by rounding only: bound 1e-10 relative), and the
    exact estimator's too; the regulariser's penalty statistic is their mean."""
    torch.manual_seed(0)
    model = models.ResNet(width=4).double().train()
    x = torch.rand(6, 1, 16, 8, dtype=torch.float64)
    ref = _reference_penalty(model, x)
    model.train()
    default = marginal_density_penalty(model, x, reduction="none").detach()
    exact = marginal_density_penalty(model, x, estimator="exact", reduction="none").detach()
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # noqa: E731
    assert rel(default, ref) < 1e-10 and rel(exact, ref) < 1e-10
    assert not torch.allclose(ref, _reference_penalty(model, x[:3]).repeat(2))  # the statistics are the batch's
    _, stats = MarginalDensityRegularizer(1.0)(model.train(), x, torch.randint(0, 10, (6,)))
    assert abs(float(stats["penalty"]) - ref.mean().item()) < 1e-10 * ref.mean().item()


def test_resnet_trains_above_chance_on_the_digits_fixture(tiny_config, tmp_path, one_thread):
    cfg = tiny_config.replace(model="resnet", epochs=4, max_train=None, max_test=None, width=8)
    train, test = build_datasets(cfg, 0)
    assert isinstance(build_model(cfg, in_shape=(1, 16, 8), num_classes=10), models.ResNet)
    model = train_run(cfg, "mdr", 0, train, tmp_path, quiet=True).model
    assert not model.training  # evaluated in eval mode (running statistics)
    acc = accuracy(model, test.x, test.y)
    assert acc > 0.5, acc  # chance is 0.1


def _batch_statistics_average(model, x, batch_size):
    """Per BatchNorm layer, the average over x's batches (in order) of the batch mean and unbiased
    variance of the layer's input, the model in train mode on a copy (an independent reference)."""
    import copy

    model = copy.deepcopy(model).train()
    seen = {}
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def record(module, inputs, _):
        seen.setdefault(module, []).append((inputs[0].mean(dim=(0, 2, 3)), inputs[0].var(dim=(0, 2, 3))))

    hooks = [m.register_forward_hook(record) for m in bns]
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    for h in hooks:
        h.remove()
    return [(torch.stack([m for m, _ in seen[b]]).mean(0), torch.stack([v for _, v in seen[b]]).mean(0)) for b in bns]


def test_a_trained_resnet_is_evaluated_with_its_final_weights_batch_statistics(tiny_config, tmp_path, one_thread):
    """After the last epoch every BatchNorm layer's running statistics are the average of its batch
    statistics over the training set under the final weights (float32; the two averages add in different
    orders, so relative 1e-5), not the moving averages of training, which the checkpoint keeps for
    resuming; loading the finished run gives the same statistics again."""
    from margreg_fast.kit.experiments.checkpoint import load_checkpoint
    from margreg_fast.kit.experiments.training import CHECKPOINT_NAME

    cfg = tiny_config.replace(model="resnet", epochs=2, max_train=None, max_test=None, width=4)
    train, _ = build_datasets(cfg, 0)
    model = train_run(cfg, "mdr", 0, train, tmp_path, quiet=True).model
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn, (mean, var) in zip(bns, _batch_statistics_average(model, train.x, cfg.batch_size)):
        assert torch.allclose(bn.running_mean, mean, rtol=1e-5, atol=1e-5 * mean.abs().max().item())
        assert torch.allclose(bn.running_var, var, rtol=1e-5, atol=1e-5 * var.abs().max().item())
        assert bn.momentum == 0.1  # the layer's own momentum is put back
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)["model"]
    assert not torch.allclose(saved["stem.1.running_mean"], bns[0].running_mean)  # training's moving average
    again = train_run(cfg, "mdr", 0, train, tmp_path, quiet=True, allow_training=False).model
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("setting", [["--model", "resnet", "--width", "4"],
                                     ["--dataset", "animal", "--patch-size", "11"]], ids=["resnet", "animal"])
def test_claim_rows_on_the_second_model_and_dataset(setting, tmp_path, one_thread):
    """`margreg-fast claims --model resnet` and `--dataset animal`, tiny: every BlockMNIST claim row of mdr
    against none (leakage, PGD, density, attribution, accuracy) is decided over the two seeds, on the
    setting asked for."""
    import json

    from margreg_fast.kit.cli import main

    from .conftest import TINY_FLAGS

    out = tmp_path / "claims"
    assert main(["claims", "--schemes", "none", "mdr", "--seeds", "0", "1", "--no-spurious", "--out", str(out),
                 *TINY_FLAGS, *setting]) == 0
    saved = json.loads((out / "claims.json").read_text())
    cfg = saved["plan"]["config"]
    assert (cfg["model"], cfg["dataset"]) == (("resnet", "digits") if "resnet" in setting else ("cnn", "animal"))
    rows = {r["metric"]: r["versus"][0] for r in saved["claims"]}
    for metric in ("leakage_paper", "pgd_linf_acc", "density_shift", "topk_intersection", "insertion_auc_prob",
                   "clean_acc"):
        assert rows[metric]["comparator"] == "none" and len(rows[metric]["diffs"]) == 2, metric
        assert rows[metric]["verdict"] in ("SUPPORTED", "CONTRADICTED", "INCONCLUSIVE")
    shape = json.loads((out / "blockmnist" / "results.json").read_text())["config"]["image_shape"]
    assert shape == ([1, 16, 8] if "resnet" in setting else [1, 56, 28])
