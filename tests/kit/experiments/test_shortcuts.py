"""The two shortcuts in the claims plan: the robust square ("spurious") and the non-robust texture
("texture"), each task's own weights, their frontier over weights and its report, on the tiny fixture."""
import pytest
import torch

from margreg_fast.kit import metrics
from margreg_fast.kit.experiments.claims import SPURIOUS_SCHEMES, ClaimsPlan, run_claims, shortcut_frontier_rows
from margreg_fast.kit.experiments.claims_report import write_claims
from margreg_fast.kit.experiments.datasets import build_datasets
from margreg_fast.kit.experiments.runner import run_dir
from margreg_fast.kit.experiments.select import choose, select_weights
from margreg_fast.kit.experiments.training import train_run


def _plan(cfg, **kw):
    base = cfg.replace(schemes=("none", "mdr"), seeds=(0, 1), weights={"igr": 1.0, "joint": 0.1, "mdr": 1.0})
    return ClaimsPlan(base, grid=(3.0,), frontier_seeds=(0, 1), light=True, texture=True, shortcut_frontier=True,
                      shortcut_weights={"texture": {"mdr": 10.0}}, **kw)


def test_plan_has_both_tasks_their_own_weights_and_their_frontier(tiny_config):
    plan = _plan(tiny_config)
    keys = [p[:4] for p in plan.points()]
    assert len(keys) == len(set(keys))
    assert plan.experiment_config("texture").spurious_patch == "texture"
    assert plan.experiment_config("spurious").spurious_patch == "overlay"
    for task, mdr_weight in (("spurious", 1.0), ("texture", 10.0)):
        assert {(m, s) for e, m, w, s in keys if e == task and w == plan.experiment_config(task).weights[m]} == {
            (m, s) for m in SPURIOUS_SCHEMES for s in (0, 1)}
        assert (task, "mdr", mdr_weight, 0) in keys and (task, "mdr", 3.0, 1) in keys and (task, "joint", 3.0, 0) in keys
    with pytest.raises(ValueError, match="shortcut frontier"):
        ClaimsPlan(plan.config, texture=True, shortcut_frontier=True)
    with pytest.raises(ValueError, match="unknown tasks"):
        ClaimsPlan(plan.config, shortcut_weights={"blockmnist": {"mdr": 1.0}})


def test_tiny_shortcut_frontier_end_to_end(tiny_config, tmp_path, one_thread):
    plan = _plan(tiny_config)
    claims = run_claims(plan, tmp_path, quiet=True)
    assert not claims["missing"]
    rows = {(r["experiment"], r["metric"]): r for r in claims["claims"]}
    texture = rows[("texture", "acc_patch_disagrees")]["versus"][0]
    assert texture["comparator"] == "none" and len(texture["diffs"]) == 2
    frontier = shortcut_frontier_rows(plan, claims["records"])
    assert {(r["experiment"], r["scheme"], r["weight"]) for r in frontier} >= {
        ("texture", "mdr", 3.0), ("texture", "mdr", 10.0), ("spurious", "mdr", 1.0), ("spurious", "none", 0.0)}
    # a frontier point's mean and its paired difference, recomputed from the trained models
    row = next(r for r in frontier if (r["experiment"], r["scheme"], r["weight"]) == ("texture", "mdr", 3.0))
    assert row["selected"] is False
    acc = {}
    for method, weight in (("mdr", 3.0), ("none", 0.0)):
        cfg = plan.experiment_config("texture")
        cfg = cfg if method == "none" else cfg.replace(weights={**cfg.weights, method: weight})
        for seed in (0, 1):
            train, test = build_datasets(cfg, seed)
            model = train_run(cfg, method, seed, train,
                              run_dir(tmp_path / "texture", cfg, method, seed), quiet=True, allow_training=False).model
            disagree = test.group % 10 != test.y
            acc[method, seed] = metrics.accuracy(model, test.x[disagree], test.y[disagree])
    assert row["acc_patch_disagrees"] == pytest.approx((acc["mdr", 0] + acc["mdr", 1]) / 2, abs=1e-12)
    diff = row["acc_patch_disagrees_vs_none"]
    assert diff["mean"] == pytest.approx(sum(acc["mdr", s] - acc["none", s] for s in (0, 1)) / 2, abs=1e-12)
    # the report: the table (both tasks, the selected weights marked) and the figure
    write_claims(plan, claims, tmp_path)
    table = (tmp_path / "shortcut_frontier.md").read_text()
    assert "| texture | mdr | 10 (selected) |" in table and "| spurious | mdr | 1 (selected) |" in table
    assert (tmp_path / "figures" / "shortcut_frontier.png").stat().st_size > 0
    assert "shortcut_frontier" in (tmp_path / "claims.json").read_text()
    # resuming trains nothing
    assert run_claims(plan, tmp_path, quiet=True)["records"] == claims["records"]


