"""Figures across base models: the headline matrices side by side, and each pair of
models' layer-by-layer CKA on the same words (analysis/across.py's tables)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bertrep.analysis.across import slug
from bertrep.figures.plots import CMAP, draw_matrix, name, save


def across_figures(tables: dict[str, pd.DataFrame], folder: Path, tasks) -> list[Path]:
    """Every figure the tables across base models allow, into `folder`."""
    out = []
    if "base_models" in tables and not tables["base_models"].empty:
        out += side_by_side_figure(tables["base_models"], folder, tasks)
    if "cross_model_cka" in tables and not tables["cross_model_cka"].empty:
        out += cross_model_figures(tables["cross_model_cka"], folder)
    return out


def _square(cells: pd.DataFrame, tasks, column: str = "value") -> pd.DataFrame:
    """One model's matrix (or its cells' status): sources (base last) by targets, in the
    spec's task order."""
    if column == "value":
        cells = cells.astype({"value": "float64"})
    grid = cells.pivot(index="source", columns="target", values=column)
    rows = [t for t in [*tasks, "base"] if t in grid.index]
    grid = grid.reindex(index=rows, columns=[t for t in tasks if t in grid.columns])
    return grid.rename(index=name, columns=name)


def side_by_side_figure(side: pd.DataFrame, folder: Path, tasks) -> list[Path]:
    """Mean-CKA and AuFC of each base model in a row each, one column per model, on a
    shared colour scale per matrix."""
    drawn = side.groupby("matrix", sort=False).value.apply(lambda v: v.notna().any())
    matrices = [m for m in dict.fromkeys(side.matrix) if drawn[m]]  # a matrix with a number
    if not matrices:
        return []
    bases = sorted(side.base_model.unique())
    fig, axes = plt.subplots(len(matrices), len(bases), squeeze=False, layout="constrained",
                             figsize=(3.4 * len(bases) + 0.6, 3.1 * len(matrices)))  # fmt: skip
    for row, matrix in enumerate(matrices):
        values = side[side.matrix == matrix].value.astype("float64").to_numpy()
        finite = values[np.isfinite(values)]
        lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
        for col, base in enumerate(bases):
            cells = side[(side.matrix == matrix) & (side.base_model == base)]
            draw_matrix(axes[row, col], _square(cells, tasks), title=f"{slug(base)}\n{matrix}",
                        vmin=lo, vmax=hi, status=_square(cells, tasks, "status"))  # fmt: skip
    fig.suptitle("Each base model's matrices (rows: source, columns: target)", fontsize=10)
    return save(fig, folder, "base_models_side_by_side")


def cross_model_figures(cross: pd.DataFrame, folder: Path) -> list[Path]:
    """Per probe task: a heatmap of CKA (biased, else the first estimator) of every layer
    of model a (rows) against every layer of model b (columns), one panel per pair of
    base models and model compared (pretrained, fine-tuned on T)."""
    estimator = "biased" if (cross.estimator == "biased").any() else cross.estimator.iloc[0]
    cross = cross[cross.estimator == estimator]
    out = []
    for task, rows in cross.groupby("probe_task", sort=True):
        panels = list(rows.groupby(["model", "base_a", "base_b"], sort=True))
        fig, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                                 figsize=(4.2 * len(panels) + 0.8, 3.8))  # fmt: skip
        for ax, ((what, a, b), pair) in zip(axes[0], panels, strict=True):
            grid = pair.astype({"cka": "float64"}).pivot(
                index="layer_a", columns="layer_b", values="cka"
            )
            image = ax.imshow(grid.to_numpy(dtype=float), cmap=CMAP, vmin=0, vmax=1,
                              origin="lower")  # fmt: skip
            ax.set_xlabel(f"{slug(b)}: hidden state")
            ax.set_ylabel(f"{slug(a)}: hidden state")
            ax.set_xticks(range(grid.shape[1]), grid.columns)
            ax.set_yticks(range(grid.shape[0]), grid.index)
            if grid.size <= 64:  # small enough to read each number
                for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.5 else "black")  # fmt: skip
            ax.set_title(f"{what}, {int(pair.words.iloc[0])} words", fontsize=9)
        fig.colorbar(image, ax=axes[0].tolist(), label=f"linear CKA ({estimator})", shrink=0.8)
        fig.suptitle(f"Layers across base models on {name(task)}'s words", fontsize=10)
        out += save(fig, folder, f"cross_model_cka_{task}")
    return out
