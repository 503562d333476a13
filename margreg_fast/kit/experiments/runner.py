"""Train and evaluate every (seed, scheme) pair of an experiment, resumably, then write the reports.

Layout of the output directory::

    OUT/config.json                                 the config of the latest command
    OUT/runs/<scheme>-seed<k>-<key>/checkpoint.pt   training state, rewritten atomically after each epoch
    OUT/runs/<scheme>-seed<k>-<key>/result.json     metrics of the finished run (written once, atomically)
    OUT/results.json, results.md, results_seeds.json, figures/*.png

<key> is ``ExperimentConfig.run_key(scheme)``, a digest of every setting the run depends on, so a
run is only ever resumed or reused under exactly its own settings: rerunning with, say, another mdr
estimator retrains the mdr runs and reuses the others; runs of other settings stay on disk unused.

``train`` fills the checkpoints, ``evaluate`` the result files and reports, ``experiment`` does
both run by run (``jobs`` > 1: that many runs at a time, each in its own process; every run seeds
itself, so the numbers do not depend on ``jobs``). A finished run is never recomputed; an unfinished one resumes from its last
checkpoint. The aggregate files are always rebuilt from the per-run result.json files, so an
interrupted-and-resumed experiment and an uninterrupted one produce identical results.json apart
from ``step_time_s``: that is the median wall time over all training steps of the run (the
checkpoint keeps the times of the steps done before an interruption), and wall time never repeats.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import load_json, save_json
from .config import ExperimentConfig
from .datasets import build_datasets
from .evaluation import evaluate_model
from .figures import write_figures
from .parallel import run_tasks
from .report import write_reports
from .training import CHECKPOINT_NAME, train_run

CONFIG_NAME = "config.json"
RESULT_NAME = "result.json"


def run_dir(out: Path, cfg: ExperimentConfig, scheme: str, seed: int) -> Path:
    return Path(out) / "runs" / f"{scheme}-seed{seed}-{cfg.run_key(scheme)}"


def claim_output_dir(out: Path, cfg: ExperimentConfig) -> None:
    """Create ``out`` if needed and record ``cfg`` as its config (read by ``evaluate``)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    save_json(Path(out) / CONFIG_NAME, cfg.to_dict())


def load_output_config(out: Path) -> ExperimentConfig:
    path = Path(out) / CONFIG_NAME
    if not path.exists():
        raise ValueError(f"{out} holds no {CONFIG_NAME}; run `train` or `experiment` with --out {out} first")
    return ExperimentConfig.from_dict(load_json(path))


@contextmanager
def deterministic():
    """Deterministic kernels wherever torch has them (warn_only: a few ops have no such mode), restoring
    the caller's setting afterwards."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _runs(cfg: ExperimentConfig):
    return [(seed, scheme) for seed in cfg.seeds for scheme in cfg.schemes]


_DATA_CACHE: dict = {}


#: Settings the datasets do not depend on (left out of the cache key, so that a worker running many
#: schemes and weights builds each seed's data once).
_NOT_DATA = ("schemes", "seeds", "weights", "estimators", "step")


def _datasets(cfg: ExperimentConfig, seed: int):
    """build_datasets(cfg, seed), remembering the last one built in this process."""
    key = (repr({k: v for k, v in cfg.to_dict().items() if k not in _NOT_DATA}), seed)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = build_datasets(cfg, seed)
    return _DATA_CACHE[key]


def _one_run(cfg: ExperimentConfig, out: Path, seed: int, scheme: str, *, train: bool, evaluate: bool, quiet: bool,
             device: str) -> dict | None:
    """Train (or resume, or with ``train=False`` only load) one run; evaluate it if asked and save its
    result.json. Returns the result (None when not evaluating). Everything random in it is seeded
    from ``seed``, so it gives the same numbers in any process and in any order."""
    rdir = run_dir(out, cfg, scheme, seed)
    result_path = rdir / RESULT_NAME
    if evaluate and result_path.exists():
        return load_json(result_path)
    if not train and not (rdir / CHECKPOINT_NAME).exists():
        raise ValueError(f"{rdir} has no checkpoint; run `train` with the same options first")
    with deterministic():
        train_set, eval_set = _datasets(cfg, seed)
        trained = train_run(cfg, scheme, seed, train_set, rdir, quiet=quiet, device=device, allow_training=train)
        if not evaluate:
            return None
        evaluated = evaluate_model(trained.model.cpu(), eval_set, cfg, seed)
    evaluated["metrics"]["step_time_s"] = trained.median_step_time
    result = {"scheme": scheme, "seed": seed, **evaluated}
    save_json(result_path, result)
    return result


def _process(cfg: ExperimentConfig, out: Path, *, train: bool, evaluate: bool, quiet: bool, device: str,
             jobs: int = 1) -> list[dict]:
    """Every run of ``cfg``, ``jobs`` at a time; results in (seed, scheme) order. With several jobs the
    per-epoch bars of the workers would interleave, so only the run count is shown."""
    runs = _runs(cfg)
    kw = dict(train=train, evaluate=evaluate, device=device, quiet=quiet or jobs > 1)
    results = run_tasks(_one_run, [((cfg, out, seed, scheme), kw) for seed, scheme in runs], jobs=jobs,
                        desc=cfg.experiment, quiet=quiet, names=[f"{m} seed {s}" for s, m in runs])
    return [r for r in results if r is not None]


def train_all(cfg: ExperimentConfig, out: Path, *, quiet: bool = False, device: str = "cpu", jobs: int = 1) -> None:
    """Train (or resume) every run; checkpoints only, no evaluation."""
    claim_output_dir(out, cfg)
    _process(cfg, out, train=True, evaluate=False, quiet=quiet, device=device, jobs=jobs)


def _finish(cfg: ExperimentConfig, out: Path, results: list[dict]) -> dict:
    summary = write_reports(cfg, results, out)
    write_figures(cfg, results, Path(out) / "figures")
    return summary


def evaluate_all(out: Path, *, quiet: bool = False, jobs: int = 1) -> dict:
    """Evaluate every finished run under ``out`` and write the reports; returns results.json content."""
    cfg = load_output_config(out)
    return _finish(cfg, out, _process(cfg, out, train=False, evaluate=True, quiet=quiet, device="cpu", jobs=jobs))


def run_experiment(cfg: ExperimentConfig, out: Path, *, quiet: bool = False, device: str = "cpu",
                   jobs: int = 1) -> dict:
    """Train and evaluate run by run (resuming; ``jobs`` runs at a time in separate processes), write the
    reports and figures; return results.json content."""
    claim_output_dir(out, cfg)
    return _finish(cfg, out, _process(cfg, out, train=True, evaluate=True, quiet=quiet, device=device, jobs=jobs))
