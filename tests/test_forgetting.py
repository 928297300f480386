"""Forgetting numerics: drift per hidden state and what task A lost, on arrays."""

from __future__ import annotations

import numpy as np
import pytest

from bertrep.maths.cka import linear_cka
from bertrep.maths.forgetting import drift, forgotten


def states(seed: int, layers: int = 3, n: int = 200, width: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((layers, n, width))


def test_an_unmoved_model_has_drift_one_at_every_layer():
    ref = states(0)
    np.testing.assert_allclose(drift(ref, ref), 1.0, atol=1e-12)
    # CKA is invariant to rotation and isotropic scaling: a rotated, rescaled copy has not moved
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((16, 16)))
    np.testing.assert_allclose(drift(ref, 3.0 * ref @ q), 1.0, atol=1e-12)


def test_drift_is_the_same_layer_cka_and_falls_where_layers_move():
    ref = states(0)
    cur = ref.copy()
    cur[2] = states(5)[2]  # the top layer replaced: unrelated representation
    cur[1] = ref[1] + 0.5 * states(6)[1]  # the middle one partly moved
    d = drift(ref, cur)
    assert d[0] == pytest.approx(1.0)
    assert d[1] == pytest.approx(linear_cka(ref[1], cur[1])) and 0.5 < d[1] < 1.0
    assert d[2] < 0.2  # near the floor of independent 16-wide representations at n = 200
    debiased = drift(ref, cur, debiased=True)
    assert debiased[2] < d[2]  # the debiased estimator removes most of that floor


def test_forgotten_is_the_drop_from_the_first_to_the_last_checkpoint():
    assert forgotten([0.9, 0.7, 0.4]) == pytest.approx(0.5)
    assert forgotten([0.2, 0.6]) == pytest.approx(-0.4)  # gained, not forgotten
    with pytest.raises(ValueError, match="at least two checkpoints"):
        forgotten([0.9])


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="equal H and N"):
        drift(states(0, layers=3), states(0, layers=2))
