"""pgd-at and trades as the kit's training schemes: names, weights, per-scheme epochs, run keys, a tiny run
that trains above chance and raises PGD accuracy over none, and the claims rows that compare with them."""
import dataclasses

import pytest

from margreg_fast.kit.adversarial import TRADES, PGDTraining
from margreg_fast.kit.attacks import PGD
from margreg_fast.kit.cli import build_parser, config_from_args
from margreg_fast.kit.experiments.claims import ClaimsPlan, claim_rows
from margreg_fast.kit.experiments.claims_report import adversarial_section
from margreg_fast.kit.experiments.config import SCHEMES, ExperimentConfig, parse_scheme
from margreg_fast.kit.experiments.datasets import build_datasets
from margreg_fast.kit.experiments.training import step_objective, train_run
from margreg_fast.kit.metrics import predict_logits


def test_names_weights_and_objectives():
    assert "pgd-at" not in SCHEMES and "trades" not in SCHEMES  # opt-in: the default runs are unchanged
    assert ExperimentConfig().schemes == SCHEMES
    for bad in ("pgd-at@0.5", "trades%4"):
        with pytest.raises(ValueError, match="regularised scheme"):
            parse_scheme(bad)
    cfg = ExperimentConfig(schemes=("none", "pgd-at", "trades"), pgd_linf_eps=0.2, pgd_steps=8)
    assert cfg.weights["trades"] == 6.0 and cfg.weights["pgd-at"] == 0.0
    pgd, trades = step_objective(cfg, "pgd-at")(0), step_objective(cfg, "trades")(5)
    assert isinstance(pgd, PGDTraining) and (pgd.eps, pgd.steps, pgd.alpha) == (0.2, 8, pytest.approx(2.5 * 0.2 / 8))
    assert isinstance(trades, TRADES) and (trades.eps, trades.steps, trades.beta) == (0.2, 8, 6.0)
    assert step_objective(cfg.replace(weights={"trades": 1.0}), "trades")(0).beta == 1.0
    with pytest.raises(ValueError, match="pgd-at takes no weight"):
        cfg.replace(weights={"pgd-at": 1.0})


def test_scheme_epochs_key_only_their_scheme():
    """--scheme-epochs changes the run key (and the epochs) of the schemes it names only, and a table
    naming the default epochs is the same run; the keys of existing runs do not move."""
    base = ExperimentConfig(schemes=("none", "mdr", "pgd-at"))
    short = base.replace(scheme_epochs={"pgd-at": 3})
    assert short.epochs_of("pgd-at") == 3 and short.epochs_of("mdr") == base.epochs
    assert short.run_key("mdr") == base.run_key("mdr") and short.run_key("none") == base.run_key("none")
    assert short.run_key("pgd-at") != base.run_key("pgd-at")
    assert base.replace(scheme_epochs={"pgd-at": base.epochs}).run_key("pgd-at") == base.run_key("pgd-at")
    # the key of an mdr run with no per-scheme epochs, pinned: a change to it invalidates every run directory
    assert ExperimentConfig(schemes=("none", "mdr"), weights={"mdr": 0.5}).run_key("mdr") == "454cb3438c"
    assert ExperimentConfig.from_dict(short.to_dict()) == short
    for bad in ({"pgd-at": 0}, {"bogus": 2}, {"mdr": 1.5}):
        with pytest.raises(ValueError):
            base.replace(scheme_epochs=bad)


def test_cli_scheme_epochs():
    args = build_parser(["claims"]).parse_args(["claims", "--out", "x", "--schemes", "none", "mdr", "pgd-at", "trades",
                                                "--scheme-epochs", "pgd-at=2", "trades=3"])
    cfg = config_from_args(args)
    assert cfg.scheme_epochs == {"pgd-at": 2, "trades": 3} and cfg.schemes[-2:] == ("pgd-at", "trades")
    with pytest.raises(ValueError, match="SCHEME=EPOCHS"):
        config_from_args(build_parser(["claims"]).parse_args(["claims", "--out", "x", "--scheme-epochs", "2"]))


