"""The analysis stage: from what MLflow holds to the paper's answers, in one MLflow run.

    python -m bertrep.analyze --spec analysis/quick.yaml
    mlflow run . -e analyze --env-manager local -P spec=analysis/quick.yaml

An analysis spec (analysis/README.md) names the sweeps to read (by name or parent run
id; by default the newest finished sweep of each kind), the tasks, the base model, the
CKA estimators and the AuFC grid. The stage reads runs by their tags, source models
through the registry and activation tables through a content-keyed download cache;
it runs no model. It logs one analysis run (tag bertrep.kind=analysis) with tidy
Parquet tables (tables/), the spec, a Markdown summary and every figure (figures/).
What it lacks it lists, with the command that produces it, and it goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from bertrep import env, figures, tracking
from bertrep.analysis import across, cells, summary
from bertrep.analysis.cells import labels, matrix, typed
from bertrep.analysis.collect import MissingInput, Store, TrainRun, log_tables
from bertrep.analysis.convergence import convergence_table, split_longer
from bertrep.analysis.diagnostics import rogue_tables, subgroup_profiles
from bertrep.analysis.forgetting import forgetting_summary, forgetting_tables
from bertrep.analysis.intervals import (
    Intervals,
    aufc_intervals,
    indistinguishable,
    seed_band_table,
)
from bertrep.analysis.predictors import logme_table, shootout
from bertrep.analysis.profiles import mean_cka_tables, profile_table, task_profiles
from bertrep.analysis.schemas import CORRELATION_COLUMNS, MISSING_COLUMNS, TRANSFERABILITY_COLUMNS
from bertrep.analysis.spec import AnalysisSpec, load_spec
from bertrep.analysis.tables import (
    Inputs,
    Missing,
    aufc_tables,
    best_scores,
    transfer_k0,
    transfer_scores,
)
from bertrep.data.identity import model_identity
from bertrep.errors import InputError
from bertrep.maths import transfer
from bertrep.sweeps.spec import SETTINGS
from bertrep.tracking import server


def collect(spec: AnalysisSpec, store: Store) -> tuple[dict[str, str], list[TrainRun], list]:
    """The sweeps' parent ids, their finished runs (each once) and what is missing."""
    parents, runs, missing = {}, {}, []
    for kind, ref in spec.sweeps.items():
        try:
            parent = store.sweep(kind, ref)
        except MissingInput as error:
            missing.append(Missing("sweep", str(error), kind))
            continue
        parents[kind] = parent.info.run_id
        for run in store.sweep_runs(parent):
            runs.setdefault(run.run_id, run)
    if not runs:
        named = ", ".join(f"{k}={v or 'newest'}" for k, v in spec.sweeps.items())
        raise MissingInput(
            f"analysis {spec.name}: no finished training runs in the sweeps it names "
            f"({named}); "
            f"run a sweep first, e.g. {sweep_command('aufc', _setting(spec))}"
        )
    return parents, list(runs.values()), missing


def _base_models(spec: AnalysisSpec, runs: list[TrainRun]) -> dict[str, list[TrainRun]]:
    """The runs of each base model analysed: the spec's one, else every one the sweeps
    hold (numbers from different base models never share a matrix)."""
    if spec.base_model:
        wanted = model_identity(spec.base_model)
        kept = [r for r in runs if model_identity(r.root_model) == wanted]
        if not kept:
            raise MissingInput(f"no run starts from base_model {spec.base_model}")
        return across.by_base_model(kept)
    return across.by_base_model(runs)


