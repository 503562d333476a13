"""The claims instrument on the tiny fixture: its plan, a full run, its report and its resumption."""
import json

import pytest
import torch

from margreg_fast.kit.experiments.claims import CLAIMS, ClaimsPlan, run_claims
from margreg_fast.kit.experiments.claims_report import stability_markdown, write_claims
from margreg_fast.kit.experiments.evaluation import LIGHT_KEYS, light_scores
from margreg_fast.kit.experiments.runner import run_dir
from margreg_fast.kit.experiments.training import train_run
from margreg_fast.kit.experiments.datasets import build_datasets


def _plan(cfg, **kw):
    base = cfg.replace(schemes=("none", "igr", "joint", "mdr"), seeds=(0, 1), weights={"igr": 1.0, "joint": 0.1, "mdr": 1.0})
    return ClaimsPlan(base, **{"grid": (1.0, 10.0), "frontier_seeds": (0, 1), **kw})


def test_plan_runs_each_point_once(tiny_config):
    points = _plan(tiny_config, fractions=(0.25,), lazy=(4,)).points()
    keys = [p[:4] for p in points]
    assert len(keys) == len(set(keys))
    full = {p[:4] for p in points if p[4]}
    assert ("blockmnist", "mdr", 1.0, 0) in full and ("blockmnist", "mdr@0.25", 1.0, 1) in full
    assert ("blockmnist", "mdr%4", 1.0, 1) in full and ("blockmnist", "mdr%4", 10.0, 1) in keys
    assert ("blockmnist", "mdr-exact", 1.0, 0) in keys and ("blockmnist", "mdr-exact", 1.0, 0) not in full
    assert ("blockmnist", "joint", 10.0, 1) in keys and ("blockmnist", "joint", 0.1, 1) in full
    assert sum(p[1] == "none" and p[0] == "blockmnist" for p in points) == 2  # one per seed, reused by the frontier
    assert {p[1] for p in points if p[0] == "spurious"} == {"none", "igr", "joint", "mdr"}


@pytest.mark.parametrize("change, words", [
    ({"fractions": (1.0,)}, "fractions"), ({"grid": (1.0, 1.0)}, "grid"), ({"frontier_seeds": ()}, "frontier"),
    ({"lazy": (1,)}, "lazy"), ({"lazy": (4, 4)}, "lazy"),
])
def test_plan_rejects_bad_settings(tiny_config, change, words):
    with pytest.raises(ValueError, match=words):
        _plan(tiny_config, **change)
    with pytest.raises(ValueError, match="compare mdr"):
        ClaimsPlan(tiny_config.replace(schemes=("none", "igr")))


