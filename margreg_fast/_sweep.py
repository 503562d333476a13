r"""Choose the penalty's weight on your own model and data: train once per weight, measure, compare.

:func:`sweep_weights` trains a fresh model (from your factory, the same initialisation for every
weight) for each weight on your training loader, then measures it on your validation split:

* ``clean_acc`` -- accuracy on the validation split (eval mode);
* ``penalty`` -- the true mean marginal penalty R(x) = ||grad_x logsumexp f(x)||^2 over the
  validation split: the exact value (one input-gradient backward per batch, no finite difference);
* ``pgd_acc`` -- accuracy under an L-inf PGD attack of radius ``pgd_eps`` (the kit's
  :class:`~margreg_fast.kit.attacks.PGD`: images in [0, 1], torchattacks' convention; put any
  normalisation inside the model, or pass ``pgd_eps=None`` to skip it);
* ``step_ms`` -- the median training-step time (forward, backward, optimizer step; the first step
  left out), and ``x_plain``, its ratio to weight 0's step in the same sweep; weight 0 trains plainly
  (the criterion alone, no penalty work), the baseline of every other column;
* ``secant_ratio`` -- the median over the last epoch of the monitor's ratio (1 when the estimator
  measures the gradient; see :mod:`margreg_fast._monitor`).

Each weight's result is written to ``out_dir/weight_<w>.json`` as soon as it is measured; a rerun
with the same ``out_dir`` loads the weights already done and trains only the others, so an
interrupted sweep resumes where it stopped (a weight cut off mid-training starts again). A result
file written with other settings (epochs, estimator, fraction, seed, attack) raises instead of mixing
runs. The results render as a Markdown table (:meth:`SweepResults.table`) and a figure
(:meth:`SweepResults.plot`, matplotlib, imported only there).

Example::

    results = sweep_weights(make_model, train_loader, val_loader, weights=[0, 0.1, 1, 10], out_dir="sweep")
    print(results.table())
    results.plot("sweep/sweep.png")
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from ._estimators.checks import as_model, check_output, check_weight
from ._penalty import marginal_density_penalty
from ._regularizer import MarginalDensityRegularizer
from ._renames import renamed_keywords

Result = Dict[str, Any]
#: The settings a result file must share with the sweep that reads it.
_SETTINGS = ("epochs", "estimator", "fraction", "seed", "pgd_eps", "pgd_alpha", "pgd_steps")


def _file(out_dir: Path, weight: float) -> Path:
    return out_dir / f"weight_{weight!r}.json"


def _load(path: Path, settings: Dict[str, Any]) -> Optional[Result]:
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    written = result.get("settings")
    if isinstance(written, dict) and "method" in written:  # a file of 0.2, which named the estimator "method"
        result["settings"] = written = {("estimator" if k == "method" else k): v for k, v in written.items()}
    if written != settings:
        raise ValueError(f"{path} was written with settings {written}, this sweep has {settings}: "
                         "use another out_dir, or delete the file to rerun that weight")
    return result


def _save(path: Path, result: Result) -> None:
    tmp = path.with_suffix(".json.tmp")  # written whole, then renamed: an interruption leaves no partial file
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def _to(batch, device):
    x, target = batch
    return x.to(device), (target.to(device) if isinstance(target, torch.Tensor) else target)


def _train(model: nn.Module, reg: MarginalDensityRegularizer, loader: Iterable, epochs: int, optimizer,
           criterion, device, bar) -> Dict[str, float]:
    """Train in place; returns the median step time (s) and the last epoch's median secant ratio."""
    times, ratios = [], []
    model.train()
    for _ in range(epochs):
        ratios = []
        for batch in loader:
            x, target = _to(batch, device)
            start = time.perf_counter()
            loss, stats = reg(model, x, target, criterion=criterion)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - start)
            ratios.append(stats["secant_ratio"])
            if bar is not None:
                bar.update(1)
    finite = [r for r in ratios if math.isfinite(r)]
    return {"step_s": statistics.median(times[1:] or times),
            "secant_ratio": statistics.median(finite) if finite else float("nan")}


