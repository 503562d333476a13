"""The library core (ops, estimators, penalty, regularizer) imports nothing from the experiment kit."""
import subprocess
import sys


def test_core_import_pulls_in_no_kit_module():
    code = ("import sys, margreg_fast, margreg_fast._penalty, margreg_fast._regularizer; "
            "bad = sorted(m for m in sys.modules if m.startswith('margreg_fast.kit') "
            "or m.split('.')[0] in ('captum', 'sklearn', 'matplotlib')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
