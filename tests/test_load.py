"""Load: 16 processes writing at once through the sweep's tracking setup (a SQLite store
served by `bertrep.tracking.server`'s `mlflow server`), each logging two metrics at every one of
300 steps as trials do (batched), one more sent alone at each of the first 60 steps (a
request each), and three artifacts; first, all log the same new probe set as a dataset
input, as trials that start together do. Every point and every byte must arrive."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from bertrep import env
from bertrep.tracking import server

pytestmark = pytest.mark.slow

PROCESSES, STEPS, DIRECT_STEPS = 16, 300, 60

# One trial's writes, as a sweep trial makes them: bertrep's run context and batched
# metric logger, plus a metric sent alone per step (a request each) and three artifacts.
WRITER = """
import sys
from pathlib import Path
import mlflow
import pandas as pd
from bertrep import tracking

i, steps, direct, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
with tracking.start_run("load", tags={"writer": str(i)}) as run:
    probe = {"task": "sst2", "split": "validation", "rows": 2, "max_length": 64, "seed": 0}
    rows = pd.DataFrame({"sentence": [0, 1], "position": [1, 2], "token_id": [7, 9]})
    tracking.log_probe_input(rows, probe | {"file": "hf://glue/sst2", "digest": "c" * 16})
    logger = tracking.MetricLogger(run.info.run_id, every=50)
    client = mlflow.MlflowClient()
    for step in range(steps):
        logger.log({"train/loss": i + step / 1000, "train/lr": step}, step)
        if step < direct:
            client.log_metric(run.info.run_id, "direct", i * 10_000 + step, step=step)
    logger.flush()
    for name, size in (("a.bin", 200_000), ("b.bin", 3_000), ("c.txt", 10)):
        path = folder / f"{i}-{name}"
        path.write_bytes(bytes((i * 7 + k) % 251 for k in range(size)))
        tracking.log_artifact(path, f"out/{name.split('.')[0]}")
"""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sixteen_writers_through_the_sweeps_server_lose_nothing(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    files = tmp_path / "files"
    files.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    with server.serve(store, tmp_path / "outputs") as url:
        MlflowClient(url).create_experiment("load")  # as the sweep does: through its server
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(i), str(STEPS), str(DIRECT_STEPS), str(files)],
                env=base | {env.MLFLOW_TRACKING_URI: url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(PROCESSES)
        ]
        outcomes = [(w.wait(timeout=600), w.stderr.read()) for w in writers]
    assert all(code == 0 for code, _ in outcomes), [err[-2000:] for _, err in outcomes]
    (log,) = (tmp_path / "outputs").glob("mlflow-server-*.log")
    assert "database is locked" not in log.read_text()
    runs = client.search_runs([client.get_experiment_by_name("load").experiment_id])
    assert sorted(int(r.data.tags["writer"]) for r in runs) == list(range(PROCESSES))
    for r in runs:
        i = int(r.data.tags["writer"])
        assert r.info.status == "FINISHED"
        expected = {
            "train/loss": [i + s / 1000 for s in range(STEPS)],
            "train/lr": [float(s) for s in range(STEPS)],
            "direct": [i * 10_000 + s for s in range(DIRECT_STEPS)],
        }
        for key, values in expected.items():
            history = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
            assert [m.step for m in history] == list(range(len(values))), (key, i)
            assert [m.value for m in history] == pytest.approx(values)
        (probe,) = r.inputs.dataset_inputs  # one stored set, linked to every run
        assert (probe.dataset.name, probe.dataset.digest) == ("sst2-probe", "c" * 16)
        # the artifacts went through the server, into the folder beside the store
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/")
        for name in ("a.bin", "b.bin", "c.txt"):
            pattern = f"mlartifacts/**/{r.info.run_id}/artifacts/out/*/{i}-{name}"
            (stored,) = tmp_path.glob(pattern)
            assert digest(stored.read_bytes()) == digest((files / f"{i}-{name}").read_bytes())
