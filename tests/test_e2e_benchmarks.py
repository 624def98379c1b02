"""Tier 3: the benchmark scripts' smoke versions run, so they cannot rot between full runs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


def test_attention_overhead_quick_run_prints_every_method():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "attention_overhead.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.split("× CFG")[1]
    for method in ("cfg", "core PAG", "core SAG", "PAG separate", "PAG batched", "SEG", "SAG",
                   "PAG in place of uncond", "PAG 20-80 %"):
        assert f" {method} " in table, method
    assert "flux" in table and "quick run: results not written" in out.stdout
