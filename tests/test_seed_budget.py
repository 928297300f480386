"""bench/seed_budget.py's arithmetic on small hand-made tables with known answers (its
run on a real store: tests/test_bench.py)."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("seed_budget", REPO / "bench" / "seed_budget.py")
seed_budget = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seed_budget)

# per-seed AuFC of three learned cells and one of a target not learned
VALUES = {("mnli", "stsb"): [1.0, 0.8, 0.9], ("base", "stsb"): [0.5, 0.5, 0.8],
          ("base", "pos"): [0.9, 0.9, 0.9], ("base", "mnli"): [0.1, 0.5, 0.9]}  # fmt: skip


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    seeds = pd.DataFrame([{"source": s, "target": t, "variant": "aufc", "seed": i, "value": v}
                          for (s, t), values in VALUES.items()
                          for i, v in enumerate(values)])  # fmt: skip
    cells = pd.DataFrame([{"source": s, "target": t, "variant": "aufc", "value": 0.0,
                           "status": "not learned at this budget" if t == "mnli" else "ok",
                           "ci_level": 0.95} for (s, t) in VALUES])  # fmt: skip
    return cells, seeds


def test_widths_are_the_t_intervals_of_each_subset():
    cells, seeds = frames()
    two = seed_budget.widths(cells, seeds, (0, 1))
    # t(0.975, 1) = 12.706; sem of (1.0, 0.8) = 0.1; (0.5, 0.5) and (0.9, 0.9): 0
    assert two.to_dict() == pytest.approx({"stsb": 1.27062, "pos": 0.0}, abs=1e-4)
    three = seed_budget.widths(cells, seeds, (0, 1, 2))
    # t(0.975, 2) = 4.3027; sem of (0.5, 0.5, 0.8) = 0.1, wider than (1.0, 0.8, 0.9)'s 0.0577
    assert three.to_dict() == pytest.approx({"stsb": 0.43027, "pos": 0.0}, abs=1e-4)
    assert "mnli" not in three  # not learned: no number, no width


def test_a_subset_only_widens_the_targets_that_hold_all_its_seeds():
    cells, seeds = frames()
    # a fourth seed for STS-B alone (as a study with more seeds for one target holds)
    extra = pd.DataFrame([{"source": s, "target": "stsb", "variant": "aufc", "seed": 3,
                           "value": v} for s, v in (("mnli", 0.9), ("base", 0.8))])  # fmt: skip
    seeds = pd.concat([seeds, extra], ignore_index=True)
    # (0, 1, 3): sem of (0.5, 0.5, 0.8) = 0.1 from base; POS holds no seed 3: no width
    assert seed_budget.widths(cells, seeds, (0, 1, 3)).to_dict() == pytest.approx(
        {"stsb": 0.43027}, abs=1e-4)  # fmt: skip
    four = seed_budget.widths(cells, seeds, (0, 1, 2, 3))
    # t(0.975, 3) = 3.1824; sd of (0.5, 0.5, 0.8, 0.8) = 0.17321, sem 0.086603
    assert four.to_dict() == pytest.approx({"stsb": 0.27561}, abs=1e-4)


def test_minutes_count_the_seeds_single_task_runs_over_the_workers():
    read = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "seed": [0, 1, 0, 0],
                         "mode": ["single", "single", "sequential", "extract"]})  # fmt: skip
    start = pd.Timestamp("2026-12-03 10:00")
    times = pd.DataFrame({"run_id": ["a", "b", "c", "d", "e"], "start_time": [start] * 5,
                          "end_time": [start + pd.Timedelta(seconds=s)
                                       for s in (60, 120, 600, 30, 999)]})  # fmt: skip
    assert seed_budget.trial_minutes(read, times, (0, 1), workers=2) == pytest.approx(1.5)
    assert seed_budget.trial_minutes(read, times, (0,), workers=1) == pytest.approx(1.0)


def test_one_seed_is_one_clear_error(tmp_path):
    cells, seeds = frames()
    cells.to_parquet(tmp_path / "aufc.parquet")
    seeds[seeds.seed == 0].to_parquet(tmp_path / "aufc_seeds.parquet")
    pd.DataFrame({"run_id": ["a"], "seed": [0], "mode": ["single"]}).to_parquet(
        tmp_path / "runs.parquet")  # fmt: skip
    with pytest.raises(SystemExit, match="AuFC values of 1 seed"):
        seed_budget.table(tmp_path, pd.DataFrame(), workers=2)
