"""The analysis on every outcome training can produce, from stores of synthetic runs: no
training, the runs and their small activation tables logged with the project's own
functions (tracking, sweep_runs, activations), so each outcome is exact and cheap.

Each case is one store: a target whose full fine-tuning scores exactly chance, one whose
best is below chance, one above chance by less than the analysis spec's margin, a source
whose every seed diverged, a grid of one seed, a target without its k = L trial, a task
without activation tables, a constant layer, a single task in the whole store, and all
of them at once. The analysis must finish FINISHED on each, label every cell without a
number (bertrep.analysis.cells), keep numeric columns numeric, and `bertrep.figures`
must redraw every figure, none of them blank.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from bertrep import tracking
from bertrep.analysis import cells
from bertrep.analysis.cells import FLAG, FLOAT, INT
from bertrep.analysis.collect import read_tables
from bertrep.analysis.spec import spec_from_dict
from bertrep.analyze import analyze
from bertrep.data import activations
from bertrep.data.probe_sets import ProbeSet
from bertrep.figures import redraw
from bertrep.sweeps import runs as sweep_runs
from bertrep.tracking import registry

L, WIDTH, SENTENCES, PER_SENTENCE = 3, 8, 12, 4  # 48 probe tokens per task
ROOT = "synthetic/bert-l3"  # a base model no one can load: labels (LogME, subgroups) missing
CHANCE = {"sst2": 0.5, "stsb": 0.0, "pos": 0.2}
BEST = {"sst2": 0.8, "stsb": 0.6, "pos": 0.7}


@dataclasses.dataclass
class Case:
    """What the store holds; every default is a healthy outcome."""

    tasks: tuple[str, ...] = ("sst2", "stsb", "pos")
    seeds: tuple[int, ...] = (0, 1)
    ks: tuple[int, ...] = (0, 2, L)
    at_chance: tuple[str, ...] = ()  # full fine-tuning scores exactly chance, every seed
    below_chance: tuple[str, ...] = ()  # ... below chance
    diverged: tuple[str, ...] = ()  # every seed of full fine-tuning tagged diverged
    no_last_k: tuple[str, ...] = ()  # targets without their k = L trials
    no_tables: tuple[str, ...] = ()  # tasks whose runs log no activation table
    constant_layer: int | None = None  # a hidden state constant in every table
    min_margin: float = 0.0  # the analysis spec's aufc.min_margin


def _probe(task: str) -> ProbeSet:
    sentence = np.repeat(np.arange(SENTENCES), PER_SENTENCE)
    position = np.tile(np.arange(1, PER_SENTENCE + 1), SENTENCES)
    token_id = 1000 + np.arange(len(sentence))
    digest = hashlib.sha256(f"synthetic {task}".encode()).hexdigest()[:16]
    return ProbeSet(sentence, position, token_id, {"task": task, "digest": digest})


def _states(case: Case, task: str, model: str) -> np.ndarray:
    """(L + 1, n, width): a task's shared structure plus the model's own drift, growing
    with depth (so profiles differ between models), one layer constant if asked."""
    n = SENTENCES * PER_SENTENCE
    common = np.random.default_rng(_number(task)).normal(size=(L + 1, n, WIDTH))
    own = np.random.default_rng(_number(model)).normal(size=(L + 1, n, WIDTH))
    depth = np.linspace(0.1, 1.0, L + 1)[:, None, None]
    states = common + depth * own
    if case.constant_layer is not None:
        states[case.constant_layer] = 0.25
    return states


def _number(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class Store:
    """Logs synthetic runs into the current tracking store."""

    def __init__(self, case: Case, tmp: Path) -> None:
        self.case, self.tmp = case, tmp
        self.runs: list[str] = []
        self.experiment = "synthetic"

    def run(self, task: str, *, source: str = "base", k: int = 0, seed: int = 0,
            score: float, mode: str = "single", diverged: bool = False,
            base_model: str = ROOT, probe_tasks: tuple = ()) -> tuple[str, str]:  # fmt: skip
        """One finished run; (run id, registered URI or "")."""
        probes = probe_tasks or (task,)
        tags = {tracking.KIND: tracking.TRAIN_KIND, tracking.MODE: mode, tracking.TASK: task,
                tracking.BASE_MODEL: base_model, tracking.SOURCE_TASK: source,
                tracking.FROZEN_LAYERS: k, tracking.SEED: seed, tracking.NUM_LAYERS: L,
                tracking.DIVERGED: str(diverged).lower(),
                **{tracking.probe_tag(p): _probe(p).digest for p in probes}}  # fmt: skip
        registered = ""
        with tracking.start_run(self.experiment, tags={a: str(b) for a, b in tags.items()}) as r:
            run_id = r.info.run_id
            tracking.set_tags({tracking.CONFIG_KEY: run_id, tracking.RUN_NAME: run_id})
            tracking.log_config({"lr": "0.001", "diverge_margin": "0.0", "seed": str(seed)})
            if mode != tracking.EXTRACT_MODE:
                mlflow.log_metrics({tracking.FINAL_SCORE: score, tracking.CHANCE: CHANCE[task]})
            for probe in probes:
                if probe in self.case.no_tables:
                    continue
                path = self.tmp / run_id / tracking.activations_file(40)
                activations.write_table(
                    path, _states(self.case, probe, run_id), _probe(probe), {"run_id": run_id}
                )
                tracking.log_artifact(path, tracking.activations_dir(probe))
            if mode == "single" and source == "base" and k == 0:
                registered = registry.register_model(
                    task, f"{tracking.RUNS_URI}{run_id}/checkpoint", run_id,
                    {tracking.SEED: seed, tracking.BASE_MODEL: base_model,
                     tracking.CONFIG_KEY: run_id}, alias=not diverged,
                )  # fmt: skip
                tracking.set_tags({tracking.REGISTERED_AS: registered})
        self.runs.append(run_id)
        return run_id, registered

    def sweep(self, kind: str, name: str) -> None:
        """A finished parent run listing every run logged so far."""
        exp = sweep_runs.experiment_id(self.experiment)
        tags = {tracking.KIND: tracking.SWEEP_KIND, tracking.SWEEP_NAME: name,
                tracking.SWEEP_KIND_TAG: kind}  # fmt: skip
        parent = sweep_runs.start_parent(exp, tags)
        sweep_runs.log_sweep_runs(parent, {r: r for r in self.runs})
        mlflow.MlflowClient().set_terminated(parent, "FINISHED")


def _full_score(case: Case, task: str) -> float:
    if task in case.at_chance:
        return CHANCE[task]
    if task in case.below_chance:
        return CHANCE[task] - 0.05
    return BEST[task]


def build(case: Case, tmp: Path) -> None:
    """The sweeps of a case: full fine-tuning (the sources), the transfer grid from base
    and from every other task, and the pretrained model's read-out."""
    store = Store(case, tmp)
    sources: dict[tuple[str, int], str] = {}
    for task in case.tasks:
        for seed in case.seeds:
            _, uri = store.run(task, seed=seed, score=_full_score(case, task),
                               diverged=task in case.diverged, probe_tasks=case.tasks)  # fmt: skip
            sources[task, seed] = uri
    for target in case.tasks:
        full = _full_score(case, target)
        ks = [k for k in case.ks if not (target in case.no_last_k and k == L)]
        for source in ("base", *[t for t in case.tasks if t != target]):
            for k, seed in ((k, s) for k in ks for s in case.seeds):
                if source == "base" and k == 0:
                    continue  # the full fine-tuning runs above
                # frozen layers cost score; each source its own share, each seed a little
                drop = (0.1 + 0.05 * len(source)) * k / L + 0.01 * seed
                score = full - drop * (BEST[target] - CHANCE[target])
                start = ROOT if source == "base" else sources[source, seed]
                store.run(target, source=source, k=k, seed=seed, score=score, base_model=start)
    store.run(case.tasks[0], mode=tracking.EXTRACT_MODE, score=0.0, probe_tasks=case.tasks)
    store.sweep("aufc", "synthetic-aufc")


