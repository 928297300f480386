"""Early stopping on a held-out tenth of the training examples: the split, when it stops,
and the weights it keeps."""

from __future__ import annotations

import numpy as np
import pytest
from accelerate import Accelerator
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer

from bertrep import tracking
from bertrep.analysis.collect import Store
from bertrep.data.encode import encode
from bertrep.data.tasks import Example, get_task
from bertrep.errors import InputError
from bertrep.train import run
from bertrep.training.config import Runtime, TrainConfig
from bertrep.training.loop import Context, evaluate, load_task_data
from bertrep.training.model import load_model
from bertrep.training.stopping import BEST_STEP, dev_metric, split_dev

QUIET = Runtime(progress=False)


def test_the_held_out_tenth_is_fixed_and_apart(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    examples = [Example((f"sentence {i}",), i % 2) for i in range(95)]
    data = encode(get_task("sst2"), examples, tok, 16)
    data.key = "ninety-five"
    train, dev = split_dev(data)
    assert (len(train), len(dev)) == (85, 10)
    kept = {tuple(ids) for ids in train.input_ids}
    assert not kept & {tuple(ids) for ids in dev.input_ids}
    again_train, again_dev = split_dev(data)
    assert [list(i) for i in again_dev.input_ids] == [list(i) for i in dev.input_ids]
    assert train.key != dev.key != data.key and train.key and dev.key


def test_early_stopping_needs_single_mode_and_eval_every():
    with pytest.raises(InputError, match="early_stopping=3 needs mode=single and eval_every > 0"):
        TrainConfig(early_stopping=3)
    with pytest.raises(InputError, match="not mode=sequential"):
        TrainConfig(early_stopping=3, eval_every=5, mode="sequential", source_task="pos")


def stopping_run(tiny_model, data_dir, **changes) -> TrainConfig:
    values = dict(
        task="sst2", base_model=str(tiny_model), data_dir=str(data_dir), max_steps=200,
        batch_size=8, max_train_examples=80, max_eval_examples=32, probe_tokens=50,
        eval_every=2, early_stopping=3, save_checkpoint=True, frozen_layers=1,
        diverge_margin=0.0, best_score=1.0,
    )  # fmt: skip
    return TrainConfig(**(values | changes))


def test_no_better_score_stops_after_patience_scores(tiny_model, data_dir, mlflow_store):
    """lr 1e-12 leaves every score where it was: the first score stays the best, and
    training stops at the (1 + patience)-th, 4 x eval_every updates."""
    run_id = run(stopping_run(tiny_model, data_dir, lr=1e-12), QUIET)
    client = MlflowClient()
    dev = client.get_metric_history(run_id, dev_metric("accuracy"))
    assert [m.step for m in dev] == [2, 4, 6, 8]
    assert len({m.value for m in dev}) == 1
    assert [m.step for m in client.get_metric_history(run_id, tracking.LOSS)] == list(range(1, 9))
    assert client.get_run(run_id).data.metrics[BEST_STEP] == 2


def test_the_kept_weights_score_the_best_dev_score(tiny_model, data_dir, mlflow_store):
    """Trained hard, the run keeps the weights of its best held-out score: its checkpoint
    scores exactly that on the held-out examples."""
    cfg = stopping_run(tiny_model, data_dir, lr=3e-3, max_steps=40)
    run_id = run(cfg, QUIET)
    client = MlflowClient()
    dev = client.get_metric_history(run_id, dev_metric("accuracy"))
    best = max(dev, key=lambda m: (m.value, -m.step))
    assert client.get_run(run_id).data.metrics[BEST_STEP] == best.step
    assert dev[-1].step == 40 or dev[-1].step - best.step == 3 * cfg.eval_every
    path = client.download_artifacts(run_id, tracking.CHECKPOINT)
    model, tok, _ = load_model(path, ["sst2"])
    model.freeze(cfg.frozen_layers)
    task = load_task_data(cfg, "sst2", tok)
    _, held_out = split_dev(task.train)
    ctx = Context(cfg, Accelerator(cpu=True), None, tok.pad_token_id, "", path, QUIET)
    again = evaluate(ctx, model, task, held_out)["accuracy"]
    assert again == pytest.approx(best.value, abs=1e-9)
    assert np.isfinite(client.get_run(run_id).data.metrics[tracking.FINAL_SCORE])


def test_a_constant_rate_makes_a_longer_budget_repeat_a_run_that_stopped(
    tiny_model, data_dir, mlflow_store, tmp_path
):
    """Without warm-up and at a constant rate, a run that early-stopped before its
    max_steps is repeated update for update by the same run with twice the max_steps: the
    same losses, the same stop, the same score (what the convergence check of a stopped
    head-only trial reads). With linear decay the rate depends on max_steps from the
    second update on: the losses part after it."""
    common = dict(lr=3e-3, warmup_ratio=0.0, eval_every=2, early_stopping=3)
    client = MlflowClient()

    def history(run_id):
        losses = client.get_metric_history(run_id, tracking.LOSS)
        return [m.value for m in sorted(losses, key=lambda m: m.step)]

    runs = [
        run(stopping_run(tiny_model, data_dir, schedule=schedule, max_steps=steps, **common), QUIET)
        for schedule in ("constant", "linear") for steps in (100, 200)
    ]  # fmt: skip
    constant, constant_longer, linear, linear_longer = runs
    stopped = len(history(constant))
    assert stopped < 100  # it stopped on its own (a fixed, seeded outcome)
    assert history(constant_longer) == history(constant)
    metrics = [client.get_run(r).data.metrics for r in (constant, constant_longer)]
    assert metrics[0][BEST_STEP] == metrics[1][BEST_STEP] == stopped - 3 * 2
    assert metrics[0][tracking.FINAL_SCORE] == metrics[1][tracking.FINAL_SCORE]
    assert metrics[0][tracking.UPDATES] == metrics[1][tracking.UPDATES] == stopped
    # what the sweep and the analysis read from it: the first is its own longer run
    store = Store(cache_dir=tmp_path)
    assert [store.train_run(client.get_run(r)).stopped_early for r in runs] == [
        True, True, False, False]  # fmt: skip
    first, second = history(linear), history(linear_longer)
    assert first[:2] == second[:2] and first[2] != second[2]