def _evaluate(model: nn.Module, val: Iterable, device, pgd) -> Dict[str, float]:
    """Clean accuracy, mean exact penalty and (with ``pgd``) PGD accuracy over the validation batches."""
    model.eval()
    n = correct = robust = 0
    penalty = 0.0
    for batch in val:
        x, y = _to(batch, device)
        with torch.no_grad():
            correct += (check_output(model(x), x).argmax(1) == y).sum().item()
            # without grad the default estimator returns the exact ||g||^2 and runs no probe
            penalty += marginal_density_penalty(model, x, reduction="sum").item()
        if pgd is not None:
            adversarial = pgd(x, y)
            with torch.no_grad():
                robust += (model(adversarial).argmax(1) == y).sum().item()
        n += x.shape[0]
    if n == 0:
        raise ValueError("the validation split is empty")
    return {"clean_acc": correct / n, "penalty": penalty / n, "pgd_acc": robust / n if pgd is not None else None}


@renamed_keywords({"method": "estimator"})
def sweep_weights(make_model: Callable[[], nn.Module], train_loader: Iterable, val_loader: Iterable,
                  weights: Sequence[float] = (0.0, 0.1, 1.0, 10.0), *, out_dir: Union[str, os.PathLike],
                  epochs: int = 1, make_optimizer: Optional[Callable] = None, criterion: Optional[Callable] = None,
                  estimator: str = "rfd", fraction: float = 1.0, output: Optional[Callable] = None,
                  pgd_eps: Optional[float] = 8 / 255, pgd_alpha: Optional[float] = None, pgd_steps: int = 10,
                  device: Optional[Union[str, torch.device]] = None, seed: int = 0,
                  progress: bool = True) -> "SweepResults":
    """Train and measure one model per weight; returns one result dict per weight, in ``weights``' order
    (a list with :meth:`~SweepResults.table` and :meth:`~SweepResults.plot`).

    Args:
        make_model: returns a fresh, untrained model; called after ``torch.manual_seed(seed)`` for
            every weight, so all weights start from the same initialisation.
        train_loader: batches ``(x, target)``, iterated once per epoch (a ``DataLoader``);
            ``target`` is whatever ``criterion`` takes (integer labels for the default CE).
        val_loader: batches ``(x, y)`` with integer labels y (the validation split).
        weights: the weights to try; include 0, the plain baseline of ``x_plain``.
        out_dir: one JSON file per weight (created if missing); rerunning resumes.
        epochs: training epochs per weight.
        make_optimizer: ``make_optimizer(parameters)`` -> optimizer (default Adam, lr 1e-3).
        criterion: as for :class:`~margreg_fast.MarginalDensityRegularizer`.
        estimator: as for :class:`~margreg_fast.MarginalDensityRegularizer`.
        fraction: as for :class:`~margreg_fast.MarginalDensityRegularizer`.
        output: as for :class:`~margreg_fast.MarginalDensityRegularizer`.
        pgd_eps: the L-inf budget of the PGD attack; ``pgd_eps=None`` skips it (``pgd_acc`` is then None).
        pgd_alpha: the attack's step (default 2.5 eps / steps).
        pgd_steps: the attack's number of steps.
        device: where to train (default: the device of the model's parameters).
        seed: initialisation and attack seed.
        progress: show a tqdm progress bar over the training steps.

    Each result holds ``weight``, ``clean_acc``, ``penalty``, ``pgd_acc``, ``step_ms``,
    ``secant_ratio`` (NaN for weight 0), ``x_plain`` (None without weight 0) and ``settings``.
    """
    weights = [check_weight(w) for w in weights]
    if not weights or len(set(weights)) != len(weights):
        raise ValueError(f"weights must be distinct and non-empty, got {weights}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    settings = {"epochs": epochs, "estimator": estimator, "fraction": fraction, "seed": seed, "pgd_eps": pgd_eps,
                "pgd_alpha": pgd_alpha, "pgd_steps": pgd_steps}
    MarginalDensityRegularizer(1.0, estimator=estimator, fraction=fraction, output=output)  # checks them before any training
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {w: _load(_file(out, w), settings) for w in weights}
    todo = [w for w in weights if results[w] is None]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        total = len(todo) * epochs * len(train_loader) if hasattr(train_loader, "__len__") else None
        bar = tqdm(total=total, desc="weight sweep", unit="step", dynamic_ncols=True)
    try:
        for w in todo:
            if bar is not None:
                bar.set_postfix(weight=w)
            results[w] = _run(w, make_model, train_loader, val_loader, settings, make_optimizer, criterion,
                              output, device, bar)
            _save(_file(out, w), results[w])
    finally:
        if bar is not None:
            bar.close()
    ordered = SweepResults(results[w] for w in weights)
    plain = results.get(0.0)
    for r in ordered:
        r["x_plain"] = r["step_ms"] / plain["step_ms"] if plain is not None else None
    return ordered


