"""A LightningModule with the marginal-density penalty.

``training_step`` takes the logits and the penalty of one forward from
``reg.logits_and_penalty`` and adds ``reg.weight * penalty`` to its own loss; ``validation_step``
logs the penalty of the validation batch with ``marginal_density_penalty``. Lightning runs
validation under ``torch.inference_mode()`` by default; the penalty needs an input gradient, which
margreg_fast computes there too (its value is the exact ||grad_x logsumexp f(x)||^2, as outside).

    python examples/lightning_module.py --steps 50

Runs on random images (replace ``random_images`` with your DataModule) and prints the median
training-step time of a plain module and of the regularised one.
"""
import argparse
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty


class Classifier(L.LightningModule):
    """A small CNN; ``weight=None`` trains it plainly (the baseline the step time is compared with)."""

    def __init__(self, num_classes: int = 10, weight=0.1, fraction: float = 1.0, lr: float = 1e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
        self.reg = None if weight is None else MarginalDensityRegularizer(weight, fraction=fraction)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.reg is None:
            loss = F.cross_entropy(self(x), y)
            self.log("train/ce", loss)
            return loss
        logits, penalty = self.reg.logits_and_penalty(self.net, x)
        ce = F.cross_entropy(logits, y)
        self.log_dict({"train/ce": ce, "train/penalty": penalty,
                       "train/secant_ratio": self.reg.last_stats["secant_ratio"]})
        return ce + self.reg.weight * penalty

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log_dict({"val/ce": F.cross_entropy(logits, y), "val/acc": (logits.argmax(1) == y).float().mean(),
                       "val/penalty": marginal_density_penalty(self.net, x)})

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class StepTimer(L.Callback):
    """Wall time of each training step (batch start to batch end, the optimizer step included)."""

    def __init__(self):
        self.times, self._start = [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._start)


def random_images(n: int, num_classes: int, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, num_classes, (n,), generator=gen))


def fit(module: Classifier, args) -> tuple:
    """Train for ``args.steps`` steps with validation at the end; returns (step times, the logged metrics)."""
    timer = StepTimer()
    trainer = L.Trainer(max_steps=args.steps, accelerator=args.accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=args.val_batches, val_check_interval=args.steps, num_sanity_val_steps=0,
                        callbacks=[timer])
    train = DataLoader(random_images(args.steps * args.batch_size, 10), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(random_images(args.val_batches * args.batch_size, 10, seed=1), batch_size=args.batch_size)
    trainer.fit(module, train, val)
    return timer.times, {k: float(v) for k, v in trainer.callback_metrics.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--val-batches", type=int, default=4)
    parser.add_argument("--weight", type=float, default=0.1)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is left out of the timing)")
    L.seed_everything(0, verbose=False)
    plain_times, _ = fit(Classifier(weight=None), args)
    L.seed_everything(0, verbose=False)
    reg_times, metrics = fit(Classifier(weight=args.weight, fraction=args.fraction), args)
    print("metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    plain, regularised = statistics.median(plain_times[1:]), statistics.median(reg_times[1:])
    print(f"step time (batch {args.batch_size}, median of {len(reg_times) - 1} steps after the first): "
          f"plain {1e3 * plain:.1f} ms, regularised {1e3 * regularised:.1f} ms ({regularised / plain:.2f}x plain)")


if __name__ == "__main__":
    main()