def test_tiny_claims_run_report_and_resume(tmp_path, tiny_config, one_thread):
    plan = _plan(tiny_config, fractions=(0.5,), lazy=(2,), grid=(10.0,))
    early = run_claims(plan, tmp_path, quiet=True, train=False)  # nothing finished yet: all missing
    assert not early["records"] and len(early["missing"]) == len(plan.points())
    claims = run_claims(plan, tmp_path, quiet=True)
    assert not claims["missing"]
    text = write_claims(plan, claims, tmp_path)
    rows = claims["claims"]
    assert [(r["experiment"], r["metric"]) for r in rows] == [(c.experiment, c.metric) for c in CLAIMS
                                                               if c.experiment in plan.experiments]
    for row in rows:
        assert [c["comparator"] for c in row["versus"]] == ["none", "igr", "joint"]
        for c in row["versus"]:
            assert len(c["diffs"]) == 2 and c["verdict"] in ("SUPPORTED", "CONTRADICTED", "INCONCLUSIVE")
            if c["low"] is not None:
                assert c["low"] <= c["mean"] <= c["high"]
    assert "| less feature leakage | blockmnist: leakage_paper ↓ |" in text and "## Weight frontier" in text
    assert "Single image: test image" in text
    saved = json.loads((tmp_path / "claims.json").read_text())
    assert saved["claims"] == rows and len(saved["frontier"]) == 1 + 6 * 2  # none, then 10 and the selected weight
    assert [c["scheme"] for c in claims["cheaper"]] == ["mdr@0.5", "mdr%2"]
    for cheaper in claims["cheaper"]:
        assert f"**{cheaper['scheme']}**" in text
        assert [c["comparator"] for c in cheaper["rows"][0]["versus"]] == ["mdr", "none"]
        assert cheaper["keeps_leakage_cut"]["verdict"] in ("SUPPORTED", "CONTRADICTED", "INCONCLUSIVE")
    mdr, half, lazy = (next(r for r in claims["results"] if (r["scheme"], r["seed"]) == (m, 0))
                       for m in ("mdr", "mdr@0.5", "mdr%2"))
    assert len({r["metrics"]["leakage_paper"] for r in (mdr, half, lazy)}) == 3  # three training objectives
    for name in ("figures/frontier.png", "blockmnist/figures/figure1.png", "blockmnist/results.md"):
        assert (tmp_path / name).exists(), name
    # a frontier point read from a full run scores what light_scores gives for the same model
    cfg = plan.experiment_config("blockmnist")
    train, test = build_datasets(cfg, 0)
    model = train_run(cfg, "mdr", 0, train, run_dir(tmp_path / "blockmnist", cfg, "mdr", 0), quiet=True).model
    full = next(r for r in claims["records"] if (r["scheme"], r["weight"], r["seed"], r["full"]) == ("mdr", 1.0, 0, True))
    light = light_scores(model, test, cfg)
    assert {k: light[k] for k in LIGHT_KEYS} == {k: full["scores"][k] for k in LIGHT_KEYS}
    # its true penalty is the exact R of that model on the evaluated images, by plain autograd
    x = test.x[:cfg.eval_samples].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.logsumexp(model(x), dim=1).sum(), x)
    assert full["scores"]["marginal_penalty"] == pytest.approx(g.flatten(1).pow(2).sum(1).mean().item(), rel=1e-6)
    # the default estimator against the exact penalty at mdr's weight: leakage and accuracy (the frontier's
    # light runs), paired over the same seeds
    estimator = {r["metric"]: r["versus"][0] for r in claims["estimator"]}
    assert {"leakage_paper", "clean_acc", "marginal_penalty"} <= set(estimator) and "pgd_linf_acc" not in estimator
    assert estimator["leakage_paper"]["comparator"] == "mdr-exact" and len(estimator["leakage_paper"]["diffs"]) == 2
    assert "## The default estimator against the exact penalty" in text and "model cnn with relu" in text
    assert "{" not in text  # every placeholder of the report filled in
    # every point records the wall time its command spent on it; the report sums them
    walls = [r["wall_s"] for r in claims["records"]]
    assert all(w is not None and w > 0 for w in walls) and len(walls) == len(plan.points())
    hours = f"{sum(walls) / 3600:.2f} worker-hours"
    assert hours in text and hours in (tmp_path / "compute.md").read_text()
    # and the command logged its own wall time, which covers every point's
    (logged,) = claims["invocations"]
    assert logged["wall_s"] >= max(walls) and logged["unfinished"] == 0 and logged["points"] == len(walls)
    assert "Commands that trained into this directory (1," in text
    # resuming recomputes nothing (the wall times stay) and reproduces everything; so does a report
    # from the finished runs
    again = run_claims(plan, tmp_path, quiet=True)
    assert again["records"] == claims["records"] and again["claims"] == rows and len(again["invocations"]) == 2
    assert run_claims(plan, tmp_path, quiet=True, train=False)["claims"] == rows
    table = stability_markdown(saved, again, "itself")
    assert "| no |" not in table and table.count("| yes |") >= len(rows)
    # the light rerun scores accuracies and leakage only, each equal to the full evaluation's
    light = run_claims(ClaimsPlan(plan.config.replace(schemes=("none", "mdr")), spurious=False, light=True),
                       tmp_path / "light", quiet=True)
    assert not light["results"] and all(not r["full"] for r in light["records"])
    leak = {r["metric"]: r for r in light["claims"]}["leakage_paper"]["versus"][0]
    assert leak["diffs"] == {r["metric"]: r for r in rows}["leakage_paper"]["versus"][0]["diffs"]
    assert {r["metric"]: r for r in light["claims"]}["pgd_linf_acc"]["versus"][0]["mean"] is None
    # a full plan's report over those light runs uses their scores and lists them as not fully evaluated
    report = run_claims(ClaimsPlan(plan.config.replace(schemes=("none", "mdr")), spurious=False), tmp_path / "light",
                        quiet=True, train=False)
    assert {r["metric"]: r for r in report["claims"]}["leakage_paper"]["versus"][0]["diffs"] == leak["diffs"]
    assert len(report["missing"]) == 4 and all(m["full"] for m in report["missing"])