CASES = {
    "healthy": Case(),
    "target at chance": Case(at_chance=("sst2",)),
    "best below chance": Case(below_chance=("stsb",)),
    "below the margin": Case(min_margin=0.35),  # SST-2: best 0.8, chance 0.5
    "source diverged": Case(diverged=("pos",)),
    "one seed": Case(seeds=(0,)),
    "no k = L trial": Case(no_last_k=("sst2",)),
    "no activation table": Case(no_tables=("stsb",)),
    "constant layer": Case(constant_layer=2),
    "single task": Case(tasks=("sst2",)),
    "all at once": Case(
        tasks=("sst2", "stsb", "pos"),
        seeds=(0,),
        at_chance=("sst2",),
        below_chance=("stsb",),
        diverged=("pos",),
        no_last_k=("pos",),
        no_tables=("stsb",),
        constant_layer=1,
    ),  # fmt: skip
}


def analyse(case: Case, tmp: Path) -> tuple[mlflow.entities.Run, dict[str, pd.DataFrame]]:
    build(case, tmp)
    spec = spec_from_dict(
        {"name": "synthetic", "experiment": "synthetic", "sweeps": {"aufc": "synthetic-aufc"},
         "tasks": list(case.tasks), "bootstrap": {"replicates": 20}, "subgroup_min_tokens": 4,
         "aufc": {"min_margin": case.min_margin}},
    )  # fmt: skip
    run = analyze(spec)
    return run, read_tables(run.info.run_id, tmp / "tables")