def compute(inputs: Inputs, spec: AnalysisSpec) -> dict[str, pd.DataFrame]:
    """Every table of the analysis, by name (tables/<name>.parquet). Each is computed
    inside `inputs.computing(name)`, so a failure names the table (and cell) it was in."""
    out: dict[str, pd.DataFrame] = {}

    def table(name: str, build, *args):
        with inputs.computing(f"table {name}"):
            return build(*args)

    out["runs"] = table("runs", lambda: pd.DataFrame([_run_row(r) for r in inputs.runs]))
    out["best"] = table("best", best_scores, inputs, spec.aufc.min_margin)
    # a run repeating a cell of the grid with more updates checks convergence (k = L)
    scores, longer = split_longer(table("scores", transfer_scores, inputs, out["best"]))
    out["scores"] = scores
    out["convergence"] = table("convergence", convergence_table, scores, longer)
    out["aufc"], out["aufc_seeds"] = table("aufc", aufc_tables, out["scores"], spec.aufc, inputs)
    out["aufc"] = table("aufc", aufc_intervals, out["aufc"], out["aufc_seeds"], spec.bootstrap)
    out["transfer_k0"] = table("transfer_k0", transfer_k0, inputs, out["scores"])
    out["mean_cka"], cross_profiles = table("mean_cka", mean_cka_tables, inputs)
    profiles = table("profiles", task_profiles, inputs)
    out["profiles"] = table("profiles", profile_table, [*profiles, *cross_profiles])
    out["forgetting"], forgetting_rows = table("forgetting", forgetting_tables, inputs, out["best"])
    out["forgetting_cka"] = table("forgetting_cka", profile_table, forgetting_rows)
    out["forgetting_summary"] = table("forgetting_summary", forgetting_summary, out["forgetting"])
    out["transferability"], out["correlation"] = table("transferability", _comparisons, inputs, out)
    if spec.bootstrap.replicates:
        out["seed_band"] = table("seed_band", seed_band_table, out["profiles"])
        mc, au = out["mean_cka"], out["aufc"]
        out["indistinguishable"] = table(
            "indistinguishable",
            lambda: pd.concat(
                [indistinguishable(mc[mc.estimator == "biased"], "mean_cka/biased"),
                 indistinguishable(au[au.variant == "aufc"], "aufc")],
                ignore_index=True,
            ),
        )  # fmt: skip
    if spec.diagnostics:
        out["rogue_dims"], out["rogue_profiles"] = table("rogue_dims", rogue_tables, inputs)
        out["subgroups"] = table("subgroups", subgroup_profiles, inputs, spec.subgroup_min_tokens)
    if spec.predictors:
        out["logme"] = table("logme", logme_table, inputs)
        out["predictor_cells"], out["predictors"] = table(
            "predictors", shootout, out, inputs.tasks, spec.bootstrap
        )
    table("missing", _missing_cells, inputs, out)
    rows = [{"what": m.what, "detail": m.detail,
             "command": sweep_command(m.kind, inputs.setting) if m.kind else cells.MORE_UPDATES}
            for m in inputs.missing]  # fmt: skip
    out["missing"] = typed(pd.DataFrame(rows).drop_duplicates(), MISSING_COLUMNS)
    return out


def _setting(spec: AnalysisSpec) -> str:
    """The shipped setting an analysis spec is of (its name: smoke, quick, paper), else ""."""
    return spec.name if spec.name in SETTINGS else ""


def sweep_command(kind: str, setting: str = "") -> str:
    """The command that runs a sweep of `kind` for the setting analysed (sweeps/<setting>/),
    or for the user's own spec where the analysis is of no shipped setting."""
    spec = f"sweeps/{setting}/{kind}.yaml" if setting in SETTINGS else f"<your {kind} sweep spec>"
    return f"mlflow run . -e sweep_{kind} --env-manager local -P spec={spec}"


def _missing_cells(inputs: Inputs, out: dict[str, pd.DataFrame]) -> None:
    """List every empty cell of a headline matrix that nothing listed yet explains, with
    its label."""
    headline = {
        "Mean-CKA": (out["mean_cka"], {"estimator": inputs.estimators[0]}),
        "AuFC": (out["aufc"], {"variant": "aufc"}),
        "transfer k=0": (out["transfer_k0"], {}),
    }
    for name, (table, where) in headline.items():
        frame, status = matrix(table, inputs.tasks, **where), labels(table, inputs.tasks, **where)
        said = " ".join(f"{m.detail} " for m in inputs.missing if m.what == name)
        for source, target in frame.stack(future_stack=True).index:
            explained = f"{source}->{target}" in said or f"column {target}:" in said
            if np.isfinite(frame.loc[source, target]) or explained:
                continue
            why = status.loc[source, target]
            if why == cells.MISSING:
                why = "source = target: not in the sweep's grid" if source == target else "no runs"
            inputs.missing.append(
                Missing(name, f"{source}->{target}: {why}", cells.remedy_kind(why))
            )


def _run_row(run: TrainRun) -> dict:
    skip = ("params", "probe_digests", "tables_from", "word_digests")
    row = {k: v for k, v in dataclasses.asdict(run).items() if k not in skip}
    return row | {
        "label": run.label,
        "probe_digests": ",".join(f"{t}={d}" for t, d in sorted(run.probe_digests.items())),
        "word_digests": ",".join(f"{t}={d}" for t, d in sorted(run.word_digests.items())),
        # probe task=runs:/<run>/<table> of each table referenced instead of extracted
        "tables_from": ",".join(f"{t}={tracking.RUNS_URI}{r}/{a}"
                                for t, (r, a) in sorted(run.tables_from.items())),
    }  # fmt: skip