def test_texture_weights_are_chosen_on_its_own_validation_split(tiny_config, tmp_path, one_thread):
    cfg = tiny_config.replace(experiment="spurious", spurious_patch="texture", seeds=(0,))
    got = select_weights(cfg, [1.0, 10.0], tmp_path, quiet=True)
    assert got["config"]["split"] == "validation" and got["config"]["spurious_patch"] == "texture"
    assert "disagree_error" in got["rule"]
    ref = got["reference_none"]["clean_acc"]
    for method, rows in got["validation"].items():
        table = {r["weight"]: r for r in rows}
        assert all(r["disagree_error"] is not None and r["leakage_paper"] is None for r in rows)
        assert got["weights"][method] == choose(ref, table, "disagree_error")
        fine = [w for w, r in table.items() if r["clean_acc"] >= ref - 0.01]
        if fine:  # by hand: the lowest disagreeing error among the accurate weights
            assert table[got["weights"][method]]["disagree_error"] == min(table[w]["disagree_error"] for w in fine)
    assert "val disagree_error" in (tmp_path / "selection.md").read_text()


def test_cli_selects_each_tasks_weights_then_runs_the_shortcuts_alone(tmp_path, one_thread):
    """`select spurious --spurious-patch texture|overlay --write FILE`, then `claims --shortcuts-only
    --texture --shortcut-frontier --shortcut-weights-file ...`: the two tasks trained at their selected
    weights, no BlockMNIST run, the frontier table written, and each task's claims rows."""
    import json

    from margreg_fast.kit.cli import main

    from .conftest import TINY_FLAGS

    files = {}
    for task, patch in (("spurious", "overlay"), ("texture", "texture")):
        files[task] = tmp_path / f"{task}.json"
        assert main(["select", "spurious", "--spurious-patch", patch, "--grid", "1", "10", "--schemes", "none", "mdr",
                     "--out", str(tmp_path / f"select-{task}"), "--write", str(files[task]), *TINY_FLAGS]) == 0
    out = tmp_path / "claims"
    assert main(["claims", "--schemes", "none", "mdr", "--seeds", "0", "1", "--shortcuts-only", "--texture",
                 "--shortcut-frontier", "--grid", "3", "--frontier-seeds", "0", "1", "--out", str(out),
                 "--shortcut-weights-file", *(f"{t}={f}" for t, f in files.items()), *TINY_FLAGS]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["figures", "spurious", "texture"]
    saved = json.loads((out / "claims.json").read_text())
    for task, f in files.items():
        chosen = json.loads(f.read_text())["weights"]["mdr"]
        assert saved["plan"]["shortcut_weights"][task]["mdr"] == chosen
        assert any(r["experiment"] == task and r["scheme"] == "mdr" and r["weight"] == chosen for r in saved["records"])
    assert {r["experiment"] for r in saved["claims"]} == {"spurious", "texture"}
    assert (out / "shortcut_frontier.md").exists() and not (out / "frontier.md").exists()
