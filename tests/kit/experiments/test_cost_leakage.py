"""benchmarks/cost_leakage.py pairs each form of mdr with its benchmark row and its claims numbers."""
import csv
import json

import pytest

from benchmarks import cost_leakage
from margreg_fast.kit.experiments.claims import ClaimsPlan, run_claims
from margreg_fast.kit.experiments.claims_report import write_claims


def test_cost_leakage_rows_figure_and_table(tmp_path, tiny_config, one_thread):
    plan = ClaimsPlan(tiny_config.replace(schemes=("none", "mdr"), seeds=(0, 1), weights={"mdr": 1.0}),
                      fractions=(0.5,), lazy=(2,), spurious=False)
    write_claims(plan, run_claims(plan, tmp_path, quiet=True), tmp_path)
    claims = json.loads((tmp_path / "claims.json").read_text())
    bench = tmp_path / "train_step_claims.csv"
    ratios = {"plain": 1.0, "rfd": 2.7, "rfd@0.5": 1.9, "rfd%2": 1.8, "floor": 2.5}
    with open(bench, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["model", "mode", "method", "status", "time_ratio"])
        w.writeheader()
        w.writerows([{"model": "papercnn", "mode": "eager", "method": m, "status": "ok", "time_ratio": r}
                     for m, r in ratios.items()]
                    + [{"model": "cnn", "mode": "eager", "method": "rfd", "status": "ok", "time_ratio": 9.0}])
    rows = cost_leakage.points(claims, cost_leakage.step_costs(bench))
    assert [(r["scheme"], r["cost"]) for r in rows] == [("none", 1.0), ("mdr", 2.7), ("mdr@0.5", 1.9), ("mdr%2", 1.8)]
    for r in rows:
        seeds = [x["scores"]["leakage_paper"] for x in claims["records"] if x["scheme"] == r["scheme"] and x["full"]]
        assert r["seeds"] == 2 and r["leakage_paper"] == pytest.approx(sum(seeds) / 2)
    cheaper = {c["scheme"]: c for c in claims["cheaper"]}
    half = next(r for r in rows if r["scheme"] == "mdr@0.5")
    assert half["versus"]["leakage_paper"] == next(row for row in cheaper["mdr@0.5"]["rows"]
                                                   if row["metric"] == "leakage_paper")["versus"][0]
    assert half["versus"]["leakage_paper"]["comparator"] == "mdr"
    text = cost_leakage.write_table(rows, claims, tmp_path / "cost_leakage.md")
    assert "| mdr%2 | 1.8 | 0.667 |" in text and cheaper["mdr%2"]["keeps_leakage_cut"]["verdict"] in text
    cost_leakage.write_figure(rows, tmp_path / "cost_leakage.png")
    assert (tmp_path / "cost_leakage.png").stat().st_size > 10_000
