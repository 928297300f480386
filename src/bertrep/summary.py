"""The analysis summary in Markdown: the headline matrices and what they rest on.

text = markdown(spec, tables, parents)      # tables: {name: DataFrame} of `analyze`
"""

from __future__ import annotations

import math

import pandas as pd

from bertrep import tracking
from bertrep.tables import matrix


def _fmt(value) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def _table(frame: pd.DataFrame, corner: str) -> str:
    head = f"| {corner} | " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    body = [
        f"| {idx} | " + " | ".join(_fmt(v) for v in row) + " |"
        for idx, row in zip(frame.index, frame.to_numpy(), strict=True)
    ]
    return "\n".join([head, rule, *body])


def matrices(tables: dict[str, pd.DataFrame], tasks: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The headline matrices by title: rows = source (base last), columns = target."""
    out = {}
    for e in sorted(set(tables["mean_cka"].get("estimator", []))):
        out[f"Mean-CKA ({e} linear CKA)"] = matrix(tables["mean_cka"], tasks, estimator=e)
    out["AuFC"] = matrix(tables["aufc"], tasks, variant="aufc")
    out["AuFC, the original code's variant (aufc_paper)"] = matrix(
        tables["aufc"], tasks, variant="aufc_paper"
    )
    out["Normalized transfer score, no freezing (k = 0)"] = matrix(tables["transfer_k0"], tasks)
    return out


def markdown(spec, tables: dict[str, pd.DataFrame], parents: dict[str, str]) -> str:
    lines = [f"# Analysis {spec.name}", ""]
    runs = tables["runs"]
    lines.append(
        f"{len(runs)} finished runs from sweeps "
        + ", ".join(f"{k} `{v}`" for k, v in parents.items())
        + (f"; base model `{runs.root_model.iloc[0]}`" if len(runs) else "")
        + f"; estimators {', '.join(spec.estimators)} (headline: {spec.estimators[0]}); "
        + ("hidden states 0..L (embeddings included)" if spec.embeddings else "blocks 1..L")
        + "."
    )
    profiles = tables["profiles"]
    if len(profiles):
        ns = sorted(profiles.groupby("probe_task").n.first().items())
        lines.append("Probe sets: " + ", ".join(f"{t} n = {n}" for t, n in ns) + " tokens.")
    lines += [
        "",
        "Rows: source (base = the pretrained model); columns: target. "
        "Mean-CKA's diagonal is computed, not forced to 1 (where A = B the cross pairs "
        "are the self pairs). — marks a missing cell.",
        "",
    ]
    for title, frame in matrices(tables, spec.tasks).items():
        lines += [f"## {title}", "", _table(frame, "source \\ target"), ""]
    corr = tables["correlation"]
    if len(corr):
        lines += ["## Does representation similarity predict transfer?", ""]
        lines += ["| x | y | Pearson | Spearman | cells |", "|---|---|---|---|---|"]
        for r in corr.itertuples():
            lines.append(
                f"| {r.x} | {r.y} | {_fmt(r.pearson)} | {_fmt(r.spearman)} | "
                f"{r.cells}{' (' + r.note + ')' if r.note else ''} |"
            )
        lines.append("")
    tr = tables["transferability"]
    if len(tr):
        wide = tr.pivot(index="source", columns="metric", values="value")
        lines += ["## Average transferability per source", "", _table(wide, "source"), ""]
    best = tables["best"]
    if len(best):
        lines += ["## best_B (mean raw score of full fine-tuning from the pretrained model)", ""]
        lines += [
            f"- {r.task}: {r.metric} {r.best:.4f} over {r.runs} runs (chance {r.chance:.4f})"
            for r in best.itertuples()
        ]
        lines.append("")
    fs = tables["forgetting_summary"]
    if len(fs):
        lines += ["## Forgetting (normalized score, first → last checkpoint of the B phase)", ""]
        for r in fs.itertuples():
            joint = "→" if r.mode == "sequential" else "+"
            change = (f"forgot {_fmt(r.forgotten)}" if math.isfinite(r.forgotten)
                      else f"change {_fmt(r.last - r.first)}")  # fmt: skip
            lines.append(f"- {r.mode} {r.task_a}{joint}{r.task_b} seed {r.seed}, {r.task} "
                         f"({r.scored}): {_fmt(r.first)} → {_fmt(r.last)} ({change})")  # fmt: skip
        lines.append("")
    missing = tables["missing"]
    lines += ["## Missing inputs", ""]
    if len(missing):
        lines += [f"- {r.what}: {r.detail} — `{r.command}`" for r in missing.itertuples()]
    else:
        lines.append("None: every cell was computed.")
    lines += ["", f"Tables: `{tracking.TABLES_DIR}/`; figures: `{tracking.FIGURES_DIR}/`.", ""]
    return "\n".join(lines)
