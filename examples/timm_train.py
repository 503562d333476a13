"""A timm training loop with the marginal-density penalty: timm's Mixup / CutMix, label smoothing,
ModelEmaV3 and AMP (bf16 autocast, or fp16 with a GradScaler), on a timm model.

The one changed line is the loss: ``criterion(model(x), target)`` becomes
``reg(model, x, target, criterion=criterion)``. The penalty needs no label, so mixup's soft targets
go to the criterion unchanged, and the logits of the one forward serve both.

    python examples/timm_train.py --model resnet18 --steps 50 --amp bf16

Runs on random images (replace ``synthetic_batches`` with your loader) and prints the median step
time of plain training and of regularised training, each on a fresh copy of the same model.
"""
import argparse
import contextlib
import copy
import statistics
import time

import timm
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty


def synthetic_batches(steps, batch_size, img_size, num_classes, device):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(batch_size, 3, img_size, img_size, generator=gen)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen)
        yield x.to(device), y.to(device)


def train(model, batches, args, device, reg=None):
    """timm's recipe pieces around one loss line; returns (step times in s, last stats, the EMA model)."""
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=args.num_classes)
    criterion = SoftTargetCrossEntropy()  # mixup already smoothed the targets
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    ema = ModelEmaV3(model, decay=0.998)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    times, stats = [], {}
    model.train()
    for step, (x, y) in enumerate(batches):
        start = time.perf_counter()
        x, target = mixup(x, y)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            if reg is None:
                loss = criterion(model(x), target)
            else:
                loss, stats = reg(model, x, target, criterion=criterion)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        ema.update(model, step=step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, stats, ema.module


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight", type=float, default=0.1, help="the penalty's weight (see docs/guides/choosing-the-weight.md)")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of each batch the penalty is computed on")
    parser.add_argument("--amp", choices=["bf16", "fp16", "none"], default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is left out of the timing)")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes).to(device)

    def batches():
        return synthetic_batches(args.steps, args.batch_size, args.img_size, args.num_classes, device)

    plain_times, _, _ = train(copy.deepcopy(model), batches(), args, device)
    reg = MarginalDensityRegularizer(weight=args.weight, fraction=args.fraction)
    reg_times, stats, ema_model = train(model, batches(), args, device, reg=reg)

    # the EMA model's penalty on a batch, without grad: the exact value, no probe pass
    x, _ = next(synthetic_batches(1, args.batch_size, args.img_size, args.num_classes, device))
    ema_model.eval()
    with torch.no_grad():
        ema_penalty = marginal_density_penalty(ema_model, x).item()
    print(f"last step: {', '.join(f'{k} {v:.4g}' for k, v in stats.items())}")
    print(f"EMA model penalty on a batch: {ema_penalty:.4g}")
    plain, regularised = statistics.median(plain_times[1:]), statistics.median(reg_times[1:])
    print(f"step time ({args.model}, batch {args.batch_size}, {args.amp}, {device.type}, median of "
          f"{len(reg_times) - 1} steps after the first): plain {1e3 * plain:.1f} ms, regularised "
          f"{1e3 * regularised:.1f} ms ({regularised / plain:.2f}x plain)")


if __name__ == "__main__":
    main()
