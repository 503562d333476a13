"""The confound rows end to end: `margreg-fast claims --scale-free --budgets` on the tiny digits fixture
(2 seeds, a few epochs), its files, and every generated verdict and sentence recomputed from the per-run
files by the intervals module directly."""
import json
import sys
from pathlib import Path

from margreg_fast.kit.cli import main
from margreg_fast.kit.experiments.budgets import ATTACK_BUDGETS, key
from margreg_fast.kit.experiments.intervals import paired, verdict
from margreg_fast.kit.experiments.scale import SCALE_FREE_TWINS, SCALE_KEYS

from .conftest import TINY_FLAGS

REPO = Path(__file__).resolve().parents[3]


def _flags(**change):
    flags = list(TINY_FLAGS)
    for name, value in change.items():
        flags[flags.index(f"--{name}") + 1] = value
    return flags


def _per_seed(out: Path, name: str, method: str, metric: str) -> dict:
    """{seed: value} of ``metric`` in the ``name`` files (scale.json, budgets.json) of ``method``'s runs."""
    got = {}
    for d in sorted((out / "blockmnist" / "runs").glob(f"{method}-seed*")):
        if (d / name).exists():
            got[int(d.name.split("-seed")[1].split("-")[0])] = json.loads((d / name).read_text())["scores"][metric]
    return got


def test_scale_free_and_budget_rows_end_to_end(tmp_path, one_thread):
    out = tmp_path / "claims"
    argv = ["claims", *_flags(epochs="3", **{"max-train": "300"}), "--seeds", "0", "1", "--schemes", "none", "mdr",
            "--no-spurious", "--scale-free", "--budgets", "--out", str(out)]
    assert main(argv) == 0
    claims = json.loads((out / "claims.json").read_text())
    assert claims["plan"]["scale_free"] and claims["plan"]["budgets"]
    for method in ("none", "mdr"):
        for name in ("scale.json", "budgets.json"):
            files = list((out / "blockmnist" / "runs").glob(f"{method}-seed*/{name}"))
            assert len(files) == 2 and all(json.loads(f.read_text())["wall_s"] > 0 for f in files)
    seeds = json.loads((out / "blockmnist" / "results_seeds.json").read_text())["runs"]
    assert all(set(SCALE_KEYS) <= set(r) and key("kendall_tau_random", 0.02) in r for r in seeds)
    # every scale-free verdict, recomputed from the per-run files
    rows = claims["scale_free"]
    twins = [(r["metric"], r["twin"]) for r in rows if r["twin"]]
    assert twins == [(m, t) for m in ("insertion_auc_paper", "insertion_auc_rom", "insertion_auc_prob", "density_shift")
                     for t in SCALE_FREE_TWINS[m]]
    for r in rows:
        if r["twin"] is None:
            assert r["scale_free"] == r["raw"]
            continue
        (cell,) = r["scale_free"]
        p = paired(_per_seed(out, "scale.json", "mdr", r["twin"]), _per_seed(out, "scale.json", "none", r["twin"]))
        assert cell["comparator"] == "none" and cell["diffs"] == list(p.diffs) and cell["verdict"] == verdict(p, r["better"])
    # the survival sentence of the density claim, from those verdicts
    density = [r for r in rows if r["metric"] == "density_shift"]
    raw = density[0]["raw"][0]["verdict"]
    free = [r["scale_free"][0]["verdict"] for r in density]
    word = ("was not SUPPORTED raw" if raw != "SUPPORTED" else
            "SURVIVES the logit scale" if all(v == "SUPPORTED" for v in free) else "does NOT survive the logit scale")
    table = (out / "claims_table.md").read_text()
    assert f"\"robust to density perturbations\", mdr against none: {word}" in table
    assert "| mdr − none: raw | mdr − none: scale-free |" in table
    # the budget rows and the sentence, from the per-run budget files
    for eps in ATTACK_BUDGETS:
        metric = key("kendall_tau", eps)
        (cell,) = next(r for r in claims["budgets"] if r["metric"] == metric)["versus"]
        p = paired(_per_seed(out, "budgets.json", "mdr", metric), _per_seed(out, "budgets.json", "none", metric))
        assert cell["diffs"] == list(p.diffs) and cell["verdict"] == verdict(p, 1)
    budgets = (out / "budgets.md").read_text()
    assert "mdr's saliency maps compared with none's are" in budgets and "| linf | 0.2 |" in budgets
    assert (out / "figures" / "budgets.png").stat().st_size > 0 and "## Attack budgets" in (out / "claims.md").read_text()
    # the README's table and sentence from this claims.json
    sys.path.insert(0, str(REPO))
    from benchmarks.readme_tables import claims_summary
    readme = claims_summary(claims)
    assert "| claim of the paper | mdr against none | scale-free |" in readme
    assert "the claims that survive are:" in readme
    kept, lost = readme.split("the claims that survive are: ")[1].split(". Every other")[0].split("; those that do not: ")
    named = '"robust to density perturbations" against none'
    assert (named in kept, named in lost) == (word.startswith("SURVIVES"), word.startswith("does NOT"))
    # resuming reads the cached files: the same object; without the flags the rows and files are left out
    assert main(argv + ["--report-only"]) == 0
    again = json.loads((out / "claims.json").read_text())
    assert again["scale_free"] == rows and again["budgets"] == claims["budgets"]
    assert main([a for a in argv if a not in ("--scale-free", "--budgets")] + ["--report-only"]) == 0
    plain = json.loads((out / "claims.json").read_text())
    assert "scale_free" not in plain and "budgets" not in plain and plain["claims"] == claims["claims"]
