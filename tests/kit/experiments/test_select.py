"""Weight selection: the fixed rule, and a tiny run that scores on validation data only."""
import json

import pytest

from margreg_fast.kit.experiments.select import SELECTED_SCHEMES, choose, select_weights


def _s(acc, leak):
    return {"clean_acc": acc, "leakage_paper": leak, "insertion_auc_paper": 0.0}


def test_rule_lowest_leakage_within_one_point_else_most_accurate():
    scores = {1.0: _s(0.95, 5.0), 3.0: _s(0.942, 3.0), 10.0: _s(0.93, 1.0)}
    assert choose(0.95, scores) == 3.0   # 10 loses 2 points, 3 loses 0.8
    assert choose(0.99, scores) == 1.0   # nothing within a point: the most accurate
    assert choose(0.95, {1.0: _s(0.95, 2.0), 3.0: _s(0.95, 2.0)}) == 1.0  # ties: the smaller weight


def test_tiny_selection_writes_every_point_and_the_weights(tmp_path, tiny_config):
    got = select_weights(tiny_config, [1.0, 10.0], tmp_path, quiet=True)
    assert set(got["weights"]) == {*SELECTED_SCHEMES, "mdr-exact"} and got["weights"]["mdr-exact"] == got["weights"]["mdr"]
    assert got["grid"] == [1.0, 10.0] and got["config"]["split"] == "validation"
    assert all(len(rows) == 2 for rows in got["validation"].values())
    assert json.loads((tmp_path / "selection.json").read_text()) == got
    assert (tmp_path / "selection.md").read_text().count("**yes**") == len(SELECTED_SCHEMES)
    with pytest.raises(ValueError, match="grid"):
        select_weights(tiny_config, [1.0, 1.0], tmp_path / "bad", quiet=True)