def _comparisons(inputs: Inputs, out: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Average transferability per source under each metric (off-diagonal row means of
    the task rows, missing cells left out), and the correlation of Mean-CKA with each
    behavioural matrix over the off-diagonal task cells both have."""
    tasks = list(inputs.tasks)
    metrics = {
        f"mean_cka/{e}": matrix(out["mean_cka"], inputs.tasks, estimator=e)
        for e in inputs.estimators
    }
    metrics["aufc"] = matrix(out["aufc"], inputs.tasks, variant="aufc")
    metrics["aufc_paper"] = matrix(out["aufc"], inputs.tasks, variant="aufc_paper")
    metrics["transfer_k0"] = matrix(out["transfer_k0"], inputs.tasks)
    squares = {k: m.loc[tasks, tasks].to_numpy(dtype=float) for k, m in metrics.items()}
    off = ~np.eye(len(tasks), dtype=bool)
    rows = []
    for name, square in squares.items():
        # one task has no off-diagonal cell: every row is missing
        means = transfer.average_transferability(square) if len(tasks) >= 2 else [np.nan]
        counts = (off & np.isfinite(square)).sum(axis=1)
        rows += [{"metric": name, "source": task, "targets": int(c), "value": float(v)}
                 for task, c, v in zip(tasks, counts, means, strict=True)]  # fmt: skip
    corr = []
    for e in inputs.estimators:
        x = squares[f"mean_cka/{e}"]
        for outcome in ("aufc", "aufc_paper", "transfer_k0"):
            y = squares[outcome]
            row = {"x": f"mean_cka/{e}", "y": outcome,
                   "cells": int((off & np.isfinite(x) & np.isfinite(y)).sum())}  # fmt: skip
            try:
                c = transfer.matrix_correlation(x, y)
                row |= {"pearson": c.pearson, "spearman": c.spearman}
            except ValueError as error:  # too few cells, a constant matrix, one task
                row["note"] = str(error)
            corr.append(row)
    return typed(rows, TRANSFERABILITY_COLUMNS), typed(corr, CORRELATION_COLUMNS)


def _experiment(spec: AnalysisSpec, parents: dict[str, str], store: Store) -> str:
    """Where the analysis run goes: under `mlflow run` its own run ("": MLflow resumes
    it); else the spec's experiment, else the experiment of the sweeps it read."""
    if os.environ.get(env.MLFLOW_RUN_ID):
        return ""
    if spec.experiment:
        return spec.experiment
    first = store.client.get_run(next(iter(parents.values())))
    return store.client.get_experiment(first.info.experiment_id).name


class AnalysisFailed(RuntimeError):
    """The analysis raised: one line naming what it was computing, the exception and
    where its traceback was logged."""


def _compute_and_log(by_base: dict[str, Inputs], spec: AnalysisSpec, spec_text: str,
                     parents: dict, store: Store):  # fmt: skip
    """The tables, summary and figures, logged into the active run: as they are for one
    base model; for several, each base model's in its own folder (tables/<model>/,
    figures/<model>/) and the comparisons across them at the top."""
    several = len(by_base) > 1
    all_tables, texts, drawn, unmatched = {}, [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for base, inputs in by_base.items():
            sub = across.slug(base) if several else ""
            tables = all_tables[base] = compute(inputs, spec)
            with inputs.computing("writing the tables"):
                log_tables(tables, folder / tracking.TABLES_DIR / sub, sub)
            with inputs.computing("the summary"):
                text = summary.markdown(spec, tables, parents)
            texts.append(f"# Base model {base}\n\n{text}" if several else text)
            drawn += figures.draw_all(tables, folder / "figures" / sub, spec.tasks,
                                      inputs.computing)  # fmt: skip
        if several:
            inputs = next(iter(by_base.values()))
            with inputs.computing("the comparisons across base models"):
                tables, text, unmatched = _across(by_base, all_tables, spec, store)
                log_tables(tables, folder / tracking.TABLES_DIR / "across", "")
                texts.insert(0, text)
                drawn += figures.across_figures(tables, folder / "figures", spec.tasks)
        mlflow.log_text("\n\n".join(texts), tracking.ANALYSIS_SUMMARY)
        mlflow.log_text(
            spec_text or json.dumps(dataclasses.asdict(spec), indent=1), tracking.ANALYSIS_SPEC
        )
        mlflow.log_artifacts(str(folder / "figures"), tracking.FIGURES_DIR)
    # what each base model lacks (what they share, such as a sweep, once), and the pairs
    # of models not compared
    lacks = {(m.what, m.detail) for t in all_tables.values() for m in t["missing"].itertuples()}
    return len(lacks) + unmatched, "\n\n".join(texts), drawn


def _across(by_base: dict[str, Inputs], all_tables: dict, spec: AnalysisSpec, store: Store):
    """The tables across base models (side by side, cross-model CKA), their summary, and
    how many pairs of models were not compared."""
    groups = {base: inputs.runs for base, inputs in by_base.items()}
    cross, unmatched = across.cross_model_cka(groups, spec.tasks, store, spec.estimators)
    tables = {
        "base_models": across.side_by_side(all_tables, spec.tasks, spec.estimators[0]),
        "cross_model_cka": cross,
    }
    return tables, across.summary_text(tables, unmatched), len(unmatched)


def _failed(spec: AnalysisSpec, inputs: Inputs, run_id: str, error: Exception) -> AnalysisFailed:
    """Keep the traceback with the run (its status is FAILED once the error leaves it) and
    say in one line what failed where."""
    where = f"{tracking.RUNS_URI}{run_id}/{tracking.ANALYSIS_TRACEBACK}"
    try:
        mlflow.log_text(traceback.format_exc(), tracking.ANALYSIS_TRACEBACK)
    except Exception:  # the store may be what failed
        where = "not logged: the store failed too"
    doing = inputs.failed_at or "the analysis"
    return AnalysisFailed(
        f"analysis {spec.name} failed computing {doing}: {type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else ''} (traceback: {where})"
    )


def analyze(spec: AnalysisSpec, spec_text: str = "") -> mlflow.entities.Run:
    """Run the whole analysis and log it; returns the analysis run."""
    started = time.time()
    store = Store(spec.experiment)
    parents, runs, missing = collect(spec, store)
    intervals = Intervals(spec.bootstrap) if spec.bootstrap.replicates else None
    by_base = {
        base: Inputs(
            group,
            store,
            spec.tasks,
            spec.estimators,
            spec.embeddings,
            list(missing),
            intervals,
            setting=_setting(spec),
        )  # fmt: skip
        for base, group in _base_models(spec, runs).items()
    }
    tags = {
        tracking.KIND: tracking.ANALYSIS_KIND,
        tracking.ANALYSIS_NAME: spec.name,
        tracking.ANALYSIS_SWEEPS: ",".join(f"{k}={v}" for k, v in parents.items()),
        tracking.RUN_NAME: f"analysis {spec.name}",
    }
    with tracking.start_run(_experiment(spec, parents, store), tags=tags) as run:
        try:
            missing, text, drawn = _compute_and_log(by_base, spec, spec_text, parents, store)
        except Exception as error:
            failed = next(
                (i for i in by_base.values() if i.failed_at), next(iter(by_base.values()))
            )
            raise _failed(spec, failed, run.info.run_id, error) from error
        mlflow.log_metrics(
            {
                tracking.ANALYSIS_DOWNLOADS: store.cache.downloads,
                tracking.ANALYSIS_CACHE_HITS: store.cache.hits,
                tracking.ANALYSIS_MISSING: missing,
                tracking.ANALYSIS_FIGURES: len(drawn),
                tracking.ANALYSIS_SECONDS: time.time() - started,
            }
        )
    print(text)
    print(
        f"analysis {spec.name}: run {run.info.run_id}; {len(drawn)} figures; "
        f"{store.cache.downloads} tables downloaded, {store.cache.hits} from the cache"
    )
    return mlflow.get_run(run.info.run_id)


def main(argv: list[str] | None = None) -> None:
    tracking.end_killed_on_sigterm()  # a killed analysis run ends KILLED, never FINISHED
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="analysis/quick.yaml", help="an analysis spec (YAML)")
    parser.add_argument("--overrides", default="", help='e.g. "base_model=/path,tasks=[sst2]"')
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.overrides)
    except (InputError, FileNotFoundError) as error:
        raise SystemExit(f"bertrep.analyze: {error}") from None
    os.environ.setdefault(env.MLFLOW_ARTIFACTS_PROGRESS_BAR, "false")
    store = server.lasting_store()
    try:
        with server.through_server():
            run = analyze(spec, Path(args.spec).read_text())
    except MissingInput as error:
        raise SystemExit(str(error)) from None
    except AnalysisFailed as error:  # the run is FAILED, its traceback logged with it
        raise SystemExit(f"bertrep.analyze: {error}") from None
    print(f"runs: {server.runs_page(store, run.info.experiment_id)}")


if __name__ == "__main__":
    main()
