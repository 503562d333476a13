"""The committed claims are at the power asked for, the results pages include them (no hand-typed
tables), and every measured number in the pages' prose is in a committed result file."""
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
CLAIMS = RESULTS / "claims"
FINDINGS = ROOT / "docs" / "findings"
#: The pages whose prose reports measurements: the results pages and the estimators guide.
MEASURED_PAGES = sorted(FINDINGS.glob("*.md")) + [ROOT / "docs" / "guides" / "estimators.md",
                                                  ROOT / "docs" / "guides" / "fractions.md"]
#: A measured number: a decimal not glued to a letter, digit, dot or underscore on its left. Integers
#: (sizes, counts, seeds, years) describe the setting, not the outcome, and are not checked.
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])[-+]?\d+\.\d+")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)


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


def _committed(paths=("docs/results", "benchmarks/results")):
    return subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.split()


def test_the_results_pages_include_the_claims_files():
    included = {re.sub(r":\d*(:\d*)?$", "", path)  # a line range (file.md:3:) names the file
                for page in FINDINGS.glob("*.md") for path in SNIPPET.findall(page.read_text())}
    for name in ("claims_table.md", "figure1.md", "attribution_robustness.md", "frontier.md", "cheaper.md",
                 "estimator.md", "estimator_gelu.md", "stability_threads2.md"):
        assert f"docs/results/claims/{name}" in included, name
    listed = _committed()
    for path in included:
        assert path in listed, f"{path} is included in the docs but not committed"


def _prose(page: Path) -> str:
    """A page's own text: without the included files and without code blocks."""
    return re.sub(r"```.*?```", "", SNIPPET.sub("", page.read_text()), flags=re.S)


def test_every_measured_number_of_the_pages_is_in_a_committed_result_file():
    committed = [ROOT / p for p in _committed()]
    known = {n.lstrip("+-") for p in committed if p.is_file() for n in NUMBER.findall(p.read_text(errors="ignore"))}
    for page in MEASURED_PAGES:
        missing = sorted({n.lstrip("+-") for n in NUMBER.findall(_prose(page))} - known)
        assert not missing, f"numbers in {page.relative_to(ROOT)} found in no committed result file: {missing}"
