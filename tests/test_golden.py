"""Golden numbers of tiny fixed training runs on the fixture's real rows (tests/data), as
torchtune's recipe tests do: a change to tokenization, batching, the optimiser, the
schedule, the head or the loss moves them. They need no data folder; the goldens on the
data folder's own rows are tests/test_train.py's."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bertrep import tracking
from bertrep.train import run
from bertrep.training.config import Runtime, TrainConfig

# The session's tiny BERT (2 blocks, width 32, seed 0), seed 0, 4 updates of 8 at lr 1e-3
# on the fixture's 64 training rows, scored on its 48 evaluation rows; torch 2.13.0 CPU.
GOLDEN = {
    "sst2": ([0.696798, 0.694605, 0.691378, 0.692711], 0.5208333333333334),
    "stsb": ([10.823357, 15.118341, 15.551375, 6.626553], -0.22831186652183533),
    "pos": ([3.895337, 3.845062, 3.824225, 3.810642], 0.0708955223880597),
}


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_golden_losses_and_score_on_the_fixture(tiny_model, fixture_data, mlflow_store, task):
    losses, score = GOLDEN[task]
    cfg = TrainConfig(base_model=str(tiny_model), data_dir=str(fixture_data), task=task,
                      max_steps=4, batch_size=8, lr=1e-3, probe_tokens=100)  # fmt: skip
    run_id = run(cfg, Runtime(progress=False))
    client = MlflowClient()
    history = sorted(client.get_metric_history(run_id, tracking.LOSS), key=lambda m: m.step)
    final = client.get_run(run_id).data.metrics[tracking.FINAL_SCORE]
    np.testing.assert_allclose([m.value for m in history], losses, rtol=2e-4)
    assert final == pytest.approx(score, abs=1e-3)
