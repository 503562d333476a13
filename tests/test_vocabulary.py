"""One word per concept: the **estimator** (``estimator=``), the **penalty kind** (``penalty_kind=``) and, in
the experiment kit, the **training scheme** (``--schemes``). The names of 0.2 (``method=``, ``penalty=``,
``DEFAULT_METHOD``, ``METHODS``) still work until 0.4.0, each with a FutureWarning naming the new one.
"""
import argparse
import dataclasses
import inspect
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import margreg_fast
from margreg_fast import (DEFAULT_ESTIMATOR, ESTIMATORS, MarginalDensityRegularizer, input_gradient_penalty,
                          marginal_density_penalty, sweep_weights)

ROOT = Path(__file__).resolve().parents[1]
OLD_KEYWORDS = {"method", "penalty"}


def _exported_callables():
    for name in margreg_fast.__all__:
        obj = getattr(margreg_fast, name)
        if inspect.isfunction(obj) or (inspect.isclass(obj) and not issubclass(obj, (BaseException, tuple))):
            yield name, obj


def test_no_exported_callable_takes_an_old_keyword():
    checked = []
    for name, obj in _exported_callables():
        params = set(inspect.signature(obj).parameters)
        assert not params & OLD_KEYWORDS, f"margreg_fast.{name} still takes {sorted(params & OLD_KEYWORDS)}"
        checked.append(name)
    assert {"MarginalDensityRegularizer", "marginal_density_penalty", "input_gradient_penalty",
            "sweep_weights"} <= set(checked)
    assert "estimator" in inspect.signature(MarginalDensityRegularizer).parameters
    assert "penalty_kind" in inspect.signature(input_gradient_penalty).parameters


def test_no_exported_name_says_method_or_penalties():
    assert not [n for n in margreg_fast.__all__ if "METHOD" in n.upper() or n == "PENALTIES"]
    assert margreg_fast.PENALTY_KINDS == ("marginal", "conditional", "joint")


def test_the_docs_and_readme_use_the_new_keywords():
    """No ``method=`` / ``penalty=`` keyword (of the library) and no ``--methods`` (of the kit) in the prose."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    old = re.compile(r"(?<![\w.])(method|penalty)=|--methods\b")
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in pages
             for i, line in enumerate(p.read_text().splitlines(), 1) if old.search(line)]
    assert not found, "\n".join(found)


def test_the_kit_says_scheme():
    """The kit's config, its names and its command line call a training scheme a scheme."""
    from margreg_fast.kit.cli import build_parser
    from margreg_fast.kit.experiments import config

    fields = {f.name for f in dataclasses.fields(config.ExperimentConfig)}
    assert "schemes" in fields and not any("method" in f for f in fields), fields
    assert not [n for n in vars(config) if "method" in n.lower()]
    help_text = "\n".join(_subcommand_help(build_parser()))
    assert "--schemes" in help_text and "--methods" not in help_text and "METHOD" not in help_text
    makefile = (ROOT / "Makefile").read_text()
    assert "--methods" not in makefile


def _subcommand_help(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub.format_help()


def test_the_kits_old_flag_warns_and_sets_the_schemes():
    from margreg_fast.kit.cli import build_parser

    argv = ["experiment", "blockmnist", "--out", "x"]
    with pytest.warns(FutureWarning, match="--methods is renamed --schemes"):
        old = build_parser().parse_args([*argv, "--methods", "none", "mdr@0.25"])
    assert old.schemes == ["none", "mdr@0.25"] == build_parser().parse_args([*argv, "--schemes", "none", "mdr@0.25"]).schemes


def test_the_committed_results_are_in_the_new_vocabulary():
    """Result files of the kit name the scheme "scheme" (scripts/migrate_results_vocabulary.py rewrites older ones)."""
    script = ROOT / "scripts" / "migrate_results_vocabulary.py"
    done = subprocess.run([sys.executable, str(script), "--check", str(ROOT / "docs" / "results"),
                           str(ROOT / "margreg_fast" / "kit" / "configs")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_migration_renames_keys_and_headers_only(tmp_path):
    old = {"plan": {"config": {"methods": ["none", "mdr"], "estimators": {"mdr": "rfd"}}},
           "records": [{"method": "mdr%4", "weight": 1.0}], "cheaper_methods": ["mdr@0.5"]}
    (tmp_path / "claims.json").write_text(json.dumps(old, indent=2) + "\n")
    (tmp_path / "t.md").write_text("Each method, by the percentile method.\n\n| metric | method | mean |\n|---|---|---:|\n"
                                   "| acc | mdr | 0.9 |\n")
    script = ROOT / "scripts" / "migrate_results_vocabulary.py"
    for _ in range(2):  # the second run changes nothing
        subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)
        assert json.loads((tmp_path / "claims.json").read_text()) == {
            "plan": {"config": {"schemes": ["none", "mdr"], "estimators": {"mdr": "rfd"}}},
            "records": [{"scheme": "mdr%4", "weight": 1.0}], "cheaper_schemes": ["mdr@0.5"]}
        assert (tmp_path / "t.md").read_text() == ("Each method, by the percentile method.\n\n| metric | scheme | mean |\n"
                                                   "|---|---|---:|\n| acc | mdr | 0.9 |\n")


# --- the old names keep working, with a FutureWarning that names the new one


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0])