# every numeric column of every table, and its kind
NUMERIC = {FLOAT: "float64", INT: "Int64", FLAG: "boolean"}
COLUMNS = {
    "aufc": {"value": FLOAT, "seeds": INT, "ci_low": FLOAT, "ci_high": FLOAT, "near_floor": FLAG},
    "mean_cka": {"value": FLOAT, "ci_low": FLOAT, "near_floor": FLAG, "within_seed_band": FLAG},
    "transfer_k0": {"value": FLOAT, "seeds": INT},
    "best": {"best": FLOAT, "chance": FLOAT, "runs": INT},
    "scores": {"norm_score": FLOAT, "frozen_layers": INT},
    "correlation": {"pearson": FLOAT, "spearman": FLOAT},
    "transferability": {"value": FLOAT},
    "indistinguishable": {"value": FLOAT, "tied_with_best": FLAG},
    "predictors": {"spearman": FLOAT, "kendall_low": FLOAT},
    "profiles": {"cka": FLOAT, "near_floor": FLAG},
}


def _status(tables, name: str, source: str, target: str, **where) -> tuple[str, float]:
    t = tables[name]
    sel = t[(t.source == source) & (t.target == target)]
    for k, v in where.items():
        sel = sel[sel[k] == v]
    (row,) = sel.itertuples()
    return row.status, row.value


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_the_analysis_finishes_and_labels_every_outcome(name, mlflow_store, tmp_path):
    case = CASES[name]
    run, tables = analyse(case, tmp_path)
    assert run.info.status == "FINISHED"
    for table, columns in COLUMNS.items():
        for column, kind in columns.items():
            assert str(tables[table][column].dtype) == NUMERIC[kind], (table, column)
    every = pd.concat([tables[t].status for t in ("aufc", "mean_cka", "transfer_k0", "best")])
    assert set(every) <= set(cells.LABELS)
    n_cells = len(case.tasks) * (len(case.tasks) + 1)  # task rows and base, per target
    assert len(tables["aufc"]) == 2 * n_cells and len(tables["transfer_k0"]) == n_cells
    assert len(tables["mean_cka"]) == 2 * n_cells  # both estimators
    expect_labels(case, tables)
    summary = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{tracking.ANALYSIS_SUMMARY}")
    for label in set(tables["aufc"].status) - {cells.OK}:
        assert f"*{label}*: {cells.MEANING[label]}" in summary
    if case.min_margin:  # the remedy in words, not as a command
        assert f"— {cells.MORE_UPDATES}\n" in summary and f"`{cells.MORE_UPDATES}`" not in summary
    drawn = redraw(run.info.run_id, tmp_path / "figures")
    pngs = [p for p in drawn if p.suffix == ".png"]
    assert pngs
    for png in pngs:
        assert imread(png)[..., :3].var() > 1e-4, f"{png.name} is blank"
    names = {p.stem for p in pngs}
    aufc = tables["aufc"][tables["aufc"].variant == "aufc"]
    assert ("aufc" in names) == bool(np.isfinite(aufc.value).any())
    if "aufc" not in names:
        assert "`aufc.png`: no cell has a number; it needs" in summary
    # k = 0, 2, L is not every k in 1..L: the original code's variant has nothing
    assert "aufc_paper" not in names and "`aufc_paper.png`: no cell has a number" in summary


def expect_labels(case: Case, tables) -> None:
    """The label each case's cells must carry."""
    for target in case.tasks:
        (best,) = tables["best"][tables["best"].task == target].itertuples()
        for source in ("base", *[t for t in case.tasks if t != target]):
            status, value = _status(tables, "aufc", source, target, variant="aufc")
            k0_status, _ = _status(tables, "transfer_k0", source, target)
            label = (cells.AT_CHANCE if target in case.at_chance else
                     cells.NOT_LEARNED if target in case.below_chance else
                     cells.BELOW_MARGIN if BEST[target] - CHANCE[target] < case.min_margin
                     else "")  # fmt: skip
            if label:  # no sweep of the same spec helps: the remedy is more updates
                assert best.status == status == k0_status == label
                missing = tables["missing"]
                said = missing[missing.detail == f"{source}->{target}: {label}"]
                assert len(said) and set(said.command) == {cells.MORE_UPDATES}
                best_b = missing[missing.what == "best_B"]
                assert set(best_b[best_b.detail.str.startswith(f"{target}:")].command) == {
                    cells.MORE_UPDATES
                }
            elif target in case.diverged:
                assert best.status == status == k0_status == cells.DIVERGED
            elif source in case.diverged:
                assert status == k0_status == cells.DIVERGED
            elif target in case.no_last_k:
                assert status == cells.MISSING and np.isnan(value)
            elif len(case.seeds) == 1:
                assert status == cells.SINGLE_SEED and np.isfinite(value)
            else:
                assert status == cells.OK and np.isfinite(value)
            mc_status, mc = _status(tables, "mean_cka", source, target, estimator="biased")
            if target in case.diverged:
                assert mc_status == cells.DIVERGED
            elif len(case.seeds) == 1:
                assert mc_status == cells.SINGLE_SEED
            elif source in case.diverged:
                assert mc_status == cells.DIVERGED
            elif target in case.no_tables:
                assert mc_status == cells.MISSING and np.isnan(mc)
            elif case.constant_layer is not None:  # in every table: every profile has NaN
                assert mc_status == cells.UNDEFINED and np.isnan(mc)
            else:
                assert mc_status == cells.OK and np.isfinite(mc)


