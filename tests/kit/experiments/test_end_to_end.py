"""A tiny real experiment end to end, and resume after SIGKILL of the command-line tool."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from margreg_fast.kit.experiments.config import SCHEMES
from margreg_fast.kit.experiments.evaluation import RESULT_KEYS
from margreg_fast.kit.experiments.runner import evaluate_all, run_experiment, train_all
from margreg_fast.kit.experiments.training import CHECKPOINT_NAME

from .conftest import TINY_FLAGS

REPO = Path(__file__).resolve().parents[3]


def _check_schema(results: dict, experiment: str, schemes) -> None:
    assert set(results) == {"experiment", "config", "schemes"}
    assert results["experiment"] == experiment
    assert list(results["schemes"]) == list(schemes)
    for row in results["schemes"].values():
        assert tuple(row) == RESULT_KEYS
        for key, value in row.items():
            assert value is None or isinstance(value, float), (key, value)


def test_tiny_blockmnist_experiment(tmp_path, tiny_config):
    out = tmp_path / "out"
    summary = run_experiment(tiny_config, out, quiet=True)
    results = json.loads((out / "results.json").read_text())
    assert results == summary
    _check_schema(results, "blockmnist", SCHEMES)
    for row in results["schemes"].values():  # BlockMNIST has null blocks and position groups, no shortcut patch
        assert all((row[k] is None) == (k == "acc_patch_disagrees") for k in RESULT_KEYS)
        assert 0.0 <= row["clean_acc"] <= 1.0 and 0.0 <= row["leakage"] <= 1.0
        assert row["step_time_s"] > 0
    text = (out / "results.md").read_text()
    assert text.split("\n\n")[0].count("\n| ") == len(SCHEMES)  # one row per scheme below the separator
    assert "paper leakage" in text and "insertion_auc_paper > none" in text  # Figure-1 table and claim checks
    assert results["config"]["image_shape"] == [1, 16, 8] and results["config"]["dataset"] == "digits"
    seeds = json.loads((out / "results_seeds.json").read_text())
    assert len(seeds["runs"]) == len(SCHEMES)
    for name in ("figure1.png", "attributions.png", "insertion.png"):
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_then_evaluate_equals_experiment(tmp_path, tiny_config):
    """Also: two worker processes give the same numbers as one."""
    cfg = tiny_config.replace(experiment="spurious", schemes=("none", "mdr"))
    train_all(cfg, tmp_path / "a", quiet=True, jobs=2)
    assert not (tmp_path / "a" / "results.json").exists()
    split = evaluate_all(tmp_path / "a", quiet=True)
    whole = run_experiment(cfg, tmp_path / "b", quiet=True)
    _check_schema(split, "spurious", ("none", "mdr"))
    for m in ("none", "mdr"):
        split["schemes"][m].pop("step_time_s"), whole["schemes"][m].pop("step_time_s")
    assert split == whole


def test_changed_settings_reuse_only_matching_runs(tmp_path, tiny_config):
    """Runs are keyed by their own settings: another mdr estimator retrains mdr only; other epochs retrain all."""
    cfg = tiny_config.replace(schemes=("none", "mdr"))
    train_all(cfg, tmp_path, quiet=True)
    first = {p.name for p in (tmp_path / "runs").iterdir()}
    train_all(cfg.replace(estimators={"mdr": "central"}), tmp_path, quiet=True)
    second = {p.name for p in (tmp_path / "runs").iterdir()}
    assert len(first) == 2 and len(second) == 3 and first < second
    assert {n.split("-seed")[0] for n in second - first} == {"mdr"}
    train_all(cfg.replace(epochs=2), tmp_path, quiet=True)
    assert len(list((tmp_path / "runs").iterdir())) == 5


def _args(out: Path) -> list[str]:
    return ["experiment", "blockmnist", "--out", str(out), "--schemes", "none", "mdr", *TINY_FLAGS,
            "--epochs", "3", "--max-train", "160"]


def _cli(out: Path) -> list[str]:
    return [sys.executable, "-m", "margreg_fast", *_args(out)]


#: The command-line tool, except that right after saving mdr's checkpoint of epoch 1 it prints
#: PAUSED and blocks reading stdin (which the test never writes): a state the test can wait for.
PAUSED = "saved mdr epoch 1"
_PAUSE_AFTER_FIRST_MDR_CHECKPOINT = f"""
import sys
from margreg_fast.__main__ import main
from margreg_fast.kit.experiments import training

save = training.save_checkpoint


def save_then_pause(path, **kw):
    save(path, **kw)
    if path.parent.name.startswith("mdr-") and kw["epoch"] == 1:
        print({PAUSED!r}, flush=True)
        sys.stdin.readline()


training.save_checkpoint = save_then_pause
sys.exit(main(sys.argv[1:]))
"""


def _without_timing(path: Path) -> dict:
    data = json.loads(path.read_text())
    rows = data["schemes"].values() if "schemes" in data else data["runs"]
    for row in rows:
        row.pop("step_time_s")
    return data


def test_resume_after_sigkill_gives_same_results(tmp_path):
    """Kill -9 part-way through the regularised run (mdr, right after the checkpoint of its first of
    three epochs, "none" being done: the run pauses there and says so, so the kill lands at that
    state, not in a timing window), rerun the command: it must resume mdr from its checkpoint (not
    retrain it: its recorded step times of the first epoch survive) and end with the uninterrupted
    results."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ref = tmp_path / "ref"
    subprocess.run(_cli(ref), cwd=REPO, env=env, check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSE_AFTER_FIRST_MDR_CHECKPOINT, *_args(out)], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = iter(proc.stdout.readline, "")  # ends if the run exits without pausing
        assert any(line.strip() == PAUSED for line in lines), "the run ended before mdr's first checkpoint"
    finally:
        proc.send_signal(signal.SIGKILL)  # the run is blocked right after that checkpoint
        proc.wait()
        proc.stdout.close(), proc.stdin.close()
    assert list(out.glob("runs/none-seed0-*/result.json"))
    assert not list(out.glob("runs/mdr-seed0-*/result.json"))
    checkpoint, = out.glob(f"runs/mdr-seed0-*/{CHECKPOINT_NAME}")
    killed = torch.load(checkpoint, weights_only=True)
    assert killed["epoch"] == 1, killed["epoch"]

    done = subprocess.run(_cli(out), cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    final = torch.load(checkpoint, weights_only=True)
    assert final["epoch"] == 3 and final["step_times"][:len(killed["step_times"])] == killed["step_times"]
    assert _without_timing(out / "results.json") == _without_timing(ref / "results.json")
    assert _without_timing(out / "results_seeds.json") == _without_timing(ref / "results_seeds.json")
