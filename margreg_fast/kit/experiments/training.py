"""Resumable training of one (scheme, seed) run.

Objective per batch: mean CE + lambda * mean penalty, computed by
``MarginalDensityRegularizer(lambda, estimator=..., step=h, penalty_kind=...)`` (the "none" scheme uses
``penalty_kind="none"``, plain CE through the same code path, so its step time is comparable). A lazy
``BASE%K`` scheme uses K * lambda on steps 0, K, 2K, ... and plain CE on the others (step_objective).
The adversarial schemes (config.ADVERSARIAL_SCHEMES) train on kit/adversarial.py's objectives instead,
whose attack is timed as part of the step; each scheme trains for ``cfg.epochs_of(scheme)`` epochs.

Determinism: the model is initialised right after ``torch.manual_seed(seed)``; data order comes
from a dedicated ``torch.Generator`` seeded from the seed; ``torch.use_deterministic_algorithms`` is
switched on by the caller. At the end of every epoch the complete state (model, optimizer, epoch,
torch RNG, data-order generator, recorded step times) is checkpointed atomically, so a run killed at
any point and restarted continues from the last finished epoch and produces bit-identical weights.

BatchNorm statistics for evaluation: during training each BatchNorm layer keeps an exponential moving
average (momentum 0.1) of its batch statistics, which trails weights that are still moving; on the
kit's ResNet those averages cost the eval-mode model a large part of its test accuracy. So after the
last epoch the running statistics are recomputed with the final weights ("precise BN",
``torch.optim.swa_utils.update_bn``): one forward pass over the training set in its stored order, in
batches of ``batch_size``, each layer's running mean and variance set to the average over the batches
of their batch means and (unbiased) batch variances. The checkpoint keeps the training-time averages,
so resuming is unchanged; the recomputation is deterministic and runs again each time a finished run is
loaded. Models without BatchNorm are untouched.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..adversarial import TRADES, PGDTraining
from ..data import ImageDataset
from ... import MarginalDensityRegularizer
from .checkpoint import load_checkpoint, restore, save_checkpoint
from .config import ADVERSARIAL_SCHEMES, PENALTY_KIND_OF_SCHEME, ExperimentConfig, parse_scheme
from .model_factory import build_model

CHECKPOINT_NAME = "checkpoint.pt"
NUM_CLASSES = 10  # digits, MNIST and Fashion-MNIST all have ten classes


@dataclass
class TrainedRun:
    model: torch.nn.Module
    step_times: list[float]
    resumed_from_epoch: int
    every: int = 1  # the lazy interval: one penalised step in every ``every``

    @property
    def median_step_time(self) -> float:
        """The median cost of a training step: over consecutive windows of ``every`` steps aligned with
        the lazy schedule (one penalised step each), the median of their mean; ``every`` = 1: the median
        step. A lazy run's plain median would be the cost of its unpenalised steps alone."""
        k = self.every
        windows = [sum(self.step_times[i:i + k]) / k for i in range(0, len(self.step_times) - k + 1, k)]
        return statistics.median(windows) if windows else float("nan")


def make_regularizer(cfg: ExperimentConfig, scheme: str) -> MarginalDensityRegularizer:
    """The objective of ``scheme``'s penalised steps; a ``BASE@F`` scheme penalises a random fraction F of
    each batch (drawn from torch's global generator, whose state the checkpoints keep), a ``BASE%K``
    scheme trains at K times its weight (on every K-th step only, see ``step_objective``)."""
    base, fraction, every = parse_scheme(scheme)
    penalty = PENALTY_KIND_OF_SCHEME[base]
    weight = 0.0 if penalty == "none" else cfg.weights[scheme] * every
    return MarginalDensityRegularizer(weight, estimator=cfg.estimators[scheme], step=cfg.step, penalty_kind=penalty,
                                      fraction=fraction)


def adversarial_objective(cfg: ExperimentConfig, scheme: str) -> PGDTraining | TRADES:
    """The objective of an adversarial scheme: the attack at the PGD row's L-inf budget and steps
    (``pgd_linf_eps``, ``pgd_steps``), TRADES at beta = its weight."""
    if scheme == "pgd-at":
        return PGDTraining(eps=cfg.pgd_linf_eps, steps=cfg.pgd_steps)
    return TRADES(eps=cfg.pgd_linf_eps, steps=cfg.pgd_steps, beta=cfg.weights[scheme])


