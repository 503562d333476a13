"""PNG figures in the spirit of the paper's Figure 1 (matplotlib, Agg backend).

- ``attributions.png``: the same test inputs (top row) and each scheme's attribution map for them
  (one row per scheme, first seed), shown as |attribution| normalised per image, so where a model
  looks is comparable across schemes whatever its gradient scale.
- ``figure1.png``: the paper's Figure 1 like for like: one test "7" (the single-image panel of
  evaluation.py), the |attribution| maps of none / igr / mdr (first seed) on it (shown on the input's
  non-zero pixels only, as in the paper) titled with that image's ``leakage_paper``, and that image's
  insertion curves in the paper's units (one pixel per step, y = z_t(inserted) / z_t(x) clipped at 0)
  with their AUCs; the dataset means over seeds stand next to them, named as such.
- ``insertion.png``: the insertion-game curve of each scheme (mean over seeds), AUC in the legend;
  the curve is (z(x_f) - z(0)) / (z(x) - z(0)) averaged as in metrics.insertion_curve, so it can exceed 1.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .config import ExperimentConfig  # noqa: E402


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def attribution_figure(cfg: ExperimentConfig, results: list[dict], path: Path) -> None:
    seed = cfg.seeds[0]
    by_scheme = {r["scheme"]: r for r in results if r["seed"] == seed}
    inputs = np.asarray(by_scheme[cfg.schemes[0]]["figure"]["inputs"])
    n = len(inputs)
    rows = 1 + len(cfg.schemes)
    h, w = inputs.shape[1:]
    fig, axes = plt.subplots(rows, n, figsize=(1.1 * n * w / h * 1.6 + 0.8, 1.6 * rows), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(inputs[j], cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("input", rotation=0, ha="right", va="center")
    for i, scheme in enumerate(cfg.schemes, start=1):
        maps = np.abs(np.asarray(by_scheme[scheme]["figure"]["attributions"]))
        leak = by_scheme[scheme]["metrics"]["leakage"]
        for j in range(n):
            m = maps[j] / max(maps[j].max(), 1e-12)
            axes[i, j].imshow(m, cmap="hot", vmin=0, vmax=1)
        label = scheme if leak is None else f"{scheme}\nleak {leak:.2f}"
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{cfg.experiment}: |{cfg.attribution}| per scheme (seed {seed})")
    _save(fig, path)


def insertion_figure(cfg: ExperimentConfig, results: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for scheme in cfg.schemes:
        runs = [r for r in results if r["scheme"] == scheme]
        fractions = np.asarray(runs[0]["figure"]["insertion_fractions"])
        curve = np.asarray([r["figure"]["insertion_curve"] for r in runs], dtype=float).mean(axis=0)
        auc = _seed_mean(results, scheme, "insertion_auc")
        ax.plot(fractions, curve, marker="o", ms=3, label=f"{scheme} (AUC {'n/a' if auc is None else f'{auc:.3f}'})")
    ax.set_xlabel("fraction of pixels inserted (by attribution rank)")
    ax.set_ylabel("fraction of the target-logit change")
    ax.set_title(f"{cfg.experiment}: insertion game ({cfg.attribution})")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


FIGURE1_SCHEMES = ("none", "igr", "mdr")


def _seed_mean(results: list[dict], scheme: str, key: str) -> float | None:
    values = [r["metrics"][key] for r in results if r["scheme"] == scheme]
    return None if any(v is None for v in values) else float(np.mean(values))


def figure1(cfg: ExperimentConfig, results: list[dict], path: Path) -> None:
    """The single-image panel: the first seed's models on one test "7" (evaluation.single_image_panel);
    every number in the plot belongs to that image except the dataset means named as such."""
    schemes = [m for m in FIGURE1_SCHEMES if m in cfg.schemes] or list(cfg.schemes)
    seed = cfg.seeds[0]
    panels = {r["scheme"]: r.get("panel") for r in results if r["seed"] == seed}
    if any(panels.get(m) is None for m in schemes):
        return  # no image of the panel's class in this test split
    x = np.asarray(panels[schemes[0]]["input"])
    fig, axes = plt.subplots(1, len(schemes) + 2, figsize=(1.8 * (len(schemes) + 1) + 5.0, 3.8), layout="constrained",
                             gridspec_kw={"width_ratios": [1] * (len(schemes) + 1) + [3.2]})
    axes[0].imshow(x, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"test image {panels[schemes[0]]['index']}")
    for ax, scheme in zip(axes[1:], schemes):
        a = np.abs(np.asarray(panels[scheme]["attribution"]))
        shown = np.ma.masked_where(x == 0, a / max(a.max(), 1e-12))
        ax.imshow(np.zeros_like(x), cmap="gray", vmin=0, vmax=1)
        ax.imshow(shown, cmap="hot", vmin=0, vmax=1)
        leak, mean = panels[scheme].get("leakage_paper"), _seed_mean(results, scheme, "leakage_paper")
        ax.set_title(f"{scheme}\nleakage {_num(leak, '.2f')}\n(dataset mean {_num(mean, '.2f')})", fontsize=8)
    for ax in axes[:-1]:
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[-1]
    for scheme in schemes:
        curve = np.asarray(panels[scheme]["insertion_curve_paper"], dtype=float)  # None (undefined) -> nan
        auc, mean = panels[scheme]["insertion_auc_paper"], _seed_mean(results, scheme, "insertion_auc_paper")
        ax.plot(np.arange(len(curve)), curve,
                label=f"{scheme}: AUC {_num(auc, '.1f')} (dataset mean {_num(mean, '.1f')})")
    ax.set_xlabel("pixels inserted")
    ax.set_ylabel("z_t(inserted) / z_t(x)")
    ax.set_title("insertion game on this image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"One image, seed {seed}: |{cfg.attribution}|, leakage and insertion in the paper's units; "
                 f"dataset means over {len(cfg.seeds)} seed(s) x {cfg.eval_samples} images in brackets", fontsize=9)
    _save(fig, path)


def _num(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_figures(cfg: ExperimentConfig, results: list[dict], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "figure1.png", out_dir / "attributions.png", out_dir / "insertion.png"]
    figure1(cfg, results, paths[0])
    attribution_figure(cfg, results, paths[1])
    insertion_figure(cfg, results, paths[2])
    return paths
