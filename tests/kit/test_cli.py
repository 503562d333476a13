"""The command-line tool: help, argument errors (exit status 2), --quiet, and the printed table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from margreg_fast.kit.cli import build_parser, config_from_args, main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "digits", "--patch-size", "inset", "--model", "cnn", "--ig-steps", "4", "--insertion-pixels", "12",
        "--epochs", "1", "--max-train", "64", "--max-test", "32", "--eval-samples", "4", "--width", "8", "--threads", "1",
        "--schemes", "none", "mdr"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "margreg_fast", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands_and_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("train", "evaluate", "experiment", "select"):
        assert word in text
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    text = capsys.readouterr().out
    for flag in ("--seeds", "--schemes", "--epochs", "--weight", "--weights-file", "--step", "--dataset", "--data-dir",
                 "--patch-size", "--activation", "--jobs", "--out", "--quiet", "--device"):
        assert flag in text


@pytest.mark.parametrize("argv, words", [
    ([], "required"),
    (["experiment", "cifar", "--out", "x"], "invalid choice"),
    (["experiment", "blockmnist"], "--out"),
    (["experiment", "blockmnist", "--out", "x", "--schemes", "adv"], "unknown scheme"),
    (["experiment", "blockmnist", "--out", "x", "--epochs", "0"], "positive integer"),
    (["experiment", "blockmnist", "--out", "x", "--seeds", "-1"], "integer >= 0"),
    (["experiment", "blockmnist", "--out", "x", "--weight", "mdr=abc"], "invalid weight"),
    (["experiment", "blockmnist", "--out", "x", "--weight", "adv=1"], "unknown scheme"),
    (["experiment", "blockmnist", "--out", "x", "--weight", "-1"], "must be >= 0"),
    (["experiment", "blockmnist", "--out", "x", "--estimator", "mdr=magic"], "estimator must be one of"),
    (["experiment", "blockmnist", "--out", "x", "--step", "0"], "step must be positive"),
    (["experiment", "blockmnist", "--out", "x", "--step", "magic"], "'auto'"),
    (["experiment", "blockmnist", "--out", "x", "--weights-file", "/nonexistent.json"], "--weights-file"),
    (["select", "blockmnist", "--out", "x"], "--grid"),
    (["experiment", "blockmnist", "--out", "x", "--seeds", "1", "1"], "distinct"),
    (["experiment", "blockmnist", "--out", "x", "--data-dir", "/nonexistent/mnist"], "not a directory"),
    (["experiment", "blockmnist", "--out", "x", "--device", "cuda:0" if not __import__("torch").cuda.is_available()
      else "tpu"], "--device"),
    (["evaluate", "/nonexistent/run"], "config.json"),
    (["experiment", "blockmnist", "--out", "x", "--schemes", "mdr@0.250"], "write the fraction"),
    (["claims", "--out", "x", "--fractions", "1"], "a number in (0, 1)"),
    (["claims", "--out", "x", "--lazy", "1"], "an integer >= 2"),
    (["experiment", "blockmnist", "--out", "x", "--schemes", "mdr%1"], "integer >= 2"),
    (["claims", "--out", "x", "--grid", "1"], "frontier"),
    (["claims", "--out", "x", "--schemes", "none", "igr"], "compare mdr"),
    (["claims", "--out", "x", "--compare-to", "/nonexistent"], "--compare-to"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err


def test_weights_per_scheme_and_for_all(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["experiment", "blockmnist", "--out", "o", "--weight", "0.5", "mdr=2"])
    assert config_from_args(args).weights == {"none": 0.0, "igr": 0.5, "joint": 0.5, "mdr": 2.0, "mdr-exact": 0.5}
    (tmp_path / "w.json").write_text(json.dumps({"weights": {"igr": 3.0, "mdr": 10.0, "mdr-exact": 10.0}}))
    args = parser.parse_args(["experiment", "blockmnist", "--out", "o", "--weights-file", str(tmp_path / "w.json"),
                              "--weight", "igr=4", "--step", "auto"])
    cfg = config_from_args(args)
    assert cfg.weights == {"none": 0.0, "igr": 4.0, "joint": 1.0, "mdr": 10.0, "mdr-exact": 10.0}
    assert cfg.step == "auto" and cfg.dataset == "mnist5k" and cfg.model == "papercnn"


def test_corrupt_data_dir_exits_2_naming_the_file(tmp_path):
    """Valid labels, truncated images (header promises 5 images of 28x28, holds 7 bytes)."""
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (5, 28, 28)) + b"garbage")
    done = _run("experiment", "blockmnist", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path), *TINY, "--quiet")
    assert done.returncode == 2
    assert "train-images-idx3-ubyte" in done.stderr


def test_quiet_silences_progress_bars_and_table_is_printed(tmp_path):
    quiet = _run("experiment", "spurious", "--out", str(tmp_path / "q"), *TINY, "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "it/s" not in quiet.stderr and "epoch" not in quiet.stderr and "%|" not in quiet.stderr
    assert "| none |" in quiet.stdout and "| mdr |" in quiet.stdout
    results = json.loads((tmp_path / "q" / "results.json").read_text())
    assert results["schemes"]["mdr"]["worst_group_acc"] is not None

    loud = _run("train", "spurious", "--out", str(tmp_path / "l"), *TINY)
    assert loud.returncode == 0, loud.stderr
    assert "%|" in loud.stderr  # tqdm bars on stderr
    again = _run("evaluate", str(tmp_path / "l"), "--quiet")
    assert again.returncode == 0, again.stderr
    assert "| mdr |" in again.stdout
