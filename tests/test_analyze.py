"""The analysis stage: strict specs, then end to end on a store filled by the three smoke
sweeps (MiniLM, real subsampled data, real Ray, a real MLflow server): every table and
figure, one Mean-CKA and one AuFC cell recomputed here by an independent path, a second
analysis that downloads nothing, the missing-input report, and `figures` from the tables."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, copy_study, run_ok
from mlflow.tracking import MlflowClient

from bertrep import env, tracking
from bertrep.analysis.spec import load_spec, spec_from_dict
from bertrep.figures.plots import draw_matrix
from bertrep.sweeps import runs as sweep_runs
from bertrep.tracking import server

SPECS = sorted((REPO / "analysis").glob("*.yaml"))
ANALYZE = [sys.executable, "-m", "bertrep.analyze", "--spec", str(REPO / "analysis" / "smoke.yaml")]
# Tests of the download cache and of a killed analysis need not redo the intervals,
# diagnostics and shoot-out that the smoke study's own analysis checks.
TABLES_ONLY = "bootstrap.replicates=0,diagnostics=false,predictors=false"


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_analysis_spec_parses(path):
    spec = load_spec(path)
    assert spec.name == path.stem and spec.tasks and spec.estimators[0] == "biased"
    # a setting's analysis reads its three sweeps; another (families) the ones it names
    if path.stem in ("smoke", "quick", "paper"):
        assert set(spec.sweeps) == {"single", "aufc", "forgetting"}
    # it names shipped sweeps of their kind, and its AuFC grid is theirs
    shipped = {(s := yaml.safe_load(f.read_text()))["name"]: s
               for f in (REPO / "sweeps").glob("*/*.yaml")}  # fmt: skip
    for kind, name in spec.sweeps.items():
        assert name in shipped and shipped[name]["kind"] == kind, name
    aufc = shipped[spec.sweeps["aufc"]]
    ks = {k for g in aufc["grid"] for k in np.atleast_1d(g.get("frozen_layers", []))}
    assert set(spec.aufc.grid) <= ks and spec.aufc.require_endpoints


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"nmae": "x"}, "unknown key 'nmae'"),
        ({"sweeps": {"aufcc": ""}}, "unknown sweep kind 'aufcc'"),
        ({"tasks": ["sst3"]}, "unknown task 'sst3'"),
        ({"estimators": ["unbiased"]}, "estimators must be among"),
        ({"aufc": {"grid": [0, 6], "endpoints": True}}, "unknown key 'endpoints' in aufc"),
        ({"embeddings": "ture"}, "not a boolean"),
        ({"bootstrap": {"reps": 3}}, "unknown key 'reps' in bootstrap"),
        ({"bootstrap": {"replicates": 1}}, "bootstrap needs replicates 0"),
        ({"bootstrap": {"level": "high"}}, "bootstrap values must be numbers"),
        ({"subgroup_min_tokens": 3}, "subgroup_min_tokens must be a whole number >= 4"),
        ({"aufc": {"min_margin": -0.1}}, "aufc.min_margin must be a number >= 0"),
        ({"aufc": {"min_margin": "a lot"}}, "aufc.min_margin must be a number >= 0"),
    ],
)
def test_unknown_keys_and_bad_values_are_errors_naming_them(raw, message):
    with pytest.raises(ValueError, match=message):
        spec_from_dict({"name": "x", **raw})


def test_missing_matrix_cells_are_hatched_and_labelled_never_filled():
    frame = pd.DataFrame(
        [[0.9, np.nan], [0.4, 0.7], [np.nan, 0.2]],
        index=["sst2", "stsb", "base"],
        columns=["sst2", "stsb"],
    )
    fig, ax = plt.subplots()
    draw_matrix(ax, frame, title="t")
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert sorted((p.get_x(), p.get_y()) for p in hatched) == [(-0.5, 1.5), (0.5, -0.5)]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.20", "0.40", "0.70", "0.90", "missing", "missing"]
    assert np.ma.is_masked(ax.images[0].get_array()[0, 1])  # no colour under a missing cell
    plt.close(fig)


# --- end to end ---


@pytest.fixture(scope="module")
def study(smoke_study):
    """The smoke study, read through a server: the sweeps logged artifacts through
    theirs, so they read back through one too."""
    with server.serve(
        smoke_study["env"][env.MLFLOW_TRACKING_URI], smoke_study["tmp"] / "outputs"
    ) as uri:
        with server.tracking_at(uri):
            yield smoke_study | {"run": _newest_analysis()}


def _newest_analysis():
    query = f"tags.`{tracking.KIND}` = '{tracking.ANALYSIS_KIND}'"
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=query,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return runs[0]


def _tables(run_id: str, tmp: Path) -> dict[str, Path]:
    folder = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=tracking.TABLES_DIR, dst_path=str(tmp)
    )
    return {p.stem: p for p in Path(folder).glob("*.parquet")}


def _linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s Gram-space form, written out: HSIC(K, L) / sqrt(HSIC(K,K) HSIC(L,L))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum()))


def _table(run_id: str, probe: str, tmp: Path) -> np.ndarray:
    files = MlflowClient().list_artifacts(run_id, f"activations/{probe}")
    last = max(files, key=lambda f: int(f.path.rsplit("_", 1)[1].split(".")[0])).path
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=last, dst_path=str(tmp / run_id)
    )
    table = pq.read_table(local)
    width = table.schema.field("layer_1").type.list_size
    blocks = range(1, sum(name.startswith("layer_") for name in table.column_names))  # 1..L
    return np.stack(
        [table[f"layer_{h}"].combine_chunks().values.to_numpy().reshape(-1, width) for h in blocks]
    ).astype(np.float64)


@pytest.mark.slow
def test_analysis_holds_every_table_and_figure(study, tmp_path):
    run = study["run"]
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.RUN_NAME] == "analysis smoke"
    assert set(run.data.tags[tracking.ANALYSIS_SWEEPS].split(",")) == {
        f"{k}={v}" for k, v in _sweep_ids().items()
    }
    tables = _tables(run.info.run_id, tmp_path)
    expected = {
        "runs",
        "best",
        "scores",
        "aufc",
        "aufc_seeds",
        "transfer_k0",
        "mean_cka",
        "profiles",
        "forgetting",
        "forgetting_cka",
        "forgetting_summary",
        "transferability",
        "correlation",
        "missing",
    }
    assert expected <= set(tables)
    for path in tables.values():
        pq.read_table(path)  # pyarrow alone reads every table
    figures = {
        f.path.rsplit("/", 1)[1]
        for f in MlflowClient().list_artifacts(run.info.run_id, tracking.FIGURES_DIR)
    }
    for name in (
        "cka_identity",
        "cka_seeds",
        "mean_cka_biased",
        "mean_cka_debiased",
        "transfer_k0",
        "aufc",
        "freezing_curves",
        "mean_cka_vs_aufc",
        "forgetting_asymmetry",
        "shuffled_sst2_pos_proportional_seed0",
        "domains_sst2_pos_seed0",
    ):
        assert {f"{name}.png", f"{name}.pdf"} <= figures, name
    # the failed run's profile is drawn when its tables are finite, else listed as missing
    kinds = set(pd.read_parquet(tables["profiles"]).kind)
    drawn = {"cka_diverged.png", "cka_diverged.pdf"} <= figures
    listed = pd.read_parquet(tables["missing"]).what.isin(["comparable tables", "activations"])
    assert drawn == ("diverged" in kinds) and (drawn or listed.any())
    summary = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{tracking.ANALYSIS_SUMMARY}")
    assert "## Mean-CKA (biased linear CKA)" in summary and "## AuFC" in summary


@pytest.mark.slow
def test_analysis_reports_intervals_floors_diagnostics_and_predictors(study, tmp_path):
    from scipy import stats

    tables = {k: pd.read_parquet(v) for k, v in _tables(study["run"].info.run_id, tmp_path).items()}
    profiles = tables["profiles"]
    biased = profiles[profiles.estimator == "biased"]
    finite = biased[np.isfinite(biased.cka)]
    assert np.isfinite(finite.ci_low).all() and (finite.ci_low <= finite.ci_high).all()
    inside = (finite.ci_low <= finite.cka + 1e-12) & (finite.cka - 1e-12 <= finite.ci_high)
    assert inside.mean() > 0.95  # bias-corrected: the interval sits around the estimate
    identity = finite[(finite.kind == "identity") & (finite.hidden_x == finite.hidden_y)]
    assert np.allclose(identity.ci_low, 1) and np.allclose(identity.ci_high, 1)
    assert (finite.ci_replicates > 40).all()  # of the smoke spec's 50
    assert (finite.floor > 0).all() and (finite.floor < 1).all()
    debiased = profiles[profiles.estimator == "debiased"]
    assert (debiased.floor == 0).all() and debiased.ci_low.isna().all()
    mc = tables["mean_cka"]
    cells = mc[(mc.estimator == "biased") & (mc.source != mc.target)]
    assert len(cells) and (cells.ci_low <= cells.ci_high).all()
    assert (cells.floor < cells.value).all() and (cells.ci_level == 0.95).all()
    assert not cells.near_floor.fillna(False).astype(bool).any()
    assert cells.within_seed_band.isna().all()  # two seeds: no band
    au = tables["aufc"]
    two = au[(au.variant == "aufc") & (au.seeds == 2)]
    assert len(two) and (two.ci_low <= two.value + 1e-12).all()
    assert (two.value <= two.ci_high + 1e-12).all()
    assert set(tables["indistinguishable"].matrix) == {"mean_cka/biased", "aufc"}
    # rogue dimensions: shares in order; the raw profile is the analysis's own
    dims, rogue = tables["rogue_dims"], tables["rogue_profiles"]
    assert ((0 < dims.top1) & (dims.top1 <= dims.top3) & (dims.top3 <= 1)).all()
    assert ((0 < rogue.top_dim_share) & (rogue.top_dim_share <= 1)).all()
    seeds = rogue[rogue.kind == "seeds"].set_index(["probe_task", "hidden_x", "hidden_y"]).cka
    theirs = biased[biased.kind == "seeds"].set_index(["probe_task", "hidden_x", "hidden_y"]).cka
    assert np.allclose(seeds.sort_index(), theirs.loc[seeds.index].sort_index(), atol=1e-6)
    # subgroups: first sub-tokens and continuation pieces split the probe set
    groups = tables["subgroups"]
    sst2 = groups[(groups.probe_task == "sst2") & (groups.kind == "seeds")]
    assert set(sst2.group) <= {"first", "continuation"} and "first" in set(sst2.group)
    assert (groups.n >= 10).all() and any(g.startswith("tag ") for g in groups.group)
    # the shoot-out's correlations are scipy's on its own cell table
    shoot, corr = tables["predictor_cells"], tables["predictors"]
    assert set(corr.predictor) == {"mean_cka", "diag_cka", "logme"}
    assert np.isfinite(tables["logme"].value).all() and len(tables["logme"])
    # (the smoke grid has two AuFC cells, too few to rank: test_predictors.py checks the
    # values on a full table; here each row counts the cells its table has, says why it
    # has no value, and equals scipy where it has one)
    for r in corr[corr.scope == "all cells"].itertuples():
        both = shoot[np.isfinite(shoot[r.predictor]) & np.isfinite(shoot[r.outcome])]
        assert r.cells == len(both)
        if len(both) < 3:
            assert np.isnan(r.spearman) and "too few" in r.note
        else:
            expected = stats.spearmanr(both[r.predictor], both[r.outcome]).statistic
            assert r.spearman == pytest.approx(expected, abs=1e-12)
    figures = {
        f.path.rsplit("/", 1)[1]
        for f in MlflowClient().list_artifacts(study["run"].info.run_id, tracking.FIGURES_DIR)
    }
    for name in ("mean_cka_intervals", "aufc_intervals", "predictors", "rogue_dimensions",
                 "subgroups"):  # fmt: skip
        assert f"{name}.png" in figures, name
    summary = study["stdout"]
    assert "## How sure: 95% intervals" in summary
    assert "## Which cheap signal predicts transfer?" in summary


def _sweep_ids() -> dict[str, str]:
    query = f"tags.`{tracking.KIND}` = '{tracking.SWEEP_KIND}'"
    out = {}
    for r in mlflow.search_runs(
        search_all_experiments=True, filter_string=query, output_format="list"
    ):
        out[sweep_runs.sweep_kind(r)] = r.info.run_id
    return out


@pytest.mark.slow
def test_one_mean_cka_and_one_aufc_cell_recomputed_independently(study, tmp_path):
    tables = {k: pd.read_parquet(v) for k, v in _tables(study["run"].info.run_id, tmp_path).items()}
    runs = tables["runs"]
    full = runs[
        (runs["mode"] == "single")
        & (runs.source_task == "base")
        & (runs.frozen_layers == 0)
        & ~runs.diverged
    ]
    # Mean-CKA(base -> pos): the pretrained model against each pos seed, minus pos's
    # seed 0 against seed 1, on pos's probe set, blocks 1..L.
    targets = full[full.task == "pos"].sort_values("seed").run_id.tolist()
    (pretrained,) = runs[runs["mode"] == "extract"].run_id
    states = {r: _table(r, "pos", tmp_path) for r in [pretrained, *targets]}
    profile = lambda a, b: np.array([[_linear_cka(x, y) for y in states[b]] for x in states[a]])  # noqa: E731
    cross = np.mean([profile(pretrained, t) for t in targets], axis=0)
    self_ = profile(targets[0], targets[1])
    expected = 1 + np.mean(cross - self_)
    mc = tables["mean_cka"]
    cell = mc[(mc.source == "base") & (mc.target == "pos") & (mc.estimator == "biased")]
    assert cell.value.iloc[0] == pytest.approx(expected, abs=1e-6)
    # AuFC from raw final scores, best_B the mean k = 0 score from the pretrained model:
    client = MlflowClient()
    metric = lambda r, key: client.get_run(r).data.metrics[key]  # noqa: E731
    au = tables["aufc"]
    for source, target in (("sst2", "pos"), ("base", "pos")):
        bests = full[full.task == target].run_id
        best = np.mean([metric(r, tracking.FINAL_SCORE) for r in bests])
        grid = runs[
            (runs.task == target) & (runs.source_task == source) & (runs["mode"] == "single")
        ]
        grid = grid[grid.run_id.isin(bests) | (grid.frozen_layers > 0) | (source != "base")]
        # a k = L run with more updates than its cell's fewest is a convergence check
        steps = [int(client.get_run(r).data.params["max_steps"]) for r in grid.run_id]
        grid = grid.assign(max_steps=steps)
        grid = grid[
            grid.max_steps == grid.groupby(["frozen_layers", "seed"]).max_steps.transform("min")
        ]
        assert len(grid) == 6  # k = 0, 3 and 6, two seeds
        values = []
        for _, seed_runs in grid.groupby("seed"):
            by_k = seed_runs.set_index("frozen_layers").sort_index()
            chance = metric(by_k.run_id.iloc[0], tracking.CHANCE)
            raw = np.array([metric(r, tracking.FINAL_SCORE) for r in by_k.run_id])
            x = by_k.index.to_numpy() / seed_runs.num_layers.iloc[0]  # k / L
            values.append(np.trapezoid((raw - chance) / (best - chance), x))
        cell = au[(au.source == source) & (au.target == target) & (au.variant == "aufc")]
        assert cell.value.item() == pytest.approx(np.mean(values), abs=1e-9), (source, target)
        assert cell.seeds.item() == 2


@pytest.mark.slow
def test_missing_inputs_are_listed_with_their_command_and_left_empty(study, tmp_path):
    tables = {k: pd.read_parquet(v) for k, v in _tables(study["run"].info.run_id, tmp_path).items()}
    missing = tables["missing"].set_index(["what", "detail"]).command
    # STS-B is no AuFC target of the smoke grid: each empty cell is listed and labelled,
    # none filled
    assert missing[("AuFC", "sst2->stsb: no runs")].startswith("mlflow run . -e sweep_aufc")
    au = tables["aufc"]
    stsb = au[au.target == "stsb"]
    assert len(stsb) == 2 * 4 and set(stsb.status) == {"missing"} and stsb.value.isna().all()
    # the grid has k = 0, 3, 6: the original code's variant (k = 1..L) has no cell, so its
    # figure is not drawn and the summary says what it needs
    assert au[au.variant == "aufc_paper"].value.isna().all()
    assert "- `aufc_paper.png`: no cell has a number; it needs runs at every k" in study["stdout"]
    summary = study["stdout"]
    assert "## Missing inputs" in summary and "None: every cell was computed" not in summary


@pytest.mark.slow
def test_second_analysis_downloads_nothing_and_figures_redraw_from_tables(study, tmp_path):
    store, tmp = study["env"], study["tmp"]
    first = study["run"]
    assert first.data.metrics[tracking.ANALYSIS_DOWNLOADS] > 0
    run_ok([*ANALYZE, "--overrides", TABLES_ONLY], store, tmp)
    second = _newest_analysis()
    assert second.info.run_id != first.info.run_id
    assert second.data.metrics[tracking.ANALYSIS_DOWNLOADS] == 0
    assert second.data.metrics[tracking.ANALYSIS_CACHE_HITS] > 0
    out = tmp_path / "figures"
    run_ok(
        [sys.executable, "-m", "bertrep.figures", "--run_id", first.info.run_id, "--out", str(out)],
        store,
        tmp,
    )
    assert (out / "aufc.png").stat().st_size > 10_000 and (out / "cka_seeds.pdf").exists()


def test_mlproject_has_the_analysis_entry_points():
    entries = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    assert set(entries["analyze"]["parameters"]) == {"spec", "overrides"}
    assert set(entries["figures"]["parameters"]) == {"run_id", "out"}


@pytest.mark.slow
def test_killed_analysis_is_never_finished_and_its_downloads_are_kept(smoke_study, tmp_path):
    """SIGTERM while the analysis downloads tables: its run ends KILLED (not FINISHED, not
    left RUNNING); the next analysis finishes and reads what was downloaded from the cache."""
    store = copy_study(smoke_study, tmp_path / "study")
    mlflow.set_tracking_uri(store[env.MLFLOW_TRACKING_URI])
    before = {
        r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
    }
    cache = Path(store[env.CACHE_DIR]) / "activations"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [*ANALYZE, "--overrides", TABLES_ONLY]
    proc = subprocess.Popen(cmd, env=store, cwd=tmp_path / "study", stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if any(cache.glob("*/*.parquet")):
                break
            time.sleep(0.01)
        # Frozen the moment its first table lands, the analysis cannot finish before the
        # SIGTERM arrives, however fast the machine: the signal waits for SIGCONT.
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None, "the analysis ended before it could be killed"
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = len(list(cache.glob("*/*.parquet")))
    mlflow.set_tracking_uri(store[env.MLFLOW_TRACKING_URI])
    killed = _newest_analysis()
    assert killed.info.run_id not in before
    assert killed.info.status == "KILLED" and proc.returncode != 0
    run_ok(cmd, store, tmp_path / "study")
    again = _newest_analysis()
    assert again.info.status == "FINISHED"
    assert again.data.metrics[tracking.ANALYSIS_CACHE_HITS] >= kept > 0
