"""The examples under examples/ run as a user runs them, on tiny data for a few steps.

Each runs in its own process with the real libraries (timm, Lightning, transformers, torchrun); the
four start together (their imports dominate their time) and each test reads its own result. Each
example prints its step time against plain training; the tests check that line, not the numbers
(timings are for benchmarks). timm, Lightning and transformers import torchvision, which loads next
to the CPU torch through tests/timm_import.py: the runner imports it first, then runs the file as
``__main__``, so the example itself keeps the plain ``import timm`` a user writes.
"""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT = 600

#: python -c: the torchvision schemas first, then the example as its own __main__ with sys.argv.
_RUNNER = ("import runpy, sys; from tests.timm_import import import_timm; import_timm(); "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commands():
    timm = [str(EXAMPLES / "timm_train.py"), "--model", "test_resnet", "--steps", "3", "--batch-size", "8",
            "--img-size", "32", "--amp", "bf16", "--device", "cpu"]
    lightning = [str(EXAMPLES / "lightning_module.py"), "--steps", "3", "--batch-size", "8", "--val-batches", "1",
                 "--accelerator", "cpu"]
    hf = [str(EXAMPLES / "hf_trainer.py"), "--steps", "3", "--batch-size", "8", "--length", "16"]
    ddp = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
           str(_free_port()), str(EXAMPLES / "torchrun_ddp.py"), "--steps", "3", "--accumulate", "2",
           "--batch-size", "8"]
    return {"timm": ["-c", _RUNNER, *timm], "lightning": ["-c", _RUNNER, *lightning],
            "hf": ["-c", _RUNNER, *hf], "torchrun": ddp}


@pytest.fixture(scope="module")
def runs():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = {name: subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, cmd in _commands().items()}
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = (proc.returncode, out, err)
    return results


STEP_TIME = re.compile(r"step time \(.*\): plain [\d.]+ ms, regularised [\d.]+ ms \([\d.]+x plain\)")


def _check(runs, name):
    code, out, err = runs[name]
    assert code == 0, f"{name} failed:\n{out[-3000:]}\n{err[-5000:]}"
    assert STEP_TIME.search(out), out
    return out


def test_timm_example(runs):
    out = _check(runs, "timm")
    assert re.search(r"last step: ce [\d.]+, penalty [\d.e+-]+, grad_norm [\d.e+-]+, secant_ratio [\d.]+", out), out
    assert re.search(r"EMA model penalty on a batch: [\d.e+-]+", out), out


def test_lightning_example(runs):
    out = _check(runs, "lightning")
    assert re.search(r"train/penalty [\d.e+-]+, train/secant_ratio [\d.]+, val/acc [\d.]+, val/ce [\d.]+, "
                     r"val/penalty [\d.e+-]+", out), out


def test_hf_trainer_example(runs):
    out = _check(runs, "hf")
    assert re.search(r"'penalty': '[\d.e+-]+', 'secant_ratio': '[\d.]+'", out), out


def test_torchrun_example(runs):
    out = _check(runs, "torchrun")
    assert "parameters agree across 2 ranks: True" in out, out


def _load_example(name):
    import importlib.util

    from tests.timm_import import import_timm

    import_timm()
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lightning_validation_logs_the_true_penalty_under_inference_mode():
    """Lightning validates under torch.inference_mode(); the logged val/penalty is the exact mean
    ||grad_x logsumexp f(x)||^2 of the batch, computed by double backprop outside inference mode in
    float32 (both are the same first-order input gradient: 1e-6 relative, float32 summation order)."""
    example = _load_example("lightning_module")
    import lightning as L
    from torch.utils.data import DataLoader

    class Recording(example.Classifier):
        modes = []

        def validation_step(self, batch, batch_idx):
            self.modes.append(torch.is_inference_mode_enabled())
            return super().validation_step(batch, batch_idx)

    torch.manual_seed(0)
    module = Recording(weight=0.1)
    data = example.random_images(8, 10, seed=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    (metrics,) = trainer.validate(module, DataLoader(data, batch_size=8), verbose=False)
    assert module.modes == [True]  # Lightning's default: validation runs under torch.inference_mode()
    x = data.tensors[0].clone().requires_grad_(True)
    module.net.eval()
    (g,) = torch.autograd.grad(torch.logsumexp(module.net(x), 1).sum(), x)
    true_penalty = g.flatten(1).pow(2).sum(1).mean().item()
    assert true_penalty > 0
    assert metrics["val/penalty"] == pytest.approx(true_penalty, rel=1e-6)
