import pytest

from margreg_fast.kit.experiments.config import DEFAULT_WEIGHTS, ExperimentConfig


def test_round_trip_through_dict_is_exact():
    cfg = ExperimentConfig(experiment="spurious", methods=("none", "mdr"), seeds=(3, 1), weights={"mdr": 0.25})
    again = ExperimentConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.weights == {**DEFAULT_WEIGHTS, "mdr": 0.25}


@pytest.mark.parametrize("change, words", [
    ({"experiment": "cifar"}, "experiment"),
    ({"methods": ("none", "adv")}, "unknown method"),
    ({"methods": ("mdr", "mdr")}, "duplicates"),
    ({"seeds": ()}, "seeds"),
    ({"seeds": (-1,)}, "seeds"),
    ({"epochs": 0}, "epochs"),
    ({"step": 0.0}, "step"),
    ({"weights": {"mdr": -1.0}}, "weight for mdr"),
    ({"weights": {"foo": 1.0}}, "unknown method"),
    ({"estimators": {"mdr": "magic"}}, "estimator for mdr"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"attribution": "lime"}, "attribution"),
    ({"model": "vit", "methods": ("none", "igr")}, "estimator fd"),
])
def test_bad_values_are_named(change, words):
    with pytest.raises(ValueError, match=words):
        ExperimentConfig(**change)


def test_unknown_keys_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        ExperimentConfig.from_dict({"experiment": "blockmnist", "colour": "red"})
