"""The one-command study (`python -m bertrep.study`, `make demo`): its stages and what it
prints at the end. The smoke study itself is built by it (conftest.smoke_study)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from bertrep import env, study, tracking

SUMMARY = """# Analysis smoke

12 finished runs.

## Mean-CKA (biased linear CKA)

| source \\ target | sst2 |
|---|---|
| base | 0.9 |

## AuFC

| source \\ target | sst2 |
|---|---|
| base | 0.5 |

## AuFC, the original code's variant (aufc_paper)

| x |

## Does representation similarity predict transfer?

| x | y |

## Missing inputs

None: every cell was computed.
"""


def test_headline_is_the_matrices_and_their_correlation():
    out = study.headline(SUMMARY)
    titles = re.findall(r"^## (.*)$", out, flags=re.M)
    assert titles == [
        "Mean-CKA (biased linear CKA)",
        "AuFC",
        "Does representation similarity predict transfer?",
    ]
    assert "| base | 0.5 |" in out and "Missing" not in out and "aufc_paper" not in out


def test_the_analysis_gets_only_the_base_model_of_the_sweep_overrides():
    assert study.analyze_overrides("base_model=/m, max_steps=2,seed=[0]") == "base_model=/m"
    assert study.analyze_overrides("max_steps=2") == ""


def test_stages_are_the_readmes_commands():
    stages = study.stages("quick", "")
    assert [name for name, _ in stages] == ["sweep single", "sweep aufc", "sweep forgetting",
                                            "analysis"]  # fmt: skip
    aufc = stages[1][1]
    assert aufc[1:3] == ["run", str(study.PROJECT)] and "sweep_aufc" in aufc
    assert f"spec={study.PROJECT / 'sweeps' / 'quick' / 'aufc.yaml'}" in aufc
    # every stage logs into the study's own experiment, not MLflow's Default
    for _, cmd in stages:
        assert cmd[cmd.index("--experiment-name") + 1] == "bertrep-quick"


@pytest.mark.slow
def test_smoke_study_ends_with_headline_figures_and_ui(smoke_study):
    out = smoke_study["stdout"]
    for stage in ("sweep single", "sweep aufc", "sweep forgetting", "analysis", "figures"):
        assert f"=== smoke study, {stage}: " in out
    tail = out[out.index("=== smoke study done in ") :]
    assert re.match(r"=== smoke study done in (\d+m)?\d+s: sweep single (\d+m)?\d+s, ", tail)
    assert "## Mean-CKA (biased linear CKA)" in tail and "\n## AuFC\n" in tail
    assert "## Does representation similarity predict transfer?" in tail
    # the head-only trials against their runs with twice the updates, per target and source
    assert "## Did the head-only trials converge?" in tail
    for target, source in (("sst2", "base"), ("sst2", "pos"), ("pos", "base"), ("pos", "sst2")):
        assert re.search(rf"\| {target} \| {source} \| 400 \| -?\d\.\d{{3}} \| "
                         rf"-?\d\.\d{{3}} \(800\) \|", tail), (target, source)  # fmt: skip
    assert re.search(r"- pos: (every source checked converged|not converged from)", tail)
    figures = smoke_study["figures"]
    assert f"figures: {figures.resolve()}" in tail
    drawn = sorted(p.name for p in figures.glob("*.png"))
    assert "mean_cka_biased.png" in drawn and "aufc.png" in drawn
    assert Image.open(figures / "aufc.png").size[0] > 300
    # the figures are the analysis run's own files (not compared byte for byte: a test of
    # test_analyze redraws them into the same run, and a PDF carries its creation time)
    run_id = re.search(r"summary: runs:/(\w+)/", tail).group(1)
    client = MlflowClient(smoke_study["env"][env.MLFLOW_TRACKING_URI])
    logged = Path(client.get_run(run_id).info.artifact_uri) / tracking.FIGURES_DIR
    # the study's runs, sweeps and analysis alike, are in its own experiment
    experiment = client.get_experiment_by_name("bertrep-smoke")
    parents = client.search_runs([experiment.experiment_id], f"tags.`{tracking.KIND}` = 'sweep'")
    assert client.get_run(run_id).info.experiment_id == experiment.experiment_id
    assert len(parents) == 3
    assert sorted(p.name for p in logged.iterdir()) == sorted(p.name for p in figures.iterdir())
    assert f"\n{len(list(logged.iterdir()))} files\n" in out
    # one tracking server for every stage, whose links die with it: the stages link to
    # `mlflow ui` on the store itself
    assert re.search(r"=== smoke study: sqlite:///\S+ served at http://127\.0\.0\.1:\d+ ", out)
    links = re.findall(r"http://127\.0\.0\.1:(\d+)/#/experiments", out[: out.index(tail)])
    assert len(links) >= 4 and set(links) == {"5000"}  # three sweeps and the analysis
    assert re.search(r"runs: mlflow ui --backend-store-uri sqlite:///\S+, then "
                     r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs", tail)  # fmt: skip


@pytest.mark.slow
def test_smoke_study_learns_its_tasks_above_chance(smoke_study):
    """The README's smoke command shows a working pipeline, not chance-level noise: every
    seed of full fine-tuning scores SST-2 at 0.6 or more and POS at least 0.1 above its
    majority tag, on at least 100 evaluation examples each."""
    client = MlflowClient(smoke_study["env"][env.MLFLOW_TRACKING_URI])
    query = (f"tags.`{tracking.KIND}` = '{tracking.TRAIN_KIND}' and tags.mode = 'single' "
             "and tags.source_task = 'base' and tags.frozen_layers = '0' "
             "and tags.diverged = 'false'")  # fmt: skip
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, query)
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    for r in runs:
        assert int(r.data.params["max_eval_examples"]) >= 100
        metrics = r.data.metrics
        scores.setdefault(r.data.tags[tracking.TASK], {})[r.data.tags[tracking.SEED]] = (
            metrics[tracking.FINAL_SCORE], metrics[tracking.CHANCE])  # fmt: skip
    assert set(scores["sst2"]) == set(scores["pos"]) == {"0", "1"}
    for seed, (score, _) in scores["sst2"].items():
        assert score >= 0.6, ("sst2", seed, score)
    for seed, (score, chance) in scores["pos"].items():
        assert score >= chance + 0.1, ("pos", seed, score, chance)
