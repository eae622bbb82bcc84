"""``python -m bench --quick`` runs end to end and reports every row with numbers.

No timing assertions: the machine is shared and noisy; the bench itself reports pass/fail
against its targets. This only checks that every row was measured: a number on each side.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_env

ROWS = ("trial_speed", "trial_accuracy", "fisher_speed", "fisher_error", "fisher_vs_epoch", "threads_under_load",
        "sweep_overhead", "memory", "prefix_reuse")


@pytest.mark.slow
@pytest.mark.ray
def test_quick_bench_reports_every_row_with_numbers(tmp_path: Path, data_root: Path):
    out = tmp_path / "results.json"
    env = {**cli_env(), "SWEEP_DATA_ROOT": str(data_root)}
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] is True
    rows = {row["row"]: row for row in data["rows"]}
    assert set(ROWS) <= set(rows), f"missing rows: {set(ROWS) - set(rows)}"
    for name in ROWS:
        row = rows[name]
        assert name in proc.stdout  # the printed table has the row
        assert row["status"] == "ok", (name, row["details"])
        for key in ("ours", "reference", "ratio"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (name, key, row[key])
        if row["unit"] in ("s", "trials/min", "MB"):  # a time, rate or size of zero means nothing was measured
            assert row["ours"] > 0 and row["reference"] > 0, (name, row["ours"], row["reference"])
        assert row["pass"] in (True, False), name
