"""The forgetting figures: scores over the B phase, CKA against the model tuned on A
alone (and B alone) at checkpoints, and old- vs new-domain drift, from the forgetting
tables of an analysis.

    files = forgetting_figures(tables, Path("figures"), tasks)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bertrep.figures.plots import headline, heatmap, name, save


def _pair_name(row) -> str:
    joint = "→" if row["mode"] == "sequential" else "+"
    return f"{name(row.task_a)}{joint}{name(row.task_b)}"


def forgetting_figures(tables: dict, folder: Path, tasks) -> list[Path]:
    scores, cka = tables["forgetting"], headline(tables["forgetting_cka"])
    if scores.empty:
        return []
    out = []
    seq = scores[scores["mode"] == "sequential"]
    # a fixed order whatever the store's: by seed, then pair, its two directions together
    pair = [",".join(sorted(ab)) for ab in zip(seq.task_a, seq.task_b, strict=True)]
    seq = seq.assign(pair=pair).sort_values(["seed", "pair", "task_a"], kind="stable")
    runs = list(dict.fromkeys(seq.run_id))
    first_seed = list(dict.fromkeys(seq.drop_duplicates(["task_a", "task_b"]).run_id))
    if first_seed:  # one row per pair (its first seed): SST-2→POS beside POS→SST-2
        out += _asymmetry(scores, cka, first_seed, folder)
    for run_id in dict.fromkeys(scores[scores["mode"] == "shuffled"].run_id):
        out += _shuffled(scores, cka, run_id, folder)
    for run_id in runs:
        out += _domains(scores, cka, run_id, folder)
    return out


def _score_panel(ax, scores: pd.DataFrame, run_id: str) -> None:
    s = scores[scores.run_id == run_id]
    for role, g in s.groupby("scored"):
        g = g.sort_values("fraction")
        what = "old task A" if role == "A" else "new task B"
        if not np.isfinite(g.norm_score.to_numpy(dtype=float)).any():  # a labelled target
            what += ": no normalized score"
        ax.plot(g.fraction, g.norm_score, marker="o", label=f"{name(g.task.iloc[0])} ({what})")
    shuffled = s["mode"].iloc[0] == "shuffled"
    ax.set_xlabel("fraction of training" if shuffled else "fraction of the B phase")
    ax.set_ylabel("normalized score")
    ax.set_title(_pair_name(s.iloc[0]) + ": scores", fontsize=9)
    ax.legend(fontsize=7)


def _asymmetry(scores, cka, runs, folder) -> list[Path]:
    """Per sequential pair: scores over the B phase, and the profile against the A-tuned
    model on A's probe set at three checkpoints."""
    fig, axes = plt.subplots(len(runs), 4, figsize=(15, 3.8 * len(runs)), squeeze=False,
                             layout="constrained")  # fmt: skip
    image = None
    for row_axes, run_id in zip(axes, runs, strict=True):
        _score_panel(row_axes[0], scores, run_id)
        sel = cka[(cka.run_id == run_id) & (cka.reference == "A")] if len(cka) else cka
        if sel.empty:
            continue
        a = sel.task_a.iloc[0]
        on_a = sel[sel.probe_task == a]
        if on_a.empty:
            continue
        steps = sorted(on_a.step_y.unique())
        # three checkpoints after the start; with three or fewer, each once (never twice)
        index = (1, len(steps) // 2, len(steps) - 1) if len(steps) > 3 else range(len(steps))
        picks = [steps[i] for i in index]
        for ax in row_axes[1 + len(picks) :]:
            ax.axis("off")
        for ax, step in zip(row_axes[1 : 1 + len(picks)], picks, strict=True):
            rows = on_a[on_a.step_y == step]
            image = heatmap(
                ax,
                rows,
                f"{_pair_name(rows.iloc[0])}, {rows.fraction.iloc[0]:.0%} of B",
                xlabel="layer, A-tuned model",
                ylabel="layer, during B",
            )
    if image is not None:
        fig.colorbar(image, ax=axes[:, 1:], label="linear CKA", shrink=0.8)
    fig.suptitle("Forgetting: scores over the B phase and CKA against the A-tuned model")
    return save(fig, folder, "forgetting_asymmetry")


def _shuffled(scores, cka, run_id, folder) -> list[Path]:
    """Shuffled training: in the left column the scores, and each layer's CKA at the end
    against the model tuned on A alone (A's probe) and on B alone (B's probe); to the
    right, the profile against each of them at every checkpoint (one row per reference)."""
    sel = cka[cka.run_id == run_id] if len(cka) else cka
    if sel.empty:
        return []
    a, b = sel.task_a.iloc[0], sel.task_b.iloc[0]
    steps = sorted(sel.step_y.unique())
    fig, axes = plt.subplots(2, len(steps) + 1, figsize=(3.4 * (len(steps) + 1), 7.2),
                             layout="constrained")  # fmt: skip
    _score_panel(axes[0][0], scores, run_id)
    image, end = None, axes[1][0]
    for row, (ref, task) in enumerate((("A", a), ("B", b))):
        on = sel[(sel.reference == ref) & (sel.probe_task == task)]
        for ax, step in zip(axes[row][1:], steps, strict=True):
            rows = on[on.step_y == step]
            if rows.empty:
                ax.axis("off")
                continue
            title = f"vs {name(task)} alone, {rows.fraction.iloc[0]:.0%} of training"
            image = heatmap(ax, rows, title, xlabel=f"layer, tuned on {name(task)} alone",
                            ylabel="layer, shuffled")  # fmt: skip
        last = on[(on.hidden_x == on.hidden_y) & (on.step_y == steps[-1])]
        if len(last):
            end.plot(last.hidden_x, last.cka, marker="o", label=f"vs {name(task)} alone")
    end.set_ylim(0, 1.02)
    end.set_xlabel("layer")
    end.set_ylabel("CKA, same layer, end of training")
    end.legend(fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes[:, 1:], label="linear CKA", shrink=0.8)
    fig.suptitle(f"Shuffled {name(a)} + {name(b)}: where the representation lands")
    run = scores[scores.run_id == run_id].iloc[0]
    return save(fig, folder, f"shuffled_{a}_{b}_{run.sampling}_seed{run.seed}")


def _domains(scores, cka, run_id, folder) -> list[Path]:
    """Old-domain (A's probe) vs new-domain (B's probe) per-layer CKA against the A-tuned
    model over the B phase, one line per layer."""
    sel = cka[(cka.run_id == run_id) & (cka.reference == "A")] if len(cka) else cka
    if sel.empty:
        return []
    diag = sel[sel.hidden_x == sel.hidden_y]
    a, b = sel.task_a.iloc[0], sel.task_b.iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    layers = sorted(diag.hidden_x.unique())
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(layers)))
    for ax, probe, what in ((axes[0], a, "old domain"), (axes[1], b, "new domain")):
        d = diag[diag.probe_task == probe]
        for layer, colour in zip(layers, colours, strict=True):
            g = d[d.hidden_x == layer].sort_values("fraction")
            ax.plot(g.fraction, g.cka, marker=".", color=colour, label=f"layer {layer}")
        ax.set_title(
            f"{name(probe)} probe ({what}), n = {d.n.iloc[0] if len(d) else '?'}", fontsize=9
        )
        ax.set_xlabel("fraction of the B phase")
    axes[0].set_ylabel("CKA against the A-tuned model, same layer")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{name(a)}→{name(b)}: old vs new domain over training")
    return save(fig, folder, f"domains_{a}_{b}_seed{sel.seed.iloc[0]}")