def step_objective(cfg: ExperimentConfig, scheme: str):
    """``objective(step) -> MarginalDensityRegularizer`` for training step ``step`` (0-based, counted over
    the whole run): ``make_regularizer``'s on every step, or for a lazy ``BASE%K`` scheme on steps 0, K,
    2K, ... and plain cross-entropy (the "none" objective) on the others; an adversarial scheme's
    objective (``adversarial_objective``) on every step."""
    if scheme in ADVERSARIAL_SCHEMES:
        adversarial = adversarial_objective(cfg, scheme)
        return lambda step: adversarial
    penalised, every = make_regularizer(cfg, scheme), parse_scheme(scheme).every
    if every == 1:
        return lambda step: penalised
    plain = MarginalDensityRegularizer(0.0, penalty_kind="none")
    return lambda step: penalised if step % every == 0 else plain


def _data_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * (seed + 1))


@torch.no_grad()
def recompute_batchnorm_statistics(model: torch.nn.Module, x: torch.Tensor, batch_size: int,
                                   device: str = "cpu") -> None:
    """Set every BatchNorm layer's running statistics to the average over ``x``'s batches (in order) of
    its batch statistics under the model's current weights (see the module docstring)."""
    torch.optim.swa_utils.update_bn((x[i:i + batch_size] for i in range(0, len(x), batch_size)), model, device)


def train_run(cfg: ExperimentConfig, scheme: str, seed: int, train: ImageDataset, run_dir: Path,
              *, quiet: bool = False, device: str = "cpu", allow_training: bool = True) -> TrainedRun:
    """Train (or resume training) ``scheme`` with ``seed``; checkpoints go to ``run_dir``.

    With ``allow_training=False`` the run must already be complete (used by ``evaluate``).
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    torch.manual_seed(seed)
    model = build_model(cfg, in_shape=tuple(train.x.shape[1:]), num_classes=NUM_CLASSES).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = _data_generator(seed)
    start_epoch, step_times = 0, []
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        restore(state, model=model, optimizer=optimizer, data_generator=gen)
        start_epoch, step_times = state["epoch"], list(state["step_times"])
    epochs = cfg.epochs_of(scheme)
    if not allow_training and start_epoch < epochs:
        raise ValueError(f"{run_dir} holds a run stopped at epoch {start_epoch} of {epochs}; "
                         "run the same train/experiment command again to finish it")
    objective = step_objective(cfg, scheme)
    x_all, y_all = train.x, train.y
    n = len(y_all)
    steps_per_epoch = -(-n // cfg.batch_size)
    bar = tqdm(range(start_epoch, epochs), desc=f"{scheme} seed {seed}", initial=start_epoch,
               total=epochs, unit="epoch", disable=quiet, leave=False, dynamic_ncols=True)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen)
        sums = {"ce": 0.0, "penalty": 0.0}
        batches = 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb, yb = x_all[idx].to(device), y_all[idx].to(device)
            reg = objective(epoch * steps_per_epoch + i // cfg.batch_size)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss, stats = reg(model, xb, yb)
            loss.backward()
            optimizer.step()
            step_times.append(time.perf_counter() - t0)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{scheme} seed {seed}: loss became {loss.item()} at epoch {epoch + 1}; "
                                         "lower --weight or --lr")
            for k in sums:
                sums[k] += float(stats.get(k, 0.0))
            batches += 1
        bar.set_postfix(ce=f"{sums['ce'] / batches:.3f}", pen=f"{sums['penalty'] / batches:.3g}")
        save_checkpoint(ckpt_path, model=model, optimizer=optimizer, epoch=epoch + 1,
                        data_generator=gen, step_times=step_times)
    bar.close()
    recompute_batchnorm_statistics(model, x_all, cfg.batch_size, device)
    model.eval()
    return TrainedRun(model=model, step_times=step_times, resumed_from_epoch=start_epoch, every=parse_scheme(scheme).every)

