"""Experiment configuration: one flat, JSON-serialisable dataclass.

The config is written to ``OUT/config.json`` at the start of a run and compared on restart, so a
resumed run can never silently mix results produced under different settings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ...estimators import DEFAULT_METHOD, DEFAULT_STEP
from ...estimators import METHODS as ESTIMATOR_METHODS
from ...estimators.steps import Step

#: Training methods and the penalty each one trains with (``MarginalDensityRegularizer(penalty=...)``).
PENALTY_OF_METHOD = {"none": "none", "igr": "conditional", "joint": "joint", "mdr": "marginal"}
METHODS = tuple(PENALTY_OF_METHOD)
EXPERIMENTS = ("blockmnist", "spurious")
ATTRIBUTIONS = ("saliency", "integrated_gradients", "ablation")

#: Default penalty weights (lambda in CE + lambda * R). "none" trains plain CE whatever its weight.
DEFAULT_WEIGHTS = {"none": 0.0, "igr": 1.0, "joint": 1.0, "mdr": 1.0}
#: Default estimator per method: the baselines use their textbook double-backprop form, MDR the
#: fast finite difference along the score direction (DESIGN.md section 2).
DEFAULT_ESTIMATORS = {"none": DEFAULT_METHOD, "igr": "exact", "joint": "exact", "mdr": DEFAULT_METHOD}
ESTIMATORS = ESTIMATOR_METHODS


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines the numbers in results.json (the output directory does not)."""

    experiment: str = "blockmnist"
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0,)
    # --- data
    data_dir: str | None = None        # None: embedded scikit-learn digits (8x8)
    test_fraction: float = 0.25        # embedded digits only (MNIST has its own test split)
    max_train: int | None = None       # cap on training images (after building the dataset)
    max_test: int | None = None
    # --- model and training
    model: str = "cnn"
    width: int = 16
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    estimators: dict = field(default_factory=lambda: dict(DEFAULT_ESTIMATORS))
    step: Step = DEFAULT_STEP          # finite-difference step h of the estimators that take one
    # --- evaluation
    attribution: str = "saliency"
    eval_samples: int = 200            # test images used for attribution, attacks and density metrics
    pgd_linf_eps: float = 0.1
    pgd_l2_eps: float = 1.0
    pgd_steps: int = 10
    attack_eps: float = 0.1            # attribution attack (L-inf)
    attack_steps: int = 10
    topk: int = 16
    density_eps: float = 0.5           # L2 norm of the density perturbation
    density_steps: int = 10
    insertion_steps: int = 16

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {self.experiment!r}")
        if not self.methods:
            raise ValueError("methods must not be empty")
        for m in self.methods:
            if m not in PENALTY_OF_METHOD:
                raise ValueError(f"unknown method {m!r}; choose from {METHODS}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods contain duplicates: {self.methods}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be non-empty and distinct, got {self.seeds}")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {self.seeds}")
        for name in ("epochs", "batch_size", "width", "eval_samples", "pgd_steps", "attack_steps",
                     "topk", "density_steps", "insertion_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train", "max_test"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for name in ("lr", "step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("pgd_linf_eps", "pgd_l2_eps", "attack_eps", "density_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {self.attribution!r}")
        if self.model not in ("mlp", "cnn", "vit"):
            raise ValueError(f"model must be 'mlp', 'cnn' or 'vit', got {self.model!r}")
        for m, w in self.weights.items():
            if m not in PENALTY_OF_METHOD:
                raise ValueError(f"weight given for unknown method {m!r}")
            if not w >= 0:
                raise ValueError(f"weight for {m} must be >= 0, got {w}")
        for m, e in self.estimators.items():
            if m not in PENALTY_OF_METHOD:
                raise ValueError(f"estimator given for unknown method {m!r}")
            if e not in ESTIMATORS:
                raise ValueError(f"estimator for {m} must be one of {ESTIMATORS}, got {e!r}")
        if self.model == "vit":  # SDPA attention has no double backward / forward-mode AD on CPU
            bad = [m for m in self.methods if m != "none" and {**DEFAULT_ESTIMATORS, **self.estimators}[m] in ("exact", "jvp")]
            if bad:
                raise ValueError(f"model 'vit' uses scaled_dot_product_attention, which the exact/jvp estimators "
                                 f"cannot differentiate twice; use --estimator fd (or central) for {', '.join(bad)}")
        # Normalise containers so that equality and JSON round trips are exact.
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "weights", {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in self.weights.items()}})
        object.__setattr__(self, "estimators", {**DEFAULT_ESTIMATORS, **self.estimators})

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["methods"], d["seeds"] = list(self.methods), list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        d = dict(d)
        for k in ("methods", "seeds"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def replace(self, **changes) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)
