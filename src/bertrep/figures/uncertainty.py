"""Figures of how sure the numbers are and what lies under them: the Mean-CKA and AuFC
matrices with their intervals, the transfer-predictor shoot-out, rogue dimensions and
token-subgroup profiles. Drawn from the analysis tables alone (see bertrep.figures).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from bertrep.analysis.cells import labels, matrix
from bertrep.analysis.summary import flagged, level_text
from bertrep.figures.plots import draw_matrix, name, save


def interval_figures(tables: dict, folder: Path, tasks) -> list[Path]:
    """Mean-CKA (biased) and AuFC with each cell's interval; per target column the best
    source outlined solid, sources whose interval overlaps the best's dashed."""
    out = []
    mc, au = tables["mean_cka"], tables["aufc"]
    specs = [
        ("mean_cka/biased", mc[mc.estimator == "biased"] if len(mc) else mc,
         "Mean-CKA (biased)", "mean_cka_intervals", 3),
        ("aufc", au[au.variant == "aufc"] if len(au) else au, "AuFC", "aufc_intervals", 2),
    ]  # fmt: skip
    for key, cells, title, file, digits in specs:
        if cells.empty or not np.isfinite(cells.ci_low.to_numpy(dtype=float)).any():
            continue
        frame = matrix(cells, tasks)
        notes = _interval_notes(cells, tasks, digits, "≤ chance" if key == "aufc" else "≤ floor")
        fig, ax = plt.subplots(figsize=(1.7 * frame.shape[1] + 2.4, 1.0 * frame.shape[0] + 1.6))
        title_text = f"{title} with {level_text(cells)} intervals"
        status = labels(cells, tasks)
        image = draw_matrix(ax, frame, title=title_text, digits=digits, notes=notes, status=status)
        _outline_ties(ax, frame, tables.get("indistinguishable", pd.DataFrame()), key)
        ax.set_xlabel("target task\n(solid: best source; dashed: interval overlaps the best's)")
        fig.colorbar(image, ax=ax, shrink=0.85, label=title)
        out += save(fig, folder, file)
    return out


def _interval_notes(cells: pd.DataFrame, tasks, digits: int, floor_mark: str) -> pd.DataFrame:
    """Each cell's "[low, high]", and `floor_mark` under an interval that reaches its floor."""
    frame = matrix(cells, tasks)
    low = matrix(cells.assign(value=cells.ci_low), tasks)
    high = matrix(cells.assign(value=cells.ci_high), tasks)
    near = cells.near_floor.map(flagged) if "near_floor" in cells else cells.value * 0
    floored = matrix(cells.assign(value=near.astype(float)), tasks) == 1
    notes = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for s in frame.index:
        for t in frame.columns:
            if np.isfinite(low.loc[s, t]):
                notes.loc[s, t] = f"[{low.loc[s, t]:.{digits}f}, {high.loc[s, t]:.{digits}f}]"
                if floored.loc[s, t]:
                    notes.loc[s, t] += "\n" + floor_mark
    return notes


def _outline_ties(ax, frame: pd.DataFrame, ties: pd.DataFrame, key: str) -> None:
    """Outline each column's best source (solid) and those tied with it (dashed)."""
    mine = ties[ties.matrix == key] if len(ties) else ties
    for r in mine.itertuples():
        if r.source != r.best_source and not flagged(r.tied_with_best):
            continue
        i, j = list(frame.index).index(r.source), list(frame.columns).index(r.target)
        style = "-" if r.source == r.best_source else "--"
        box = plt.Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, linestyle=style,
                            linewidth=1.6, edgecolor="black")  # fmt: skip
        ax.add_patch(box)


def predictor_figure(tables: dict, folder: Path, tasks) -> list[Path]:
    """Each predictor against each outcome over the (source, target) cells, one panel
    per pair, coloured by target (the within-target ranking is what picks a source),
    with Spearman and Kendall and their intervals."""
    cells, corr = tables.get("predictor_cells"), tables.get("predictors")
    if cells is None or not _any_pair(cells, corr):
        return []
    predictors = list(dict.fromkeys(corr.predictor))
    outcomes = list(dict.fromkeys(corr.outcome))
    fig, axes = plt.subplots(
        len(outcomes),
        len(predictors),
        figsize=(3.7 * len(predictors), 3.3 * len(outcomes)),
        squeeze=False,
    )
    for (i, outcome), (j, predictor) in itertools.product(
        enumerate(outcomes), enumerate(predictors)
    ):
        ax = axes[i][j]
        both = cells[np.isfinite(cells[predictor]) & np.isfinite(cells[outcome])]
        colours = {t: f"C{k}" for k, t in enumerate(tasks)}
        for r in both.itertuples():
            ax.scatter(
                getattr(r, predictor),
                getattr(r, outcome),
                color=colours[r.target],
                s=22,
                label=name(r.target),
            )
        pair = corr[(corr.predictor == predictor) & (corr.outcome == outcome)]
        row = pair[pair.scope == "all cells"].iloc[0]
        text = f"{row.cells} cells"
        if np.isfinite(row.spearman):
            text = (
                f"Spearman {row.spearman:.2f} [{row.spearman_low:.2f}, {row.spearman_high:.2f}]"
                f"\nKendall {row.kendall:.2f} [{row.kendall_low:.2f}, {row.kendall_high:.2f}]"
            )
        within = pair[pair.scope == "within target"]
        if len(within) and np.isfinite(within.spearman.iloc[0]):
            text += f"\nwithin target: Spearman {within.spearman.iloc[0]:.2f}"
        ax.set_title(text, fontsize=8)
        ax.set_xlabel(predictor.replace("_", "-"))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # wide ranges: labels apart
        ax.set_ylabel(outcome.replace("_", " "))
    unique = {}
    for ax in axes.ravel():
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            unique.setdefault(label, h)
    fig.legend(
        unique.values(),
        [f"to {t}" for t in unique],
        loc="upper center",
        ncol=len(unique),
        fontsize=8,
        bbox_to_anchor=(0.5, 1.0),
    )
    fig.suptitle("Which cheap signal predicts transfer? (source ≠ target)", y=1.05)
    fig.tight_layout()
    return save(fig, folder, "predictors")


