"""The weight sweep on tiny data: what it measures equals independent measurements of the models it
trained; results are files, one per weight, and a rerun resumes after an interruption.

The penalty is compared at 1e-5 relative: both sides compute the same float32 input gradients, the
sweep per validation batch and summed, the reference on the whole split at once (float32 summation
order, ~1e-7)."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from margreg_fast.kit.attacks import PGD
from margreg_fast import sweep_weights

WEIGHTS = [0, 0.1, 1.0]


class Factory:
    """make_model for the sweep; keeps every model it made (the sweep trains them in place)."""

    def __init__(self, fail_at=None):
        self.models, self.initial, self.fail_at = [], [], fail_at

    def __call__(self):
        if self.fail_at is not None and len(self.models) == self.fail_at:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C while this weight trained
        model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, 3))
        self.models.append(model)
        self.initial.append({k: v.clone() for k, v in model.state_dict().items()})
        return model


def _loaders():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 6, 6, generator=gen)
    y = (x[:, 0, :, :2].mean((1, 2)) * 3).long().clamp(max=2)  # a learnable rule
    train = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=True, generator=gen)
    return train, DataLoader(TensorDataset(x[32:], y[32:]), batch_size=8)


def _sweep(tmp_path, factory, **kwargs):
    train, val = _loaders()
    return sweep_weights(factory, train, val, WEIGHTS, out_dir=tmp_path, epochs=2, pgd_steps=3, progress=False,
                         **kwargs)


def test_measurements_equal_independent_ones(tmp_path):
    factory = Factory()
    results = _sweep(tmp_path, factory)
    assert [r["weight"] for r in results] == WEIGHTS
    _, val = _loaders()
    x, y = (torch.cat(t) for t in zip(*val))
    for result, model in zip(results, factory.models):
        model.eval()
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.logsumexp(model(xg), 1).sum(), xg)
        assert math.isclose(result["penalty"], g.flatten(1).pow(2).sum(1).mean().item(), rel_tol=1e-5)
        with torch.no_grad():
            assert result["clean_acc"] == (model(x).argmax(1) == y).double().mean().item()
        adversarial = torch.cat([PGD(model, eps=8 / 255, alpha=2.5 * (8 / 255) / 3, steps=3, seed=0)(xb, yb)
                                 for xb, yb in val])
        with torch.no_grad():
            assert result["pgd_acc"] == (model(adversarial).argmax(1) == y).double().mean().item()
        assert result["step_ms"] > 0
    assert results[0]["x_plain"] == 1.0 and math.isnan(results[0]["secant_ratio"])
    assert all(0.5 < r["secant_ratio"] < 2 for r in results[1:])
    # the penalty's weight lowers the penalty: plain training leaves the largest one
    assert results[0]["penalty"] > results[2]["penalty"]


def test_the_same_initialisation_for_every_weight(tmp_path):
    factory = Factory()
    _sweep(tmp_path, factory)
    first, *others = factory.initial
    for state in others:
        assert all(torch.equal(first[k], state[k]) for k in first)
    assert not torch.equal(factory.models[0][1].weight, factory.models[1][1].weight)  # then trained apart


def test_interrupted_sweep_resumes(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path, Factory(fail_at=2))  # the third weight never starts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weight_0.0.json", "weight_0.1.json"]
    done = json.loads((tmp_path / "weight_0.1.json").read_text())
    rerun = Factory()
    results = _sweep(tmp_path, rerun)
    assert len(rerun.models) == 1  # only weight 1 trained again
    assert results[1]["penalty"] == done["penalty"] and results[1]["step_ms"] == done["step_ms"]
    again = Factory()
    assert _sweep(tmp_path, again) == results and not again.models  # all done: nothing trains


def test_other_settings_refuse_the_directory(tmp_path):
    _sweep(tmp_path, Factory())
    train, val = _loaders()
    with pytest.raises(ValueError, match="written with settings.*use another out_dir"):
        sweep_weights(Factory(), train, val, WEIGHTS, out_dir=tmp_path, epochs=1, pgd_steps=3, progress=False)


def test_table_and_plot(tmp_path):
    results = _sweep(tmp_path, Factory(), pgd_eps=None)
    table = results.table()
    lines = table.splitlines()
    assert lines[0].startswith("| weight | clean acc | PGD acc | penalty | step (ms) | x plain | secant ratio |")
    assert len(lines) == 2 + len(WEIGHTS) and lines[2].startswith("| 0 | ")
    assert all(r["pgd_acc"] is None for r in results)
    results.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))

    def forward(self, x):
        return {"logits": self.net(x)}


def test_output_and_criterion_reach_training_and_measurement(tmp_path):
    """A model returning a dict, read through output=, and a label-smoothed criterion: the sweep trains
    and measures it (clean accuracy and penalty of the logits the reader gives)."""
    train, val = _loaders()
    made = []
    factory = lambda: made.append(DictOutput()) or made[-1]  # noqa: E731
    results = sweep_weights(factory, train, val, [0, 1.0], out_dir=tmp_path, pgd_steps=2, progress=False,
                            output=lambda out: out["logits"],
                            criterion=lambda z, t: nn.functional.cross_entropy(z, t, label_smoothing=0.1))
    x, y = (torch.cat(t) for t in zip(*val))
    for result, model in zip(results, made):
        model.eval()
        with torch.no_grad():
            assert result["clean_acc"] == (model(x)["logits"].argmax(1) == y).double().mean().item()
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.logsumexp(model(xg)["logits"], 1).sum(), xg)
        assert math.isclose(result["penalty"], g.flatten(1).pow(2).sum(1).mean().item(), rel_tol=1e-5)


def test_bad_arguments(tmp_path):
    train, val = _loaders()
    with pytest.raises(ValueError, match="distinct"):
        sweep_weights(Factory(), train, val, [0.1, 0.1], out_dir=tmp_path)
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        sweep_weights(Factory(), train, val, [-1], out_dir=tmp_path)
    with pytest.raises(ValueError, match="fraction must be in"):
        sweep_weights(Factory(), train, val, [0, 1], out_dir=tmp_path, fraction=2.0)


# ---------------------------------------------------------------- the guide (docs/guides/choosing-the-weight.md)
ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guides" / "choosing-the-weight.md"
FRONTIER = ROOT / "docs" / "results" / "claims" / "frontier.md"


def test_the_guides_code_runs_on_tiny_data(tmp_path):
    """Each python block of the guide, as a user pastes it, in a fresh interpreter and an empty directory:
    the sweep writes its four result files, the table and the plot."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) == 2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for code in blocks:
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]
    sweep = tmp_path / "runs" / "weight-sweep"
    assert sorted(p.name for p in sweep.glob("*.json")) == [f"weight_{w!r}.json" for w in (0.0, 0.1, 1.0, 10.0)]
    assert (sweep / "sweep.png").exists()


def test_the_guides_frontier_rows_are_the_committed_files():
    """The guide's table: the mdr rows of the committed frontier file, cell for cell."""
    guide = GUIDE.read_text()
    committed = {}
    for line in FRONTIER.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] == "mdr":
            committed[cells[1].split()[0]] = (cells[3], cells[5])
    rows = re.findall(r"^\| ([\d.]+) \| (.+?) \| (.+?) \|$", guide, re.M)
    assert len(rows) == 3
    for weight, accuracy, leakage in rows:
        assert committed[weight] == (accuracy, leakage), weight
    cut = committed["0.1"][1].split()[0].lstrip("-")  # weight 0.1's mean leakage_paper cut, as the prose gives it
    assert f"Weight 0.1 cut leakage_paper by {cut} " in guide
