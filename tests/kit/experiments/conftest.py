"""Shared tiny configuration: every experiment test finishes in seconds on 2 CPU cores."""
import pytest
import torch

from margreg_fast.kit.experiments.config import ExperimentConfig

#: CLI flags of a tiny but complete experiment (every scheme) on the 8x8 scikit-learn digits fixture.
TINY_FLAGS = ["--dataset", "digits", "--patch-size", "inset", "--model", "cnn", "--ig-steps", "4",
              "--insertion-pixels", "12", "--epochs", "1", "--max-train", "96", "--max-test", "48", "--eval-samples", "8",
              "--width", "8", "--batch-size", "32", "--threads", "1", "--quiet"]


@pytest.fixture
def tiny_config() -> ExperimentConfig:
    return ExperimentConfig(experiment="blockmnist", seeds=(0,), dataset="digits", patch_size=None, model="cnn",
                            ig_steps=4, insertion_pixels=12, epochs=1, max_train=96, max_test=48,
                            eval_samples=8, width=8, batch_size=32, pgd_steps=2, attack_steps=2,
                            density_steps=2, insertion_steps=4)


@pytest.fixture
def one_thread():
    """One torch thread, as the kit's commands run (--threads 1): on a busy 2-core machine the default
    thread pool makes these tiny models' ops tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
