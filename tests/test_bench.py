"""Benchmarks meant for other machines still run here, on a tiny setting."""

from __future__ import annotations

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
