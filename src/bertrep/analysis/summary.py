"""The analysis summary in Markdown: the headline matrices and what they rest on.

text = markdown(spec, tables, parents)      # tables: {name: DataFrame} of `analyze`
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bertrep import tracking
from bertrep.analysis import cells, convergence
from bertrep.analysis.cells import has_values, labels, matrix
from bertrep.analysis.diagnostics import DRIVEN, driven_cells
from bertrep.analysis.tables import NEEDS


def _fmt(value, digits: int = 3) -> str:
    if value is None or value is pd.NA or not math.isfinite(float(value)):
        return "—"
    return f"{value:.{digits}f}"


def _table(frame: pd.DataFrame, corner: str, fmt=_fmt) -> str:
    head = f"| {corner} | " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    body = [
        f"| {idx} | " + " | ".join(fmt(v) for v in row) + " |"
        for idx, row in zip(frame.index, frame.to_numpy(), strict=True)
    ]
    return "\n".join([head, rule, *body])


@dataclass(frozen=True)
class Matrix:
    """One headline matrix: its title, figure file, cell table and selection, and what a
    figure of it needs when no cell has a number."""

    title: str
    file: str
    table: str
    where: dict
    needs: str
    label: str = ""  # the colour bar's
    figure_title: str = ""  # the figure's, where it says more than the summary's heading

    def values(self, tables: dict, tasks) -> pd.DataFrame:
        return matrix(tables[self.table], tasks, **self.where)

    def labels(self, tables: dict, tasks) -> pd.DataFrame:
        return labels(tables[self.table], tasks, **self.where)


def headline_matrices(tables: dict[str, pd.DataFrame]) -> list[Matrix]:
    """The headline matrices, rows = source (base last), columns = target."""
    estimators = dict.fromkeys(tables["mean_cka"].estimator)  # the headline estimator first
    out = [Matrix(f"Mean-CKA ({e} linear CKA)", f"mean_cka_{e}", "mean_cka", {"estimator": e},
                  "two seeds of full fine-tuning of a target and a source model's tables on "
                  "its probe set", "Mean-CKA") for e in estimators]  # fmt: skip
    out += [
        Matrix("AuFC", "aufc", "aufc", {"variant": "aufc"}, NEEDS["aufc"], "AuFC",
               "AuFC: area under the freezing curve"),
        Matrix("AuFC, the original code's variant (aufc_paper)", "aufc_paper", "aufc",
               {"variant": "aufc_paper"}, NEEDS["aufc_paper"], "aufc_paper",
               "AuFC as the original code computed it (aufc_paper: k = 1..L at x = (k − 1)/L)"),
        Matrix("Normalized transfer score, no freezing (k = 0)", "transfer_k0", "transfer_k0",
               {}, "k = 0 runs from a source on a learned target", "normalized score"),
    ]  # fmt: skip
    return out


def labelled(values: pd.DataFrame, status: pd.DataFrame, fmt=None) -> pd.DataFrame:
    """A matrix as text: each number (a single seed's marked), else its cell label."""
    fmt = fmt or _fmt
    text = values.astype(object).copy()
    for (i, j), v in np.ndenumerate(values.to_numpy(dtype=float)):
        label = status.iloc[i, j]
        if not np.isfinite(v):
            text.iloc[i, j] = cells.why_empty(label)
        else:
            text.iloc[i, j] = fmt(v) + (" (single seed)" if label == cells.SINGLE_SEED else "")
    return text


def label_legend(tables: dict[str, pd.DataFrame], matrices: list[Matrix], tasks) -> list[str]:
    """One line per cell label the matrices use, with its meaning."""
    used = set()
    for m in matrices:
        used |= set(m.labels(tables, tasks).to_numpy().ravel())
    return [f"- *{label}*: {cells.MEANING[label]}" for label in cells.LABELS
            if label in used and label != cells.OK]  # fmt: skip


def markdown(spec, tables: dict[str, pd.DataFrame], parents: dict[str, str]) -> str:
    """The whole summary: header, headline matrices, comparisons, best_B, forgetting,
    the uncertainty sections, figures not drawn and missing inputs."""
    lines = _header(spec, tables, parents)
    matrices, undrawn = _matrices(tables, spec.tasks)
    lines += matrices + _comparisons(tables) + _best(tables) + _forgetting(tables)
    lines += convergence.summary_lines(tables.get("convergence", pd.DataFrame()))
    lines += uncertainty(tables, spec.tasks)
    if undrawn:
        lines += ["## Figures not drawn", "", *undrawn, ""]
    lines += _missing(tables)
    lines += ["", f"Tables: `{tracking.TABLES_DIR}/`; figures: `{tracking.FIGURES_DIR}/`.", ""]
    return "\n".join(lines)


def _header(spec, tables: dict[str, pd.DataFrame], parents: dict[str, str]) -> list[str]:
    runs = tables["runs"]
    lines = [f"# Analysis {spec.name}", ""]
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
    return lines + [
        "",
        "Rows: source (base = the pretrained model); columns: target. "
        "Mean-CKA's diagonal is computed, not forced to 1 (where A = B the cross pairs "
        "are the self pairs). A cell without a number names why (below).",
        "",
    ]


def _matrices(tables: dict[str, pd.DataFrame], tasks) -> tuple[list[str], list[str]]:
    """The headline matrices as tables with their label legend, and a line for each
    figure that cannot be drawn (no cell has a number)."""
    lines, undrawn = [], []
    headline = headline_matrices(tables)
    for m in headline:
        values = m.values(tables, tasks)
        text = labelled(values, m.labels(tables, tasks))
        lines += [f"## {m.title}", "", _table(text, "source \\ target", str), ""]
        if not has_values(values):
            undrawn.append(f"- `{m.file}.png`: no cell has a number; it needs {m.needs}.")
    legend = label_legend(tables, headline, tasks)
    if legend:
        lines += ["Cells without a number, or marked, say why:", "", *legend, ""]
    return lines, undrawn


def _comparisons(tables: dict[str, pd.DataFrame]) -> list[str]:
    lines = []
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
    return lines


def _best(tables: dict[str, pd.DataFrame]) -> list[str]:
    best = tables["best"]
    if not len(best):
        return []
    lines = [
        "## best_B (mean raw score of full fine-tuning from the pretrained model, at "
        "the target's grid seeds)",
        "",
    ]
    lines += [
        f"- {r.task}: {r.metric} {_fmt(r.best, 4)} over {r.runs} runs (chance "
        f"{_fmt(r.chance, 4)})" + ("" if r.status == cells.OK else f": {r.status}")
        for r in best.itertuples()
    ]
    return lines + [""]


def _forgetting(tables: dict[str, pd.DataFrame]) -> list[str]:
    fs = tables["forgetting_summary"]
    if not len(fs):
        return []
    lines = ["## Forgetting (normalized score, first → last checkpoint of the B phase)", ""]
    best = tables["best"]
    label = dict(zip(best.task, best.status, strict=True))
    for r in fs.itertuples():
        joint = "→" if r.mode == "sequential" else "+"
        change = (f"forgot {_fmt(r.forgotten)}" if math.isfinite(r.forgotten)
                  else f"change {_fmt(r.last - r.first)}")  # fmt: skip
        if label.get(r.task, cells.OK) not in (cells.OK, ""):  # no normalized scores: why
            change = f"{label[r.task]}: no normalized score"
        lines.append(f"- {r.mode} {r.task_a}{joint}{r.task_b} seed {r.seed}, {r.task} "
                     f"({r.scored}): {_fmt(r.first)} → {_fmt(r.last)} ({change})")  # fmt: skip
    return lines + [""]


def _missing(tables: dict[str, pd.DataFrame]) -> list[str]:
    missing = tables["missing"]
    lines = ["## Missing inputs", ""]
    if len(missing):
        return lines + [
            f"- {r.what}: {r.detail} — {_command(r.command)}" for r in missing.itertuples()
        ]
    return lines + ["None: every cell was computed."]


def _command(text: str) -> str:
    """A sweep command as code; the remedy that is no command (more updates) as words."""
    return text if text == cells.MORE_UPDATES else f"`{text}`"


def level_text(*frames: pd.DataFrame) -> str:
    """The intervals' coverage as the tables record it ("95%"), "" where none has one."""
    levels = pd.concat([f.ci_level for f in frames if "ci_level" in f]).dropna()
    return f"{float(levels.iloc[0]):.0%}" if len(levels) else ""


def flagged(value) -> bool:
    """A nullable flag of the tables (True, False, or None/NA where unknown) read as
    "known to be true"; survives a Parquet round trip."""
    return value is not None and value is not pd.NA and value == value and bool(value)


def _ci(low, high) -> str:
    if _fmt(low) == "—" or _fmt(high) == "—":
        return ""
    return f" [{low:.3f}, {high:.3f}]"


def uncertainty(tables: dict[str, pd.DataFrame], tasks: tuple[str, ...]) -> list[str]:
    """Intervals, floors, cells that cannot be told apart, the predictor shoot-out, rogue
    dimensions and subgroups: the sections the tables allow."""
    lines = []
    if "indistinguishable" in tables:  # computed with intervals only
        lines += _intervals(tables, tasks) + _ties(tables) + _floors(tables) + [""]
    return lines + _predictors(tables) + _rogue(tables)


def _intervals(tables: dict[str, pd.DataFrame], tasks) -> list[str]:
    """The biased Mean-CKA and AuFC matrices with each cell's interval; ≤ marks one that
    reaches its floor."""
    mc, au = tables["mean_cka"], tables["aufc"]
    lines = [f"## How sure: {level_text(mc, au)} intervals", ""]
    lines.append(
        "Mean-CKA (biased): probe sentences resampled (bias-corrected percentile "
        "interval of the biased estimate at this probe size, not of the population "
        "CKA); AuFC: a t-interval over its seeds. ≤ marks an interval that reaches the "
        "floor (Mean-CKA: every cross profile at the CKA of unrelated rows; AuFC: 0, "
        "chance)."
    )
    lines.append("")
    for title, found in (("Mean-CKA (biased)", mc[mc.estimator == "biased"]),
                         ("AuFC", au[au.variant == "aufc"])):  # fmt: skip
        text = labelled(matrix(found, tasks), labels(found, tasks))
        for r in found[np.isfinite(found.value.to_numpy(dtype=float))].itertuples():
            if r.source in text.index and r.target in text.columns:
                mark = " ≤" if flagged(r.near_floor) else ""
                text.loc[r.source, r.target] += f"{_ci(r.ci_low, r.ci_high)}{mark}"
        lines += [f"{title}:", "", _table(text, "source \\ target", str), ""]
    return lines + _widest(au[au.variant == "aufc"], tasks)


def _widest(aufc: pd.DataFrame, tasks) -> list[str]:
    """Per target (in the spec's order), the widest half-width of its AuFC cells'
    intervals, and which cell."""
    half = (aufc.ci_high - aufc.ci_low).to_numpy(dtype=float) / 2
    known = aufc.assign(half=half)[np.isfinite(half)]
    if not len(known):
        return []
    widest = known.loc[known.groupby("target").half.idxmax()]
    order = {task: i for i, task in enumerate(tasks)}
    widest = widest.sort_values("target", key=lambda t: t.map(lambda x: order.get(x, len(order))))
    cells_ = ", ".join(f"{r.target} ±{r.half:.3f} (from {r.source})" for r in widest.itertuples())
    return [f"Widest AuFC half-width per target: {cells_}.", ""]


def _ties(tables: dict[str, pd.DataFrame]) -> list[str]:
    lines = ["Per target, the best source and those whose interval overlaps its:", ""]
    ties = tables.get("indistinguishable", pd.DataFrame())
    for (m, target), g in ties.groupby(["matrix", "target"]) if len(ties) else []:
        tied = ", ".join(g[g.tied_with_best.map(flagged)].source) or "none"
        unknown = ", ".join(g[g.tied_with_best.isna()].source)
        lines.append(f"- {m}, target {target}: best {g.best_source.iloc[0]}; "
                     f"cannot be told apart from it: {tied}"
                     + (f" (no interval: {unknown})" if unknown else ""))  # fmt: skip
    return lines


def _floors(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Profile cells and Mean-CKA cells at their permutation floor; the seed-noise band."""
    lines, mc, profiles = [], tables["mean_cka"], tables["profiles"]
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
    if not len(banded):
        return lines + ["- Seed-noise band: needs three or more seeds of a target."]
    within = banded[banded.within_seed_band.map(flagged)]
    return lines + [
        "- Seed-noise band: Mean-CKA cells as similar to the target as another of "
        "its seeds (interval overlaps the band): "
        + (", ".join(f"{r.source}→{r.target}" for r in within.itertuples()) or "none")
    ]


def _predictors(tables: dict[str, pd.DataFrame]) -> list[str]:
    corr = tables.get("predictors", pd.DataFrame())
    if not len(corr):
        return []
    lines = ["## Which cheap signal predicts transfer? (rank correlations, seeds resampled)",
             "", "| predictor | outcome | scope | cells | Spearman | Kendall |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in corr.itertuples():
        lines.append(f"| {r.predictor} | {r.outcome} | {r.scope} | {r.cells} | "
                     f"{_fmt(r.spearman)}{_ci(r.spearman_low, r.spearman_high)} | "
                     f"{_fmt(r.kendall)}{_ci(r.kendall_low, r.kendall_high)} |")  # fmt: skip
    return lines + [""]


def _rogue(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Each task's largest single-dimension variance share; the profile cells that one
    dimension drives."""
    dims, rogue = tables.get("rogue_dims"), tables.get("rogue_profiles")
    if dims is None or not len(dims):
        return []
    lines = ["## Rogue dimensions", ""]
    for task, g in dims.groupby("probe_task", sort=False):
        if not g.top1.notna().any():
            lines.append(f"- {task}: every layer constant (no variance share)")
            continue
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
    return lines + [""]
