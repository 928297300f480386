"""The one check of activations every maths module uses (bertrep.maths.layers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertrep.maths.layers import as_layers, check_finite, one_layer, shared_rows


def test_as_layers_takes_every_spelling_of_a_model():
    stacked = np.zeros((3, 5, 2))
    assert [x.shape for x in as_layers(stacked, "xs")] == [(5, 2)] * 3
    assert [x.shape for x in as_layers([np.zeros((5, 2)), np.zeros((5, 7))], "xs")] == [
        (5, 2),
        (5, 7),
    ]
    assert len(as_layers(np.zeros((5, 2)), "xs")) == 1
    assert len(as_layers(torch.zeros(2, 5, 4), "ys")) == 2  # torch as numpy


@pytest.mark.parametrize(
    ("xs", "single", "match"),
    [
        (np.zeros(5), True, r"xs must be \(n, p\) or \(L, n, p\); got shape \(5,\)"),
        (np.zeros((5, 2)), False, r"xs must be \(L, n, p\) or a sequence of \(n, p\)"),
        ([], True, "xs has no layers"),
        ([np.zeros((5, 2)), np.zeros(5)], True, "xs layer 1 must be a 2-D"),
        ([np.zeros((5, 2)), np.zeros((4, 2))], True, "xs layer 1 has 4 rows but layer 0 has 5"),
    ],
)
def test_as_layers_names_the_side_and_layer(xs, single, match):
    with pytest.raises(ValueError, match=match):
        as_layers(xs, "xs", single=single)


def test_finite_and_shared_rows_name_the_first_bad_layer():
    good, bad = np.zeros((4, 2)), np.array([[0.0, np.inf]] * 4)
    sides = {"xs": [good, good], "ys": [good, bad]}
    with pytest.raises(ValueError, match="ys layer 1 contains NaN or inf"):
        check_finite(sides)
    with pytest.raises(ValueError, match="xs layer 0 contains NaN or inf"):
        check_finite(sides, finite=[False, True, True, True])  # flags from a backend
    check_finite({"xs": [good]})
    assert shared_rows({"xs": [good], "ys": [np.zeros((4, 9))]}) == 4
    with pytest.raises(ValueError, match="xs has 4 rows but ys has 3"):
        shared_rows({"xs": [good], "ys": [np.zeros((3, 2))]})


def test_one_layer():
    assert one_layer([[1.0, 2.0], [3.0, 4.0]], "x", min_rows=2).shape == (2, 2)
    with pytest.raises(
        ValueError, match=r"x needs at least 2 rows and 1 column; got shape \(1, 2\)"
    ):
        one_layer(np.zeros((1, 2)), "x", min_rows=2)
    with pytest.raises(ValueError, match="x must be a 2-D"):
        one_layer(np.zeros(3), "x")
    with pytest.raises(ValueError, match="x contains NaN"):
        one_layer(np.array([[np.nan]]), "x")