def test_tiny_runs_train_and_resist_pgd(tmp_path, one_thread):
    """10 epochs on 600 of the 8x8 digits fixture (16x8 BlockMNIST, SmallCNN): every scheme beats chance
    (0.1) threefold on 200 test images, and PGD at the training budget (eps 0.1, 10 steps) leaves pgd-at and
    trades far more accurate than none (seed 0: none 0.065, pgd-at 0.355, trades 0.29 when written). Each
    scheme trains for the epochs its --scheme-epochs entry gives (here trades: 10 of a default 12)."""
    cfg = ExperimentConfig(experiment="blockmnist", seeds=(0,), dataset="digits", patch_size=None, model="cnn",
                           epochs=12, lr=3e-3, max_train=600, max_test=200, width=8, batch_size=32, pgd_steps=5,
                           schemes=("none", "pgd-at", "trades"), scheme_epochs={"none": 10, "pgd-at": 10, "trades": 10})
    train, test = build_datasets(cfg, 0)
    acc, pgd_acc = {}, {}
    for m in cfg.schemes:
        run = train_run(cfg, m, 0, train, tmp_path / m, quiet=True)
        assert len(run.step_times) == 10 * -(-600 // 32)
        acc[m] = (predict_logits(run.model, test.x).argmax(1) == test.y).float().mean().item()
        adv = PGD(run.model, eps=0.1, alpha=0.025, steps=10, seed=0)(test.x, test.y)
        pgd_acc[m] = (predict_logits(run.model, adv).argmax(1) == test.y).float().mean().item()
    assert min(acc.values()) > 0.3, acc
    assert pgd_acc["pgd-at"] > pgd_acc["none"] + 0.15 and pgd_acc["trades"] > pgd_acc["none"] + 0.15, pgd_acc


def test_claims_compare_mdr_and_its_fraction_with_adversarial_training(tiny_config):
    """With pgd-at and trades among the plan's schemes they run on both experiments on every seed, and the
    claim rows (mdr against each comparator) and the cheaper form's rows gain their columns."""
    cfg = tiny_config.replace(schemes=("none", "mdr", "pgd-at", "trades"), seeds=(0, 1))
    plan = ClaimsPlan(cfg, fractions=(0.25,))
    points = {p[:2] for p in plan.points()}
    assert {("blockmnist", "pgd-at"), ("spurious", "trades"), ("blockmnist", "mdr@0.25")} <= points
    assert plan.adversarial == ("pgd-at", "trades") and ClaimsPlan(tiny_config.replace(schemes=("none", "mdr"))).adversarial == ()
    weights = plan.experiment_config("blockmnist").weights
    records = [{"experiment": e, "scheme": m, "weight": weights[m], "seed": s,
                "scores": {"leakage": v, "leakage_paper": v, "clean_acc": v, "pgd_linf_acc": v}}
               for e in ("blockmnist", "spurious") for s in (0, 1)
               for m, v in (("none", 0.5 + s), ("mdr", 0.4 + s), ("mdr@0.25", 0.45 + s), ("pgd-at", 0.3 + 2 * s),
                            ("trades", 0.2 + s))]
    rows = claim_rows(plan, records)
    leak = next(r for r in rows["claims"] if (r["experiment"], r["metric"]) == ("blockmnist", "leakage_paper"))
    cells = {c["comparator"]: c for c in leak["versus"]}
    assert list(cells) == ["none", "pgd-at", "trades"]
    assert cells["pgd-at"]["diffs"] == pytest.approx([0.1, -0.9]) and cells["trades"]["mean"] == pytest.approx(0.2)
    (cheaper,) = rows["cheaper"]
    row = next(r for r in cheaper["rows"] if r["metric"] == "leakage_paper")
    assert [c["comparator"] for c in row["versus"]] == ["mdr", "none", "pgd-at", "trades"]
    assert row["versus"][3]["mean"] == pytest.approx(0.25)
    # the report's section: the claim rows and the cheaper form's, narrowed to the adversarial columns
    text = adversarial_section(rows, dataclasses.replace(plan, config=cfg.replace(scheme_epochs={"pgd-at": 2})),
                               plan.experiment_config("blockmnist").replace(scheme_epochs={"pgd-at": 2}))
    assert "| mdr − pgd-at | mdr − trades |" in text and "| mdr@0.25 − pgd-at | mdr@0.25 − trades |" in text
    assert "− none" not in text and "pgd-at 2, trades 1" in text
