"""The fault-injection soak (benchmarks/soak.py) in a short form: kills, a mid-write kill, the three faults."""

from __future__ import annotations

import json

import pytest

from benchmarks.soak import main

pytestmark = pytest.mark.slow


def test_short_soak_ends_where_the_uninterrupted_run_ends(tmp_path):
    assert main(["--out", str(tmp_path), "--kills", "3", "--seed", "1"]) == 0
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["kills"] == 3 and result["kills_during_write"] >= 1 and result["unreadable_last_ckpt"] == 0
    assert result["final_matches_uninterrupted"] and result["max_abs_diff"] == 0.0
    assert result["faults"] == {"second_fit_refused": True, "disk_full": True, "unusable_folder_refused": True}