def test_cell_labels_and_target_status():
    assert cells.target_status(0.5, 0.5) == cells.AT_CHANCE
    assert cells.target_status(0.45, 0.5) == cells.NOT_LEARNED
    assert cells.target_status(0.8, 0.5) == cells.OK
    assert cells.target_status(float("nan"), 0.5) == cells.MISSING
    # a margin in the metric's units: 0.09 above chance is not learned at a 0.1 margin
    assert cells.target_status(0.59, 0.5, margin=0.1) == cells.BELOW_MARGIN
    assert cells.target_status(0.61, 0.5, margin=0.1) == cells.OK
    assert cells.target_status(0.6, 0.5, margin=0.1) == cells.OK  # 0.6 - 0.5 < 0.1 in floats
    assert cells.target_status(0.45, 0.5, margin=0.1) == cells.NOT_LEARNED
    assert set(cells.MEANING) == set(cells.LABELS)


def test_typed_tables_keep_their_kinds_when_empty_or_missing():
    columns = {"value": FLOAT, "n": INT, "flag": FLAG, "name": cells.TEXT}
    empty = cells.typed([], columns)
    assert list(empty.columns) == list(columns) and len(empty) == 0
    assert [str(empty[c].dtype) for c in ("value", "n", "flag")] == ["float64", "Int64", "boolean"]
    rows = cells.typed([{"value": None, "n": 3, "flag": None}, {"name": "a", "extra": 1}], columns)
    assert np.isnan(rows.value).all() and rows.n.isna().tolist() == [False, True]
    assert rows.flag.isna().all() and rows.name.tolist() == ["", "a"]
    assert list(rows.columns) == [*columns, "extra"]
    assert np.isfinite(rows.value).tolist() == [False, False]  # the crash of issue 21


@pytest.mark.slow
def test_a_failing_analysis_says_where_in_one_line_and_keeps_its_traceback(
    mlflow_store, tmp_path, monkeypatch, capsys
):
    """Should the analysis fail anyway, its run ends FAILED with the traceback logged as an
    artifact, and the command prints one line naming the table and cell."""
    from bertrep import analyze
    from bertrep.analysis import tables

    build(Case(tasks=("sst2",)), tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: synthetic\nexperiment: synthetic\nsweeps: {aufc: synthetic-aufc}\n"
                    "tasks: [sst2]\nbootstrap: {replicates: 0}\n")  # fmt: skip

    def broken(*args):
        raise RuntimeError("a bug in the AuFC formula\nsecond line")

    monkeypatch.setattr(tables, "_aufc", broken)  # the project's own function, not a library's
    with pytest.raises(SystemExit) as stopped:
        analyze.main(["--spec", str(spec)])
    line = str(stopped.value.code)
    assert "\n" not in line and "Traceback" not in capsys.readouterr().err
    assert line.startswith(
        "bertrep.analyze: analysis synthetic failed computing table aufc, AuFC cell "
        "base->sst2: RuntimeError: a bug in the AuFC formula"
    )
    uri = line.rsplit("(traceback: ", 1)[1].rstrip(")")
    (run,) = mlflow.search_runs(
        experiment_names=["synthetic"], output_format="list",
        filter_string=f"tags.`{tracking.KIND}` = '{tracking.ANALYSIS_KIND}'",
    )  # fmt: skip
    assert run.info.status == "FAILED" and uri.startswith(f"runs:/{run.info.run_id}/")
    assert "RuntimeError" in run.data.tags[tracking.FAILURE_REASON]
    kept = mlflow.artifacts.load_text(uri)
    assert "Traceback (most recent call last)" in kept and "in broken" in kept
