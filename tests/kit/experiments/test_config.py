import pytest

from margreg_fast.kit.experiments.config import DEFAULT_WEIGHTS, ExperimentConfig, parse_scheme


def test_round_trip_through_dict_is_exact():
    cfg = ExperimentConfig(experiment="spurious", schemes=("none", "mdr"), seeds=(3, 1), weights={"mdr": 0.25})
    again = ExperimentConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.weights == {**DEFAULT_WEIGHTS, "mdr": 0.25, "mdr-exact": 0.25}


@pytest.mark.parametrize("change, words", [
    ({"experiment": "cifar"}, "experiment"),
    ({"schemes": ("none", "adv")}, "unknown scheme"),
    ({"schemes": ("mdr", "mdr")}, "duplicates"),
    ({"seeds": ()}, "seeds"),
    ({"seeds": (-1,)}, "seeds"),
    ({"epochs": 0}, "epochs"),
    ({"step": 0.0}, "step"),
    ({"step": "magic"}, "step"),
    ({"dataset": "idx"}, "data_dir"),
    ({"dataset": "cifar"}, "dataset"),
    ({"split": "train"}, "split"),
    ({"patch_size": 2}, "patch_size"),
    ({"activation": "swish"}, "activation"),
    ({"model": "densenet"}, "model"),
    ({"spurious_amplitude": 0.0}, "spurious_amplitude"),
    ({"weights": {"mdr": -1.0}}, "weight for mdr"),
    ({"weights": {"foo": 1.0}}, "unknown scheme"),
    ({"estimators": {"mdr": "magic"}}, "estimator for mdr"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"attribution": "lime"}, "attribution"),
    ({"model": "vit", "schemes": ("none", "igr")}, "estimator fd"),
    ({"schemes": ("mdr@0.250",)}, "write the fraction as '0.25'"),
    ({"schemes": ("mdr@1",)}, r"value in \(0, 1\)"),
    ({"schemes": ("none@0.5",)}, "regularised scheme"),
    ({"schemes": ("mdr@half",)}, "not a number"),
    ({"weights": {"mdr@2": 1.0}}, "unknown scheme"),
    ({"schemes": ("mdr%1",)}, "integer >= 2"),
    ({"schemes": ("mdr%04",)}, "integer >= 2"),
    ({"schemes": ("none%4",)}, "regularised scheme"),
    ({"schemes": ("mdr%four",)}, "integer >= 2"),
    ({"schemes": ("mdr@0.5%4",)}, "not both"),
    ({"spurious_patch": "corner"}, "spurious_patch"),
    ({"spurious_agreement": 1.5}, "spurious_agreement"),
])
def test_bad_values_are_named(change, words):
    with pytest.raises(ValueError, match=words):
        ExperimentConfig(**change)


def test_unknown_keys_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        ExperimentConfig.from_dict({"experiment": "blockmnist", "colour": "red"})


def test_step_policy_name_and_mdr_exact_follows_mdr():
    cfg = ExperimentConfig(step="auto", weights={"mdr": 3.0})
    assert cfg.step == "auto" and ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.weights["mdr-exact"] == 3.0 and cfg.estimators["mdr-exact"] == "exact"
    assert ExperimentConfig(weights={"mdr": 3.0, "mdr-exact": 1.0}).weights["mdr-exact"] == 1.0


def test_fraction_schemes_follow_their_base_and_have_their_own_key():
    cfg = ExperimentConfig(schemes=("none", "mdr", "mdr@0.25"), weights={"mdr": 3.0})
    assert cfg.weights["mdr@0.25"] == 3.0 and cfg.estimators["mdr@0.25"] == cfg.estimators["mdr"]
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert parse_scheme("mdr@0.25") == ("mdr", 0.25, 1) and parse_scheme("igr") == ("igr", 1.0, 1)
    keys = {cfg.run_key(m) for m in cfg.schemes}
    assert len(keys) == 3
    # the fraction run's key moves with its own weight only
    other = cfg.replace(weights={**cfg.weights, "mdr@0.25": 1.0})
    assert other.run_key("mdr@0.25") != cfg.run_key("mdr@0.25") and other.run_key("mdr") == cfg.run_key("mdr")


def test_lazy_schemes_follow_their_base_and_have_their_own_key():
    cfg = ExperimentConfig(schemes=("none", "mdr", "mdr%4", "igr%2"), weights={"mdr": 3.0})
    assert parse_scheme("mdr%4") == ("mdr", 1.0, 4) and parse_scheme("mdr-exact%16").every == 16
    assert cfg.weights["mdr%4"] == 3.0 and cfg.estimators["mdr%4"] == cfg.estimators["mdr"]
    assert cfg.estimators["igr%2"] == "exact" and ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert len({cfg.run_key(m) for m in cfg.schemes}) == 4
