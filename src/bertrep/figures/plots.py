"""Drawing primitives shared by every figure: task names, saving as PNG and PDF, the CKA
heatmap and the annotated matrix, each following docs/definitions.md's conventions.

    image = heatmap(ax, profile_rows, "SST-2", xlabel="layer, seed 0", ylabel="layer, seed 1")
    image = draw_matrix(ax, frame, title="AuFC")      # rows sources, columns targets
    label_points(ax, [(x, y, "SST-2→POS"), ...])      # labels beside points, apart
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bertrep.analysis import cells
from bertrep.data.tasks import display_name

CMAP = "viridis"


def name(task: str) -> str:
    """A task's display name (SST-2), as its spec gives it; base and others as they are."""
    return display_name(task)


def save(fig, folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / f"{name}.png", folder / f"{name}.pdf"]
    fig.savefig(out[0], dpi=130, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight")
    plt.close(fig)
    return out


# where a point's label may go, in points from it: right above, right below, left above,
# left below, then further out
LABEL_OFFSETS = [
    (3, 3, "left", "bottom"), (3, -3, "left", "top"), (-3, 3, "right", "bottom"),
    (-3, -3, "right", "top"), (3, 12, "left", "bottom"), (3, -12, "left", "top"),
]  # fmt: skip


def label_points(ax, points: list[tuple[float, float, str]], fontsize: float = 7) -> list:
    """Write each label beside its point, at the first place of LABEL_OFFSETS where it
    overlaps no label written before and stays inside the axes (else the first place):
    nearby points keep legible labels. Returns the annotations."""
    renderer = ax.figure.canvas.get_renderer()
    ax.autoscale_view()
    frame = ax.get_window_extent(renderer)
    placed, boxes = [], []

    def fits(box) -> bool:
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
        return inside and box.y1 <= frame.y1 and not any(box.overlaps(b) for b in boxes)

    for x, y, text in points:
        for i, (dx, dy, ha, va) in enumerate([*LABEL_OFFSETS, LABEL_OFFSETS[0]]):
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                               fontsize=fontsize, ha=ha, va=va)  # fmt: skip
            box = note.get_window_extent(renderer)
            if i == len(LABEL_OFFSETS) or fits(box):  # the last try: the first place
                break
            note.remove()
        placed.append(note)
        boxes.append(box)
    return placed


def headline(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the headline estimator (the first the analysis used)."""
    if frame.empty or "estimator" not in frame:
        return frame
    return frame[frame.estimator == frame.estimator.iloc[0]]


def heatmap(ax, rows: pd.DataFrame, title: str, *, xlabel: str, ylabel: str):
    """One profile: x = hidden_x (the first model's layers), y = hidden_y, 1 bottom-left."""
    grid = rows.pivot(index="hidden_y", columns="hidden_x", values="cka").sort_index()
    grid = grid[sorted(grid.columns)]
    xs, ys = grid.columns.to_numpy(), grid.index.to_numpy()
    image = ax.imshow(
        grid.to_numpy(),
        origin="lower",
        vmin=0,
        vmax=1,
        cmap=CMAP,
        extent=(xs[0] - 0.5, xs[-1] + 0.5, ys[0] - 0.5, ys[-1] + 0.5),
    )
    for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
        if not np.isfinite(v):  # a constant layer's CKA is undefined: say so, never a colour
            ax.add_patch(plt.Rectangle((xs[j] - 0.5, ys[i] - 0.5), 1, 1, fill=False,
                                       hatch="///", edgecolor="0.55", linewidth=0))  # fmt: skip
            if len(xs) <= 8:
                ax.text(xs[j], ys[i], cells.UNDEFINED, ha="center", va="center", fontsize=6,
                        color="0.3")  # fmt: skip
    ax.set_xticks(xs)
    ax.set_yticks(ys)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    first = rows.iloc[0]
    floor = ""
    if "near_floor" in rows:  # cells whose interval reaches the CKA of unrelated rows
        near = rows[rows.near_floor.fillna(False).astype(bool)]
        ax.scatter(near.hidden_x, near.hidden_y, marker="x", color="red", s=18)
        floor = f", × at floor: {len(near)}" if len(near) else ""
    ax.set_title(
        f"{title}\n{name(first.probe_task)} probe, n = {first.n}, {first.estimator}{floor}",
        fontsize=9,
    )
    return image


def draw_matrix(
    ax,
    frame: pd.DataFrame,
    *,
    title: str,
    vmin=None,
    vmax=None,
    digits: int = 2,
    notes=None,
    status=None,
):
    """Sources as rows (base last), targets as columns, each value written in its cell
    (and below it the cell's entry of `notes`, a frame of strings, if given); a cell
    without a number is hatched and labelled with its entry of `status` (the cell labels
    of bertrep.analysis.cells; "missing" without one), never coloured; a single seed's number is
    marked so. Returns the image."""
    values = frame.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    lo = vmin if vmin is not None else (finite.min() if len(finite) else 0.0)
    hi = vmax if vmax is not None else (finite.max() if len(finite) else 1.0)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=CMAP, vmin=lo, vmax=hi)
    for (i, j), v in np.ndenumerate(values):
        label = cells.MISSING if status is None else status.iloc[i, j]
        if np.isfinite(v):
            shade = (v - lo) / (hi - lo) if hi > lo else 0.5
            note = "" if notes is None else notes.iloc[i, j]
            note = "\n".join(filter(None, [note, label * (label == cells.SINGLE_SEED)]))
            ax.text(
                j,
                i,
                f"{v:.{digits}f}" + (f"\n{note}" if note else ""),
                ha="center",
                va="center",
                fontsize=9 if notes is None else 8,
                color="black" if shade > 0.6 else "white",
            )
        else:
            ax.add_patch(
                plt.Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.55", linewidth=0
                )
            )
            ax.text(j, i, textwrap.fill(cells.why_empty(label), 11), ha="center",
                    va="center", fontsize=8, color="0.3")  # fmt: skip
    ax.set_xticks(range(values.shape[1]), [name(t) for t in frame.columns])
    ax.set_yticks(range(values.shape[0]), [name(t) for t in frame.index])
    ax.set_xlabel("target task")
    ax.set_ylabel("source")
    ax.set_title(title, fontsize=10)
    return image