def _run(weight: float, make_model, train_loader, val_loader, settings: Dict[str, Any], make_optimizer, criterion,
         output, device, bar) -> Result:
    torch.manual_seed(settings["seed"])
    model = make_model()
    if device is not None:
        model = model.to(device)
    run_device = next(model.parameters()).device if device is None else torch.device(device)
    optimizer = (make_optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3)))(model.parameters())
    reg = MarginalDensityRegularizer(weight, estimator=settings["estimator"], fraction=settings["fraction"],
                                     penalty_kind="marginal" if weight > 0 else "none", output=output)
    trained = _train(model, reg, train_loader, settings["epochs"], optimizer, criterion, run_device, bar)
    logits_model = as_model(model, output)
    pgd = None
    if settings["pgd_eps"] is not None:
        from .kit.attacks import PGD  # the experiment kit, only when an attack is asked for

        eps, steps = settings["pgd_eps"], settings["pgd_steps"]
        alpha = settings["pgd_alpha"] if settings["pgd_alpha"] is not None else 2.5 * eps / max(steps, 1)
        pgd = PGD(logits_model, eps=eps, alpha=alpha, steps=steps, seed=settings["seed"])
    measured = _evaluate(logits_model, val_loader, run_device, pgd)
    return {"weight": weight, **measured, "step_ms": 1e3 * trained["step_s"], "secant_ratio": trained["secant_ratio"],
            "settings": settings}


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}g}"


class SweepResults(list):
    """The sweep's results, one dict per weight in the sweep's order, with a table and a plot of them."""

    def table(self) -> str:
        """A Markdown table, one row per weight."""
        lines = ["| weight | clean acc | PGD acc | penalty | step (ms) | x plain | secant ratio |",
                 "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self:
            lines.append(f"| {r['weight']:g} | {_number(r['clean_acc'])} | {_number(r['pgd_acc'])} | "
                         f"{_number(r['penalty'])} | {_number(r['step_ms'])} | {_number(r['x_plain'])} | "
                         f"{_number(r['secant_ratio'])} |")
        return "\n".join(lines)

    def plot(self, path: Union[str, os.PathLike]) -> None:
        """Accuracies (clean, PGD) and the penalty against the weight, saved to ``path`` (matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        weights = [r["weight"] for r in self]
        positive = [w for w in weights if w > 0]
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        left.plot(weights, [r["clean_acc"] for r in self], "o-", label="clean")
        if all(r["pgd_acc"] is not None for r in self):
            left.plot(weights, [r["pgd_acc"] for r in self], "s-", label="PGD")
        left.set_ylabel("validation accuracy")
        left.legend()
        right.plot(weights, [r["penalty"] for r in self], "o-")
        right.set_ylabel("mean penalty ||grad_x logsumexp f||^2")
        if all(r["penalty"] > 0 for r in self):
            right.set_yscale("log")
        for ax in (left, right):
            if positive:  # linear around 0 so that weight 0 (plain training) has a place
                ax.set_xscale("symlog", linthresh=min(positive))
            ax.set_xlabel("weight")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
