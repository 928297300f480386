"""Across base models: one sweep whose `base_model` axis holds several encoders.

Numbers from different base models never share a matrix: the analysis computes every
table per base model (tables/<model>/, figures/<model>/) and puts the headline matrices
side by side (`side_by_side`). Layers of two models are compared on the same words
(`cross_model_cka`): word tables (data/word_probes.py) hold each model's vector for the
same drawn words whatever its tokenizer, width and depth; a pair of tables is compared
on the words both kept. The models compared per base model: its pretrained read-out
(the extract run) and, for each task, its full fine-tuning from the pretrained model
(k = 0, the lowest seed that did not fail).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from bertrep import tracking
from bertrep.analysis.cells import FLOAT, INT, TEXT, labels, matrix, typed
from bertrep.analysis.collect import MissingInput, Store, TrainRun
from bertrep.data import activations
from bertrep.data.identity import model_identity
from bertrep.maths.cka import cka_profiles
from bertrep.tracking.registry import base_model_slug

SIDE_BY_SIDE_COLUMNS = {"base_model": TEXT, "matrix": TEXT, "source": TEXT, "target": TEXT,
                        "value": FLOAT, "status": TEXT}  # fmt: skip
CROSS_COLUMNS = {
    "probe_task": TEXT,
    "model": TEXT,  # "pretrained" or "fine-tuned on <task>"
    "base_a": TEXT,
    "base_b": TEXT,
    "run_a": TEXT,
    "run_b": TEXT,
    "layer_a": INT,
    "layer_b": INT,
    "estimator": TEXT,
    "cka": FLOAT,
    "words": INT,  # the words both tables kept
    "word_rule": TEXT,
    "word_digest": TEXT,
}


def slug(model: str) -> str:
    """A base model as a folder name: the name its registered sources' aliases use
    (`answerdotai/ModernBERT-base` -> `modernbert-base`)."""
    return base_model_slug(model)


def by_base_model(runs: list[TrainRun]) -> dict[str, list[TrainRun]]:
    """The runs of each pretrained model at the root of their chains, by its identity (a
    folder by its content, however it was spelled), named by its first spelling, in name
    order; two models whose folder names would clash are refused (their folders would
    mix)."""
    identities = {root: model_identity(root) for root in {r.root_model for r in runs}}
    names: dict[str, str] = {}
    groups: dict[str, list[TrainRun]] = {}
    for run in runs:
        name = names.setdefault(identities[run.root_model], run.root_model)
        groups.setdefault(name, []).append(run)
    by_slug: dict[str, list[str]] = {}
    for name in groups:
        by_slug.setdefault(slug(name), []).append(name)
    clash = [sorted(names) for names in by_slug.values() if len(names) > 1]
    if clash:
        raise ValueError(f"base models {clash[0][0]} and {clash[0][1]} would share the "
                         f"folder name {slug(clash[0][0])!r}: rename one")  # fmt: skip
    return dict(sorted(groups.items()))


def side_by_side(tables: dict[str, dict[str, pd.DataFrame]], tasks, estimator: str):
    """The headline matrices (Mean-CKA, AuFC, transfer at k = 0) of every base model, long
    form, each cell
    with its status (why a cell has no number: bertrep.analysis.cells)."""
    rows = []
    for base, out in tables.items():
        for name, table, where in (
            (f"Mean-CKA ({estimator})", "mean_cka", {"estimator": estimator}),
            ("AuFC", "aufc", {"variant": "aufc"}),
            ("transfer k=0", "transfer_k0", {}),
        ):
            values = matrix(out[table], tasks, **where).stack(future_stack=True)
            status = labels(out[table], tasks, **where).stack(future_stack=True)
            for (source, target), value in values.items():
                rows.append({"base_model": base, "matrix": name, "source": source,
                             "target": target, "value": float(value),
                             "status": status[(source, target)]})  # fmt: skip
    return typed(rows, SIDE_BY_SIDE_COLUMNS)


def compared_models(runs: list[TrainRun], tasks) -> dict[str, TrainRun]:
    """{what: run} of one base model: its pretrained read-out and its fine-tuning on each
    task (k = 0 from the pretrained model, lowest seed that did not fail)."""
    out = {}
    extract = [r for r in runs if r.mode == tracking.EXTRACT_MODE and r.base_model == r.root_model]
    if extract:
        out["pretrained"] = min(extract, key=lambda r: (not r.word_digests, r.run_id))
    for task in tasks:
        tuned = [r for r in runs if r.mode == "single" and r.task == task and not r.failed
                 and r.source_task == tracking.BASE_SOURCE and r.frozen_layers == 0]  # fmt: skip
        if tuned:  # runs with word tables first
            best = min(tuned, key=lambda r: (not r.word_digests, r.seed, r.run_id))
            out[f"fine-tuned on {task}"] = best
    return out


def cross_model_cka(
    groups: dict[str, list[TrainRun]], tasks, store: Store, estimators
) -> tuple[pd.DataFrame, list[str]]:
    """CKA of every layer of one base model against every layer of another, on the words
    of each probe task both read out (same word probe digest), for every model both have.
    Returns (the table, what could not be compared and why)."""
    models = {base: compared_models(runs, tasks) for base, runs in groups.items()}
    rows, missing = [], []
    for (a, b), probe_task in ((pair, t) for pair in combinations(models, 2) for t in tasks):
        for what in [w for w in models[a] if w in models[b]]:
            run_a, run_b = models[a][what], models[b][what]
            digest_a, digest_b = (r.word_digests.get(probe_task) for r in (run_a, run_b))
            if not digest_a or digest_a != digest_b:
                why = "no word tables" if not (digest_a and digest_b) else "other word sets"
                missing.append(f"{what} on {probe_task}, {slug(a)} vs {slug(b)}: {why}")
                continue
            try:
                paths = [store.word_table(r, probe_task) for r in (run_a, run_b)]
            except MissingInput as error:
                missing.append(str(error))
                continue
            pair = _pair_rows(paths, estimators)
            if not pair:
                missing.append(f"{what} on {probe_task}, {slug(a)} vs {slug(b)}: < 4 shared words")
                continue
            rows += [{"probe_task": probe_task, "model": what, "base_a": a, "base_b": b,
                      "run_a": run_a.run_id, "run_b": run_b.run_id, "word_digest": digest_a,
                      **row} for row in pair]  # fmt: skip
    return typed(rows, CROSS_COLUMNS), missing


def _pair_rows(paths, estimators) -> list[dict]:
    """Every (layer_a, layer_b, estimator) CKA of two word tables on the words both kept."""
    rows_a, rows_b = (activations.read_rows(p) for p in paths)
    keys_a = {tuple(r): i for i, r in enumerate(rows_a)}
    both = [(keys_a[tuple(r)], j) for j, r in enumerate(rows_b) if tuple(r) in keys_a]
    if len(both) < 4:
        return []
    index_a, index_b = (np.asarray(ix) for ix in zip(*both, strict=True))
    xs = activations.read_states(paths[0]).astype(np.float64)[:, index_a]
    ys = activations.read_states(paths[1]).astype(np.float64)[:, index_b]
    profiles = cka_profiles(xs, ys, tuple(estimators))
    rule = activations.read_meta(paths[0]).get("word_rule", "")
    return [
        {"layer_a": i, "layer_b": j, "estimator": e, "cka": float(profile[i, j]),
         "words": len(both), "word_rule": rule}
        for e, profile in profiles.items()
        for (i, j), _ in np.ndenumerate(profile)
    ]  # fmt: skip


def summary_text(tables: dict[str, pd.DataFrame], unmatched: list[str]) -> str:
    """The summary's first section with several base models: each headline matrix of each
    model, and how the models' layers match on the same words."""
    lines = ["# Across base models", ""]
    side = tables["base_models"]
    for name, frame in side.groupby("matrix", sort=False):
        lines += [f"## {name}", ""]
        if frame.value.isna().all():
            lines += ["No base model has a number in this matrix (see each model's own).", ""]
            continue
        for base, cells_ in frame.groupby("base_model", sort=True):
            grid = cells_.astype({"value": "float64"}).pivot(
                index="source", columns="target", values="value"
            )  # in the spec's order (the table's), not sorted
            grid = grid.reindex(index=list(dict.fromkeys(cells_.source)),
                                columns=list(dict.fromkeys(cells_.target)))  # fmt: skip
            lines += [f"{base}:", "", _grid(grid), ""]
    cross = tables["cross_model_cka"]
    lines += ["## Layers across models (linear CKA on the same words)", ""]
    if cross.empty:
        lines.append("No pair of base models has word tables on the same words "
                     "(train with word_probes=first or mean).")  # fmt: skip
    for (task, what, a, b, e), pair in cross.groupby(
        ["probe_task", "model", "base_a", "base_b", "estimator"], sort=True
    ):
        last = pair[(pair.layer_a == pair.layer_a.max()) & (pair.layer_b == pair.layer_b.max())]
        best = pair.loc[pair.cka.idxmax()]
        lines.append(
            f"- {what}, {task} ({e}, {int(pair.words.iloc[0])} words): last layers "
            f"{float(last.cka.iloc[0]):.3f}; highest {best.cka:.3f} at layer {best.layer_a} of "
            f"{slug(a)} and {best.layer_b} of {slug(b)}"
        )
    lines += [f"- not compared: {why}" for why in unmatched]
    return "\n".join(lines)


def _grid(frame: pd.DataFrame) -> str:
    head = "| source \\ target | " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    body = [f"| {i} | " + " | ".join("—" if not np.isfinite(v) else f"{v:.3f}" for v in row) + " |"
            for i, row in zip(frame.index, frame.to_numpy(dtype=float), strict=True)]  # fmt: skip
    return "\n".join([head, rule, *body])
