"""Drawing primitives: labels beside scatter points stay apart."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from bertrep.figures.plots import LABEL_OFFSETS, label_points


def test_labels_of_nearby_points_do_not_overlap():
    """Two points closer than a label's height: the first label goes right above its
    point, the second right below its own (the first place that overlaps nothing); a
    lone point keeps the first place."""
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    points = [(0.70, 0.912, "STS-B→POS"), (0.70, 0.910, "SST-2→POS"), (0.5, 0.5, "base→POS")]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.4, 1.0)
    notes = label_points(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [n.get_window_extent(renderer) for n in notes]
    assert not boxes[0].overlaps(boxes[1])
    offsets = [n.xyann for n in notes]
    assert offsets == [LABEL_OFFSETS[0][:2], LABEL_OFFSETS[1][:2], LABEL_OFFSETS[0][:2]]
    assert [n.get_text() for n in notes] == ["STS-B→POS", "SST-2→POS", "base→POS"]
    plt.close(fig)


def test_a_label_that_would_leave_the_axes_goes_to_the_left():
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    (note,) = label_points(ax, [(0.99, 0.5, "MNLI→STS-B")])
    assert note.xyann == pytest.approx(LABEL_OFFSETS[2][:2])
    plt.close(fig)
