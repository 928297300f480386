"""Every figure of the analysis, drawn from its logged tables alone (PNG and PDF).

    make figures                                   # the newest analysis run
    python -m bertrep.figures --run_id <analysis run id> --out figures/
    mlflow run . -e figures --env-manager local

`draw_all(tables, folder, tasks)` is what `analyze` calls; the command line downloads
the tables of an analysis run, redraws every figure into `--out` and logs them back
into that run (no training, no CKA). Conventions (docs/definitions.md): CKA heatmaps put the
first-named model's layers on x, the second's on y, layer 1 bottom-left, colour bar
0–1, probe task and n in the subtitle; matrices have sources as rows (base last),
targets as columns, values written in the cells and missing cells hatched and labelled.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bertrep import env, tracking
from bertrep.analysis import cells, collect
from bertrep.analysis.cells import has_values, matrix
from bertrep.analysis.schemas import conform
from bertrep.analysis.summary import headline_matrices
from bertrep.data.tasks import TASKS
from bertrep.figures.across import across_figures
from bertrep.figures.forgetting import forgetting_figures
from bertrep.figures.plots import draw_matrix, headline, heatmap, label_points, name, save
from bertrep.figures.uncertainty import (
    interval_figures,
    predictor_figure,
    rogue_figure,
    subgroup_figure,
)
from bertrep.tracking import server


def task_profile_figures(tables: dict, folder: Path, tasks) -> list[Path]:
    """Per kind (identity, two seeds, successful vs diverged): one panel per task."""
    profiles = headline(tables["profiles"])
    out = []
    titles = {
        "identity": ("CKA of a fine-tuned model with itself", "seed {sx}", "seed {sy}"),
        "seeds": ("CKA between two seeds of full fine-tuning", "seed {sx}", "seed {sy}"),
        "diverged": (
            "CKA: successful vs failed fine-tuning",
            "successful (seed {sx})",
            "failed (seed {sy})",
        ),
    }
    for kind, (suptitle, xl, yl) in titles.items():
        sel = profiles[profiles.kind == kind] if len(profiles) else profiles
        panels = [t for t in tasks if len(sel) and (sel.target == t).any()]
        if not panels:
            continue
        fig, axes = plt.subplots(
            1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.6), squeeze=False
        )
        for ax, task in zip(axes[0], panels, strict=True):
            rows = sel[sel.target == task]
            seeds = _seeds(tables, rows.iloc[0])
            image = heatmap(
                ax,
                rows,
                name(task),
                xlabel=f"layer, {xl.format(**seeds)}",
                ylabel=f"layer, {yl.format(**seeds)}",
            )
        fig.colorbar(image, ax=axes[0].tolist(), label="linear CKA", shrink=0.85)
        fig.suptitle(suptitle, y=1.04)
        out += save(fig, folder, f"cka_{kind}")
    return out


def _seeds(tables: dict, row) -> dict:
    seed = tables["runs"].set_index("run_id")["seed"]
    return {"sx": seed.get(row.run_x, "?"), "sy": seed.get(row.run_y, "?")}


# --- matrices ---


def matrix_figure(
    frame: pd.DataFrame,
    title: str,
    folder: Path,
    name: str,
    *,
    label: str = "",
    vmin=None,
    vmax=None,
    digits: int = 2,
    status: pd.DataFrame | None = None,
) -> list[Path]:
    fig, ax = plt.subplots(figsize=(1.25 * frame.shape[1] + 2.4, 0.9 * frame.shape[0] + 1.3))
    image = draw_matrix(ax, frame, title=title, vmin=vmin, vmax=vmax, digits=digits,
                        status=status)  # fmt: skip
    bar = fig.colorbar(image, ax=ax, label=label, shrink=0.85)
    bar.formatter.set_useOffset(False)
    return save(fig, folder, name)


def matrix_figures(tables: dict, folder: Path, tasks) -> list[Path]:
    """Each headline matrix with a number in some cell (the summary says what an undrawn
    one needs), each cell without a number labelled with its status."""
    out = []
    for m in headline_matrices(tables):
        values = m.values(tables, tasks)
        if not has_values(values):
            continue
        digits = 3 if m.table == "mean_cka" else 2
        title = m.figure_title or m.title
        out += matrix_figure(values, title, folder, m.file, label=m.label, digits=digits,
                             status=m.labels(tables, tasks))  # fmt: skip
    return out


# --- curves ---


def freezing_curves(tables: dict, folder: Path, tasks) -> list[Path]:
    """Per target: normalized score against the fraction of layers frozen, one line per
    source (mean over seeds), each seed a marker."""
    scores = tables["scores"]
    if not np.isfinite(scores.norm_score.to_numpy(dtype=float)).any():
        return []  # no target has a normalized score (the summary's labels say why)
    panels = [t for t in tasks if (scores.target == t).any()]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False, sharey=True
    )
    colours = dict(zip([*tasks, "base"], plt.cm.tab10.colors, strict=False))
    for ax, target in zip(axes[0], panels, strict=True):
        sel = scores[scores.target == target]
        if not np.isfinite(sel.norm_score.to_numpy(dtype=float)).any():
            why = cells.why_empty(sel.status.iloc[0])
            ax.text(0.5, 0.5, f"{why}:\nno normalized score", ha="center", va="center",
                    transform=ax.transAxes, color="0.3")  # fmt: skip
        for source in [*tasks, "base"]:
            s = sel[(sel.source == source) & np.isfinite(sel.norm_score.to_numpy(dtype=float))]
            if s.empty:
                continue
            x = s.frozen_layers / s.num_layers
            ax.scatter(x, s.norm_score, s=12, color=colours[source], alpha=0.5)
            mean = s.groupby("frozen_layers").norm_score.mean()
            ax.plot(
                mean.index / s.num_layers.iloc[0],
                mean.to_numpy(),
                marker="o",
                color=colours[source],
                label=name(source),
            )
        ax.set_title(f"target {name(target)}")
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel("fraction of layers frozen (k / L)")
        ax.axhline(0, color="0.7", linewidth=0.8)
        ax.axhline(1, color="0.7", linewidth=0.8, linestyle="--")
    axes[0][0].set_ylabel("normalized score")
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), title="source", fontsize=8,
               loc="center left", bbox_to_anchor=(1.0, 0.5))  # fmt: skip
    fig.suptitle("Freezing curves (lines: mean over seeds; dots: seeds)", y=1.03)
    return save(fig, folder, "freezing_curves")


def scatter(tables: dict, folder: Path, tasks) -> list[Path]:
    """Mean-CKA against AuFC over the off-diagonal task cells, with the correlation."""
    mc, au = tables["mean_cka"], tables["aufc"]
    if mc.empty or au.empty:
        return []
    estimator = mc.estimator.iloc[0]
    x = matrix(mc, tasks, estimator=estimator).loc[list(tasks)]
    y = matrix(au, tasks, variant="aufc").loc[list(tasks)]
    both = np.isfinite(x.to_numpy()) & np.isfinite(y.to_numpy()) & ~np.eye(len(tasks), dtype=bool)
    if not both.any():
        return []
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    points = [(x.loc[s, t], y.loc[s, t], f"{name(s)}→{name(t)}") for s in tasks for t in tasks
              if s != t and np.isfinite(x.loc[s, t]) and np.isfinite(y.loc[s, t])]  # fmt: skip
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
    corr = tables["correlation"]
    row = corr[(corr.x == f"mean_cka/{estimator}") & (corr.y == "aufc")]
    note = ""
    if len(row) and np.isfinite(row.pearson.iloc[0]):
        r = row.iloc[0]
        note = f"\nPearson {r.pearson:.2f}, Spearman {r.spearman:.2f}, {r.cells} cells"
    elif len(row):
        note = f"\n{row.cells.iloc[0]} cells: too few to correlate"
    ax.set_title(f"Mean-CKA vs AuFC (source ≠ target){note}", fontsize=9)
    ax.set_xlabel(f"Mean-CKA ({estimator})")
    ax.set_ylabel("AuFC")
    label_points(ax, points)
    return save(fig, folder, "mean_cka_vs_aufc")


def draw_all(tables: dict[str, pd.DataFrame], folder: Path, tasks, computing=None) -> list[Path]:
    """Every figure the tables allow, into `folder`; returns the files written.
    `computing(what)`, a context manager, is told which figure is being drawn (the
    analysis names it should one fail)."""
    tasks = tuple(tasks)
    computing = computing or (lambda what: contextlib.nullcontext())
    out = []
    for draw in (
        task_profile_figures,
        matrix_figures,
        freezing_curves,
        scatter,
        forgetting_figures,
        interval_figures,
        predictor_figure,
        rogue_figure,
        subgroup_figure,
    ):
        with computing(f"figure {draw.__name__}"):
            out += draw(tables, Path(folder), tasks)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run_id", default="", help="an analysis run (default: the newest)")
    parser.add_argument("--out", default="figures", help="where the figures go")
    args = parser.parse_args(argv)
    os.environ.setdefault(env.MLFLOW_ARTIFACTS_PROGRESS_BAR, "false")
    with server.through_server():
        redraw(args.run_id, Path(args.out))


def redraw(run_id: str, out: Path) -> list[Path]:
    """Every figure of an analysis run from its tables, into `out` and back into the run
    (an analysis of several base models: each model's into its folder, as logged)."""
    run = collect.analysis_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        top = collect.read_tables(run.info.run_id, Path(tmp))
        folders = {"": top} if "runs" in top else {
            sub: collect.read_tables(run.info.run_id, Path(tmp) / sub, sub)
            for sub in collect.table_folders(run.info.run_id)
        }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:  # log what this call drew, nothing older
        drawn = []
        if "runs" not in top:  # several base models: the figures across them
            across = conform(top)
            tasks = yaml_tasks(run) or list(dict.fromkeys(across["base_models"].target))
            drawn += across_figures(across, Path(tmp), tasks)
        for sub, tables in folders.items():
            tables = conform(tables)
            tasks = list(dict.fromkeys([*TASKS, *tables["runs"].task]))  # built-ins first
            tasks = [t for t in tasks if (tables["runs"].task == t).any()]
            drawn += draw_all(tables, Path(tmp) / sub, yaml_tasks(run) or tasks)
        collect.MlflowClient().log_artifacts(run.info.run_id, tmp, tracking.FIGURES_DIR)
        for path in drawn:
            target = out / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    print(f"{len(drawn)} files in {out.resolve()} (and in run {run.info.run_id})")
    return [out / p.relative_to(tmp) for p in drawn]


def yaml_tasks(run) -> list[str]:
    """The task order of the analysis spec the run logged."""
    import yaml

    text = collect.read_text(run.info.run_id, tracking.ANALYSIS_SPEC)
    return list((yaml.safe_load(text) or {}).get("tasks") or []) if text else []


if __name__ == "__main__":
    main()
