"""Command-line tool: ``margreg-fast {train,evaluate,experiment}`` (also ``python -m margreg_fast``).

Examples::

    margreg-fast experiment blockmnist --seeds 0 1 2 --out runs/blockmnist
    margreg-fast experiment spurious --methods none mdr --weight mdr=0.5 --out runs/spurious
    margreg-fast train blockmnist --methods mdr --epochs 10 --out runs/mdr && margreg-fast evaluate runs/mdr

Exit status: 0 on success, 2 for bad arguments or unusable inputs (bad data files, an output
directory that belongs to another configuration), 1 for anything else.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .experiments.config import (ATTRIBUTIONS, DEFAULT_ESTIMATORS, DEFAULT_WEIGHTS, ESTIMATORS, EXPERIMENTS,
                                 METHODS, ExperimentConfig)

_DEFAULTS = ExperimentConfig()


def _per_method(kind: str, cast, allowed=None):
    """Parser for ``VALUE`` (all methods) or ``METHOD=VALUE`` tokens of --weight / --estimator."""
    def parse(token: str):
        method, sep, value = token.rpartition("=")
        if sep and method not in METHODS:
            raise argparse.ArgumentTypeError(f"unknown method {method!r} in {token!r}; choose from {', '.join(METHODS)}")
        try:
            v = cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind} {value!r} in {token!r}") from None
        if allowed is not None and v not in allowed:
            raise argparse.ArgumentTypeError(f"{kind} must be one of {', '.join(allowed)}, got {v!r}")
        if cast is float and not v >= 0:
            raise argparse.ArgumentTypeError(f"{kind} must be >= 0, got {token!r}")
        return (method or None, v)
    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def _resolve(tokens, defaults: dict) -> dict:
    out = dict(defaults)
    for method, value in tokens or []:
        if method is None:
            out.update({m: value for m in METHODS if m != "none"})
        else:
            out[method] = value
    return out


def _number_type(convert, accept, description):
    """An argparse ``type=`` that parses with ``convert`` and rejects values failing ``accept``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value
    return parse


_positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number_type(float, lambda v: v > 0, "a positive number")


def _add_common(p: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    p.add_argument("experiment", choices=EXPERIMENTS,
                   help="blockmnist: digit + null block (feature leakage); spurious: label-correlated patch "
                        "(shortcut, worst-group accuracy)")
    p.add_argument("--out", type=Path, required=True, help="output directory (reused to resume an interrupted run)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                   help=f"methods to train: {', '.join(METHODS)} (default: all). none = plain CE, "
                        "igr = conditional ||grad_x CE||^2, joint = ||grad_x z_y||^2, mdr = marginal ||grad_x logsumexp||^2")
    p.add_argument("--seeds", nargs="+", type=_nonneg_int, default=list(d.seeds), metavar="SEED",
                   help="one or more seeds; results are means over seeds (default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help="training epochs (default: %(default)s)")
    p.add_argument("--weight", nargs="+", type=_per_method("weight", float), metavar="[METHOD=]W",
                   help="penalty weight lambda, for all regularised methods (W) or per method (mdr=0.5 igr=1); "
                        f"default: {', '.join(f'{m}={w:g}' for m, w in DEFAULT_WEIGHTS.items() if m != 'none')}")
    p.add_argument("--estimator", nargs="+", type=_per_method("estimator", str, ESTIMATORS), metavar="[METHOD=]E",
                   help=f"penalty estimator ({', '.join(ESTIMATORS)}), for all or per method; default: "
                        f"{', '.join(f'{m}={e}' for m, e in DEFAULT_ESTIMATORS.items() if m != 'none')}")
    p.add_argument("--step", type=_positive_float, default=d.step,
                   help="finite-difference step h of the fd/central estimators (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="directory with MNIST or Fashion-MNIST IDX files (gzipped or not); "
                        "default: the 8x8 digits embedded in scikit-learn")
    p.add_argument("--model", choices=("mlp", "cnn", "vit"), default=d.model, help="architecture (default: %(default)s)")
    p.add_argument("--width", type=_positive_int, default=d.width, help="model width (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="default: %(default)s")
    p.add_argument("--lr", type=_positive_float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--max-train", type=_positive_int, default=None, help="use at most this many training images")
    p.add_argument("--max-test", type=_positive_int, default=None, help="use at most this many test images")
    p.add_argument("--eval-samples", type=_positive_int, default=d.eval_samples,
                   help="test images for attribution/attack/density metrics (default: %(default)s)")
    p.add_argument("--attribution", choices=ATTRIBUTIONS, default=d.attribution,
                   help="attribution for leakage, insertion and the figures (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="training device, e.g. cpu or cuda (default: %(default)s); "
                                                   "evaluation runs on the CPU")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 is fastest on a busy machine")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="margreg-fast",
        description="Train plain, input-gradient (IGR), joint and marginal-density-regularised (MDR) classifiers "
                    "and measure how much they rely on non-robust features.",
        epilog="Runs are resumable: rerun the same command after an interruption and it continues from the "
               "last finished epoch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    exp = sub.add_parser("experiment", help="train and evaluate every method and seed, write results and figures",
                         description="Train and evaluate every method over every seed; write OUT/results.json "
                                     "(means over seeds), OUT/results.md, OUT/results_seeds.json, OUT/figures/*.png.")
    _add_common(exp)
    tr = sub.add_parser("train", help="train (or resume) models only; evaluate them later with `evaluate OUT`",
                        description="Train every method and seed into OUT/runs/*/checkpoint.pt without evaluating.")
    _add_common(tr)
    ev = sub.add_parser("evaluate", help="evaluate the trained models in OUT and write results and figures",
                        description="Evaluate every finished run in OUT (made by `train` or `experiment`).")
    ev.add_argument("out", type=Path, help="output directory of a `train` or `experiment` run")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise ValueError(f"--data-dir {args.data_dir} is not a directory")
    return ExperimentConfig(
        experiment=args.experiment, methods=tuple(args.methods), seeds=tuple(args.seeds),
        data_dir=None if args.data_dir is None else str(args.data_dir.resolve()),
        max_train=args.max_train, max_test=args.max_test, model=args.model, width=args.width,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weights=_resolve(args.weight, DEFAULT_WEIGHTS), estimators=_resolve(args.estimator, DEFAULT_ESTIMATORS),
        step=args.step, attribution=args.attribution, eval_samples=args.eval_samples)


def _check_device(device: str) -> str:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine")
    return device


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import DataFileError
    from .experiments import runner

    try:
        if args.command == "evaluate":
            summary = runner.evaluate_all(args.out, quiet=args.quiet)
            out = args.out
        else:
            cfg = config_from_args(args)
            device = _check_device(args.device)
            if args.threads is not None:
                import torch

                torch.set_num_threads(args.threads)
            out = args.out
            if args.command == "train":
                runner.train_all(cfg, out, quiet=args.quiet, device=device)
                print(f"trained {len(cfg.methods) * len(cfg.seeds)} run(s) into {out}/runs; "
                      f"evaluate with: margreg-fast evaluate {out}")
                return 0
            summary = runner.run_experiment(cfg, out, quiet=args.quiet, device=device)
    except (ValueError, DataFileError) as exc:
        parser.error(str(exc))  # exits with status 2
    print((Path(out) / "results.md").read_text(), end="")
    print(f"\nwrote {out}/results.json, {out}/results.md, {out}/results_seeds.json and {out}/figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
