"""The committed claims are at the power asked for, and the README quotes them verbatim (no hand-typed numbers)."""
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
CLAIMS = RESULTS / "claims"
README = ROOT / "README.md"
#: A measured number: a decimal not glued to a letter, digit, dot or underscore on its left. Integers
#: (sizes, counts, seeds, years) describe the setting, not the outcome, and are not checked.
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])[-+]?\d+\.\d+")


def _experiments_section() -> str:
    text = README.read_text()
    start = text.index("## Experiments: does the model still rely on non-robust features?")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_committed_claims_are_paper_scale_with_five_seeds_and_500_images():
    claims = json.loads((CLAIMS / "claims.json").read_text())
    cfg = claims["plan"]["config"]
    assert cfg["dataset"] == "mnist5k" and cfg["model"] == "papercnn" and cfg["epochs"] == 10
    assert len(cfg["seeds"]) >= 5 and cfg["eval_samples"] >= 500
    weights = json.loads((ROOT / "margreg_fast" / "kit" / "configs" / "blockmnist_weights.json").read_text())["weights"]
    assert all(cfg["weights"][m] == w for m, w in weights.items())
    for row in claims["claims"]:
        for cell in row["versus"]:
            assert len(cell["diffs"]) >= 5, (row["metric"], cell["comparator"])
    results = json.loads((CLAIMS / "blockmnist.json").read_text())
    assert results["config"]["image_shape"] == [1, 56, 28]


def test_readme_includes_the_claims_files_verbatim():
    from benchmarks.readme_tables import expand, included_files

    section = _experiments_section()
    files = included_files(section)
    for name in ("claims_table.md", "figure1.md", "attribution_robustness.md", "frontier.md", "cheaper.md"):
        assert f"docs/results/claims/{name}" in files, name
    assert expand(section) == section
    listed = subprocess.run(["git", "ls-files", "docs/results", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    for path in files:
        assert path in listed, f"{path} is included in the README but not committed"


def test_every_experiment_number_is_in_a_committed_result_file():
    committed = [p for d in ("docs/results", "benchmarks/results") for p in (ROOT / d).rglob("*") if p.is_file()]
    known = {n.lstrip("+-") for p in committed for n in NUMBER.findall(p.read_text(errors="ignore"))}
    found = {n.lstrip("+-") for n in NUMBER.findall(_experiments_section())}
    missing = sorted(found - known)
    assert not missing, f"numbers in the README's experiment section found in no committed result file: {missing}"
