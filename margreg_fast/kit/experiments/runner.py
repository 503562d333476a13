"""Train and evaluate every (seed, method) pair of an experiment, resumably, then write the reports.

Layout of the output directory::

    OUT/config.json                           the config; a restart with a different one is refused
    OUT/runs/<method>-seed<k>/checkpoint.pt   training state, rewritten atomically after each epoch
    OUT/runs/<method>-seed<k>/result.json     metrics of the finished run (written once, atomically)
    OUT/results.json, results.md, results_seeds.json, figures/*.png

``train`` fills the checkpoints, ``evaluate`` the result files and reports, ``experiment`` does
both run by run. A finished run is never recomputed; an unfinished one resumes from its last
checkpoint. The aggregate files are always rebuilt from the per-run result.json files, so an
interrupted-and-resumed experiment and an uninterrupted one produce identical results.json apart
from ``step_time_s``: that is the median wall time over all training steps of the run (the
checkpoint keeps the times of the steps done before an interruption), and wall time never repeats.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import load_json, save_json
from .config import ExperimentConfig
from .datasets import build_datasets
from .evaluation import evaluate_model
from .figures import write_figures
from .report import write_reports
from .training import CHECKPOINT_NAME, train_run

CONFIG_NAME = "config.json"
RESULT_NAME = "result.json"


def run_dir(out: Path, method: str, seed: int) -> Path:
    return Path(out) / "runs" / f"{method}-seed{seed}"


def claim_output_dir(out: Path, cfg: ExperimentConfig) -> None:
    """Create ``out`` for ``cfg``, or check that it already belongs to exactly this config."""
    out, path = Path(out), Path(out) / CONFIG_NAME
    if path.exists():
        if load_json(path) != cfg.to_dict():
            raise ValueError(f"{out} already holds a run with a different configuration; rerun the "
                             "original command to resume it, or choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    save_json(path, cfg.to_dict())


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
    return [(seed, method) for seed in cfg.seeds for method in cfg.methods]


def _process(cfg: ExperimentConfig, out: Path, *, train: bool, evaluate: bool, quiet: bool,
             device: str) -> list[dict]:
    results = []
    data_seed, data = None, None
    with deterministic(), tqdm(total=len(_runs(cfg)), desc=cfg.experiment, unit="run", disable=quiet,
                               dynamic_ncols=True) as bar:
        for seed, method in _runs(cfg):
            rdir = run_dir(out, method, seed)
            result_path = rdir / RESULT_NAME
            bar.set_postfix(method=method, seed=seed)
            if evaluate and result_path.exists():
                results.append(load_json(result_path))
            else:
                if data_seed != seed:
                    data_seed, data = seed, build_datasets(cfg, seed)
                if not train and not (rdir / CHECKPOINT_NAME).exists():
                    raise ValueError(f"{rdir} has no checkpoint; run `train` with the same options first")
                trained = train_run(cfg, method, seed, data[0], rdir, quiet=quiet, device=device,
                                    allow_training=train)
                if evaluate:
                    evaluated = evaluate_model(trained.model.cpu(), data[1], cfg, seed)
                    evaluated["metrics"]["step_time_s"] = trained.median_step_time
                    result = {"method": method, "seed": seed, **evaluated}
                    save_json(result_path, result)
                    results.append(result)
            bar.update(1)
    return results


def train_all(cfg: ExperimentConfig, out: Path, *, quiet: bool = False, device: str = "cpu") -> None:
    """Train (or resume) every run; checkpoints only, no evaluation."""
    claim_output_dir(out, cfg)
    _process(cfg, out, train=True, evaluate=False, quiet=quiet, device=device)


def _finish(cfg: ExperimentConfig, out: Path, results: list[dict]) -> dict:
    summary = write_reports(cfg, results, out)
    write_figures(cfg, results, Path(out) / "figures")
    return summary


def evaluate_all(out: Path, *, quiet: bool = False) -> dict:
    """Evaluate every finished run under ``out`` and write the reports; returns results.json content."""
    cfg = load_output_config(out)
    return _finish(cfg, out, _process(cfg, out, train=False, evaluate=True, quiet=quiet, device="cpu"))


def run_experiment(cfg: ExperimentConfig, out: Path, *, quiet: bool = False, device: str = "cpu") -> dict:
    """Train and evaluate run by run (resuming), write the reports and figures; return results.json content."""
    claim_output_dir(out, cfg)
    return _finish(cfg, out, _process(cfg, out, train=True, evaluate=True, quiet=quiet, device=device))
