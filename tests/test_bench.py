"""Benchmarks meant for other machines still run here, on a tiny setting."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_training_bench_runs_on_the_cpu_with_a_tiny_setting(tmp_path):
    bench = REPO / "bench" / "gpu" / "train_gpu.py"
    done = subprocess.run([sys.executable, str(bench), "--tiny"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split("\nrun ", 1)[1].splitlines()[1:]
    rows = {line[:28].strip(): line[28:].split() for line in table if line[:4] == "ours"}
    rows["Trainer"] = next(line[28:].split() for line in table if line.startswith("Trainer"))
    names = ["Trainer", "ours, k = 0", "ours, 2 trials packed", "ours, k = 1, no cache",
             "ours, k = 1, cache", "ours, k = 2, no cache", "ours, k = 2, cache"]  # fmt: skip
    assert sorted(rows) == sorted(names)
    for name in names:
        rate, ratio = float(rows[name][0]), float(rows[name][1])
        assert rate > 0 and ratio > 0, name
    # a packed run reports each of its processes, and the cache its first update
    assert " ".join(rows["ours, 2 trials packed"]).count(",") == 1
    assert "builds the cache" in " ".join(rows["ours, k = 2, cache"])


def test_seed_budget_reproduces_the_analysis_intervals_with_every_seed(smoke_study, tmp_path):
    """bench/seed_budget.py on the smoke study (two seeds: one subset, both): its widest
    half-width per target is the analysis' own AuFC intervals', and its trials cost time."""
    import mlflow
    import pandas as pd

    from bertrep import env, tracking
    from bertrep.tracking import server

    store = smoke_study["env"]
    # the study's own analysis (other tests add analyses to this store, some without intervals)
    run_id = re.search(r"summary: runs:/(\w+)/", smoke_study["stdout"]).group(1)
    bench = REPO / "bench" / "seed_budget.py"
    done = subprocess.run([sys.executable, str(bench), "--run", run_id], env=store,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["seeds", "subset"])
    names, row = lines[header].split(), lines[header + 1].split()
    assert len(lines) == header + 2 and row[:2] == ["2", "0,1"] and float(row[2]) > 0
    printed = dict(zip(names[3:], map(float, row[3:]), strict=True))
    assert f"analysis run {run_id}" in done.stdout
    with server.serve(store[env.MLFLOW_TRACKING_URI], tmp_path / "server") as uri:
        with server.tracking_at(uri):
            folder = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{tracking.TABLES_DIR}/aufc.parquet",
                dst_path=str(tmp_path))  # fmt: skip
    cells = pd.read_parquet(folder)
    ok = cells[(cells.variant == "aufc") & (cells.status == "ok")]
    expected = ((ok.ci_high - ok.ci_low) / 2).groupby(ok.target).max()
    assert len(expected) and expected.notna().all()  # the smoke study learns SST-2 and POS
    assert sorted(printed) == sorted(expected.index)
    for target, half in expected.items():
        assert printed[target] == pytest.approx(half, abs=6e-4), target