def test_old_keywords_of_the_penalty_functions_warn_and_give_the_same_value():
    model, (x, y) = _net(), _data()
    with pytest.warns(FutureWarning, match=r"method=.*renamed estimator="):
        old = marginal_density_penalty(model, x, method="exact")
    assert torch.equal(old, marginal_density_penalty(model, x, estimator="exact"))
    with pytest.warns(FutureWarning, match=r"penalty=.*renamed penalty_kind="):
        old = input_gradient_penalty(model, x, y, penalty="joint", estimator="exact")
    assert torch.equal(old, input_gradient_penalty(model, x, y, penalty_kind="joint", estimator="exact"))


def test_old_keywords_and_attributes_of_the_regulariser():
    with pytest.warns(FutureWarning) as record:
        reg = MarginalDensityRegularizer(0.5, method="central", penalty="conditional")
    messages = [str(w.message) for w in record]
    assert any("estimator=" in m for m in messages) and any("penalty_kind=" in m for m in messages), messages
    assert (reg.estimator, reg.penalty_kind) == ("central", "conditional")
    with pytest.warns(FutureWarning, match="MarginalDensityRegularizer.estimator"):
        assert reg.method == "central"
    with pytest.warns(FutureWarning, match="MarginalDensityRegularizer.penalty_kind"):
        assert reg.penalty == "conditional"
    model, (x, y) = _net(), _data()
    new = MarginalDensityRegularizer(0.5, estimator="central", penalty_kind="conditional")
    assert torch.equal(reg(model, x, y)[0], new(model, x, y)[0])


def test_the_new_names_alone_do_not_warn():
    model, (x, y) = _net(), _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        MarginalDensityRegularizer(0.5, estimator="fd", penalty_kind="joint")(model, x, y)
        input_gradient_penalty(model, x, y, penalty_kind="joint", estimator="exact")


@pytest.mark.parametrize("call", [
    lambda: MarginalDensityRegularizer(1.0, method="fd", estimator="fd"),
    lambda: MarginalDensityRegularizer(1.0, penalty="joint", penalty_kind="joint"),
    lambda: marginal_density_penalty(_net(), _data()[0], method="fd", estimator="fd"),
    lambda: input_gradient_penalty(_net(), *_data(), penalty="joint", penalty_kind="joint"),
    lambda: sweep_weights(_net, [], [], method="fd", estimator="fd", out_dir="unused"),
], ids=["regulariser-estimator", "regulariser-kind", "marginal", "input-gradient", "sweep"])
def test_both_the_old_and_the_new_keyword_raise(call):
    with pytest.raises(TypeError, match="old name of"):
        call()


def test_the_sweeps_old_keyword_reaches_its_checks(tmp_path):
    with pytest.warns(FutureWarning, match="renamed estimator="), pytest.raises(ValueError, match="estimator"):
        sweep_weights(_net, [], [], method="no-such-estimator", out_dir=tmp_path)


def test_old_module_names_warn():
    with pytest.warns(FutureWarning, match="DEFAULT_ESTIMATOR"):
        assert margreg_fast.DEFAULT_METHOD == DEFAULT_ESTIMATOR
    with pytest.warns(FutureWarning, match=r"tuple\(margreg_fast.ESTIMATORS\)"):
        assert margreg_fast.METHODS == tuple(ESTIMATORS)
    assert "METHODS" not in margreg_fast.__all__ and "DEFAULT_METHOD" not in margreg_fast.__all__
