"""The committed demo output is at paper scale, and the README quotes it verbatim (no hand-typed numbers)."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"


def test_committed_demo_is_paper_scale():
    results = json.loads((RESULTS / "blockmnist.json").read_text())
    assert results["config"]["image_shape"] == [1, 56, 28] and results["config"]["dataset"] == "mnist5k"
    assert len(results["config"]["seeds"]) == 3
    weights = json.loads((ROOT / "margreg_fast" / "kit" / "configs" / "blockmnist_weights.json").read_text())["weights"]
    assert all(results["config"]["weights"][m] == w for m, w in weights.items())
    for row in results["methods"].values():
        assert {"leakage_paper", "leakage_topk", "insertion_auc_paper"} <= set(row)


def test_readme_quotes_the_committed_tables():
    readme = (ROOT / "README.md").read_text()
    for name in ("blockmnist.md", "blockmnist_selection.md"):
        table = [line for line in (RESULTS / name).read_text().splitlines() if line.startswith("| ")]
        quoted = [line for line in table if line in readme]
        assert quoted, f"README quotes no row of docs/results/{name}"
    figure1 = (RESULTS / "blockmnist.md").read_text().split("Against the paper's Figure 1")[1]
    for line in figure1.splitlines():
        if line.startswith("| ") or line.startswith("- PASS") or line.startswith("- FAIL"):
            assert line in readme, line
