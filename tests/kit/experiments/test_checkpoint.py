"""Checkpoints: atomic, weights_only-loadable, and an interrupted training resumes bit-identically."""
import pytest
import torch

from margreg_fast.kit.experiments.checkpoint import load_checkpoint, save_json, load_json
from margreg_fast.kit.experiments.datasets import build_datasets
from margreg_fast.kit.experiments.training import CHECKPOINT_NAME, train_run


def test_checkpoint_loads_with_weights_only(tmp_path, tiny_config):
    train, _ = build_datasets(tiny_config, seed=0)
    train_run(tiny_config, "mdr", 0, train, tmp_path, quiet=True)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)  # raises if anything is not a tensor/primitive
    assert state["epoch"] == 1
    assert set(state) >= {"model", "optimizer", "torch_rng", "data_rng", "step_times"}
    assert state["torch_rng"].dtype == torch.uint8 and state["data_rng"].dtype == torch.uint8
    assert len(state["step_times"]) == 3  # 96 images / batch 32


def test_no_temporary_files_left(tmp_path):
    save_json(tmp_path / "a.json", {"x": 1.5})
    assert load_json(tmp_path / "a.json") == {"x": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / CHECKPOINT_NAME
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=str(bad)):
        load_checkpoint(bad)


@pytest.mark.parametrize("scheme", ["mdr", "igr", "mdr%2"])
def test_resume_from_checkpoint_is_bit_identical(tmp_path, tiny_config, scheme):
    """Two epochs straight == one epoch, a fresh process state (new objects, other RNG), then one more."""
    cfg = tiny_config.replace(epochs=2, schemes=tuple(dict.fromkeys((*tiny_config.schemes, scheme))))
    train, _ = build_datasets(cfg, seed=0)
    straight = train_run(cfg, scheme, 0, train, tmp_path / "straight", quiet=True).model

    train_run(cfg.replace(epochs=1), scheme, 0, train, tmp_path / "split", quiet=True)
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    resumed = train_run(cfg, scheme, 0, train, tmp_path / "split", quiet=True)
    assert resumed.resumed_from_epoch == 1
    for (name, a), b in zip(straight.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
