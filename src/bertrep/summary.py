"""The analysis summary in Markdown: the headline matrices and what they rest on.

text = markdown(spec, tables, parents)      # tables: {name: DataFrame} of `analyze`
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bertrep import tracking
from bertrep.diagnostics import DRIVEN, driven_cells
from bertrep.tables import matrix


def _fmt(value) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def _table(frame: pd.DataFrame, corner: str, fmt=_fmt) -> str:
    head = f"| {corner} | " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    body = [
        f"| {idx} | " + " | ".join(fmt(v) for v in row) + " |"
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
    lines += uncertainty(tables, spec.tasks)
    missing = tables["missing"]
    lines += ["## Missing inputs", ""]
    if len(missing):
        lines += [f"- {r.what}: {r.detail} — `{r.command}`" for r in missing.itertuples()]
    else:
        lines.append("None: every cell was computed.")
    lines += ["", f"Tables: `{tracking.TABLES_DIR}/`; figures: `{tracking.FIGURES_DIR}/`.", ""]
    return "\n".join(lines)


def flagged(value) -> bool:
    """A nullable flag of the tables (True, False, or None/NA where unknown) read as
    "known to be true"; survives a Parquet round trip."""
    return value is not None and value is not pd.NA and value == value and bool(value)


def _ci(low, high) -> str:
    return "" if not (math.isfinite(low) and math.isfinite(high)) else f" [{low:.3f}, {high:.3f}]"


def uncertainty(tables: dict[str, pd.DataFrame], tasks: tuple[str, ...]) -> list[str]:
    """Intervals, floors, cells that cannot be told apart, the predictor shoot-out, rogue
    dimensions and subgroups: the sections the tables allow."""
    lines = []
    mc, au = tables["mean_cka"], tables["aufc"]
    if "ci_low" in mc and len(mc):
        level = f"{float(mc.ci_level.dropna().iloc[0]):.0%}" if mc.ci_level.notna().any() else ""
        lines += [f"## How sure: {level} intervals", ""]
        lines.append(
            "Mean-CKA (biased): probe sentences resampled (bias-corrected percentile "
            "interval of the biased estimate at this probe size, not of the population "
            "CKA); AuFC: a t-interval over its seeds. ≤ marks an interval that reaches the "
            "floor (Mean-CKA: every cross profile at the CKA of unrelated rows; AuFC: 0, "
            "chance)."
        )
        lines.append("")
        for title, cells in (("Mean-CKA (biased)", mc[mc.estimator == "biased"]),
                             ("AuFC", au[au.variant == "aufc"])):  # fmt: skip
            text = matrix(cells, tasks).astype(object)
            for r in cells.itertuples():
                if r.source in text.index and r.target in text.columns:
                    mark = " ≤" if flagged(r.near_floor) else ""
                    text.loc[r.source, r.target] = (
                        f"{_fmt(r.value)}{_ci(r.ci_low, r.ci_high)}{mark}"
                    )
            text = text.map(lambda v: "—" if not isinstance(v, str) else v)
            lines += [f"{title}:", "", _table(text, "source \\ target", str), ""]
        lines.append("Per target, the best source and those whose interval overlaps its:")
        lines.append("")
        ties = tables.get("indistinguishable", pd.DataFrame())
        for (m, target), g in ties.groupby(["matrix", "target"]) if len(ties) else []:
            tied = ", ".join(g[g.tied_with_best.map(flagged)].source) or "none"
            unknown = ", ".join(g[g.tied_with_best.isna()].source)
            lines.append(f"- {m}, target {target}: best {g.best_source.iloc[0]}; "
                         f"cannot be told apart from it: {tied}"
                         + (f" (no interval: {unknown})" if unknown else ""))  # fmt: skip
        profiles = tables["profiles"]
        if "near_floor" in profiles:
            biased = profiles[(profiles.estimator == "biased") & profiles.near_floor.notna()]
            near = biased[biased.near_floor.map(flagged)]
            lines.append(
                f"- Profile cells whose interval reaches the permutation floor (the CKA of "
                f"unrelated rows): {len(near)} of {len(biased)} with an interval (largest "
                f"floor {_fmt(biased.floor.max())})."
            )
        if "floor" in mc:
            lines.append(f"- Mean-CKA floors (every cross profile at its permutation floor): "
                         f"{_fmt(mc.floor.min())} to {_fmt(mc.floor.max())}.")  # fmt: skip
        banded = mc[np.isfinite(mc.seed_band_low)] if "seed_band_low" in mc else mc.iloc[:0]
        if len(banded):
            within = banded[banded.within_seed_band.map(flagged)]
            lines.append(
                "- Seed-noise band: Mean-CKA cells as similar to the target as another of "
                "its seeds (interval overlaps the band): "
                + (", ".join(f"{r.source}→{r.target}" for r in within.itertuples()) or "none")
            )
        else:
            lines.append("- Seed-noise band: needs three or more seeds of a target.")
        lines.append("")
    corr = tables.get("predictors", pd.DataFrame())
    if len(corr):
        lines += ["## Which cheap signal predicts transfer? (rank correlations, seeds resampled)",
                  "", "| predictor | outcome | scope | cells | Spearman | Kendall |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in corr.itertuples():
            lines.append(f"| {r.predictor} | {r.outcome} | {r.scope} | {r.cells} | "
                         f"{_fmt(r.spearman)}{_ci(r.spearman_low, r.spearman_high)} | "
                         f"{_fmt(r.kendall)}{_ci(r.kendall_low, r.kendall_high)} |")  # fmt: skip
        lines.append("")
    dims, rogue = tables.get("rogue_dims"), tables.get("rogue_profiles")
    if dims is not None and len(dims):
        lines += ["## Rogue dimensions", ""]
        for task, g in dims.groupby("probe_task", sort=False):
            top = g.loc[g.top1.idxmax()]
            lines.append(f"- {task}: largest single-dimension variance share {top.top1:.2f} "
                         f"({top.label}, layer {top.hidden})")  # fmt: skip
        driven = driven_cells(rogue)
        if len(driven):
            lines.append(f"- WARNING: in {len(driven)} profile cells one dimension holds more "
                         f"than half of the CKA numerator, e.g. "
                         + "; ".join(f"{r.probe_task} {r.kind} ({r.hidden_x}, {r.hidden_y}) "
                                     f"{r.top_dim_share:.2f}"
                                     for r in driven.head(5).itertuples()))  # fmt: skip
        else:
            lines.append(
                f"- No profile cell is driven by one dimension (its share of the CKA "
                f"numerator ≤ {DRIVEN} everywhere)."
            )
        lines.append("")
    return lines