def _any_pair(cells: pd.DataFrame, corr: pd.DataFrame) -> bool:
    """Whether some cell has both a predictor and an outcome (a point to draw)."""
    for p, o in zip(corr.predictor, corr.outcome, strict=True):
        if (
            np.isfinite(cells[p].to_numpy(dtype=float))
            & np.isfinite(cells[o].to_numpy(dtype=float))
        ).any():
            return True
    return False


def rogue_figure(tables: dict, folder: Path, tasks) -> list[Path]:
    """Per task: the top dimension's variance share per layer of each model compared
    (top row), and the diagonal CKA raw vs standardized of each comparison (bottom)."""
    dims, rogue = tables.get("rogue_dims"), tables.get("rogue_profiles")
    if dims is None or dims.empty:
        return []
    panels = [t for t in tasks if (dims.probe_task == t).any()]
    fig, axes = plt.subplots(2, len(panels), figsize=(3.4 * len(panels), 6.2), squeeze=False)
    for j, task in enumerate(panels):
        ax = axes[0][j]
        for label, g in dims[dims.probe_task == task].groupby("label", sort=False):
            ax.plot(g.hidden, g.top1, marker="o", ms=3, label=label)
        ax.set_ylim(0, max(0.1, 1.25 * dims.top1.max()))  # a share near 1 would stand out
        ax.set_title(f"{name(task)} probe set", fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("variance share of the top dimension")
        ax.legend(fontsize=6)
        ax = axes[1][j]
        mine = rogue[(rogue.probe_task == task) & (rogue.hidden_x == rogue.hidden_y)]
        for kind, g in mine.groupby("kind", sort=False):
            line = ax.plot(g.hidden_x, g.cka, marker="o", ms=3, label=f"{kind}, raw")[0]
            ax.plot(
                g.hidden_x,
                g.cka_standardized,
                marker="s",
                ms=3,
                linestyle="--",
                color=line.get_color(),
                label=f"{kind}, standardized",
            )
        _layer_axes(ax, "CKA(layer l, layer l)")
    fig.suptitle("Rogue dimensions: variance share, and CKA with every dimension standardized")
    fig.tight_layout()
    return save(fig, folder, "rogue_dimensions")


def subgroup_figure(tables: dict, folder: Path, tasks) -> list[Path]:
    """Per task: the diagonal CKA (pretrained vs fine-tuned, biased) per layer, one line
    per token subgroup (POS: the most frequent tags too)."""
    groups = tables.get("subgroups")
    if groups is None or groups.empty:
        return []
    sel = groups[
        (groups.kind == "pretrained")
        & (groups.estimator == groups.estimator.iloc[0])
        & (groups.hidden_x == groups.hidden_y)
    ]
    panels = [t for t in tasks if (sel.probe_task == t).any()]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, task in zip(axes[0], panels, strict=True):
        mine = sel[sel.probe_task == task]
        order = mine.groupby("group").n.first().sort_values(ascending=False)
        shown = [g for g in order.index if not g.startswith("tag ")]
        shown += [g for g in order.index if g.startswith("tag ")][:5]
        for group in shown:
            g = mine[mine.group == group]
            ax.plot(g.hidden_x, g.cka, marker="o", ms=3, label=f"{group} (n={g.n.iloc[0]})")
        _layer_axes(ax, "CKA(pretrained layer l, fine-tuned layer l)")
        ax.set_title(f"{name(task)} probe set", fontsize=9)
    fig.suptitle("What fine-tuning changes, by kind of token")
    fig.tight_layout()
    return save(fig, folder, "subgroups")


def _layer_axes(ax, ylabel: str) -> None:
    """A per-layer CKA panel: y from 0 to 1, layers on x, a small legend."""
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)
