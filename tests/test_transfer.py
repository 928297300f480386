"""bertrep.maths.transfer on small cases worked out by hand.

pytest tests/test_transfer.py
"""

import numpy as np
import pytest

from bertrep.maths.transfer import (
    aufc,
    average_transferability,
    matrix_correlation,
    mean_cka,
    normalize,
)


def test_normalize():
    assert normalize(0.75, chance=0.5, best=1.0) == pytest.approx(0.5)
    assert normalize(0.5, chance=0.5, best=0.9) == 0.0
    np.testing.assert_allclose(normalize([0.9, 0.7], chance=0.5, best=0.9), [1.0, 0.5])
    # STS-B: chance 0, so a Pearson score is just scaled by the best one.
    assert normalize(0.44, chance=0.0, best=0.88) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="best equals chance"):
        normalize(0.7, chance=0.5, best=0.5)
    # a training run logs NaN and goes on
    assert np.isnan(normalize(0.7, chance=0.5, best=0.5, strict=False))
    assert np.isnan(normalize([0.7, 0.8], chance=0.5, best=np.nan, strict=False)).all()


def test_aufc_by_hand():
    # norm = [1, 0.5, 0] at x = [0, 0.5, 1]: 0.5·(1 + 0.5)/2 + 0.5·(0.5 + 0)/2 = 0.5
    kw = {"num_layers": 12, "chance": 0.5, "best": 0.9}
    assert aufc([0, 6, 12], [0.9, 0.7, 0.5], **kw) == pytest.approx(0.5)
    assert aufc([12, 0, 6], [0.5, 0.9, 0.7], **kw) == pytest.approx(0.5)  # any order
    # Uneven grid: x = [0, 0.25, 1], norm = [1, 1, 0.5] -> 0.25 + 0.75·0.75 = 0.8125
    assert aufc([0, 3, 12], [0.9, 0.9, 0.7], **kw) == pytest.approx(0.8125)
    # Full fine-tuning quality at every k covers the unit square.
    assert aufc(range(13), [0.9] * 13, **kw) == pytest.approx(1.0)


def test_aufc_grid_checks():
    kw = {"num_layers": 12, "chance": 0.5, "best": 0.9}
    with pytest.raises(ValueError, match="must include 0 and num_layers = 12"):
        aufc([0, 6], [0.9, 0.7], **kw)
    assert aufc([0, 6], [0.9, 0.7], require_endpoints=False, **kw) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="duplicates"):
        aufc([0, 6, 6, 12], [0.9, 0.7, 0.7, 0.5], **kw)
    with pytest.raises(ValueError, match=r"0\.\.12"):
        aufc([0, 13], [0.9, 0.5], **kw)
    with pytest.raises(ValueError, match="equal length"):
        aufc([0, 12], [0.9], **kw)
    with pytest.raises(ValueError, match="best equals chance"):
        aufc([0, 12], [0.9, 0.5], num_layers=12, chance=0.5, best=0.5)
    with pytest.raises(ValueError, match="NaN"):
        aufc([0, 12], [0.9, float("nan")], **kw)


def test_mean_cka_by_hand():
    cross = np.array([[1.0, 0.5], [0.5, 1.0]])
    self_ = np.array([[1.0, 0.7], [0.7, 1.0]])
    # cross − self = [[0, −0.2], [−0.2, 0]], mean −0.1
    assert mean_cka(cross, self_) == pytest.approx(0.9)
    assert mean_cka(self_, self_) == pytest.approx(1.0)
    # Stacks over seed pairs are averaged first: the two cross pairs average to `cross`.
    cross_pairs = np.stack([cross + 0.1, cross - 0.1])
    self_pairs = np.stack([self_, self_, self_])
    assert mean_cka(cross_pairs, self_pairs) == pytest.approx(0.9)


def test_mean_cka_checks():
    with pytest.raises(ValueError, match="differ in shape"):
        mean_cka(np.eye(2), np.eye(3))
    with pytest.raises(ValueError, match=r"\(L, L\) or \(S, L, L\)"):
        mean_cka(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        mean_cka(np.array([[1.0, np.nan], [0.0, 1.0]]), np.eye(2))


def test_average_transferability():
    m = np.array([[9.0, 1.0, 2.0], [3.0, 9.0, 5.0], [0.0, 6.0, 9.0]])
    np.testing.assert_allclose(average_transferability(m), [1.5, 4.0, 3.0])
    with pytest.raises(ValueError, match="square"):
        average_transferability(np.ones((2, 3)))


def test_average_transferability_leaves_missing_cells_out():
    m = np.array([[9.0, np.nan, 2.0], [3.0, 9.0, 5.0], [np.nan, np.nan, 9.0]])
    np.testing.assert_allclose(average_transferability(m), [2.0, 4.0, np.nan])


def test_matrix_correlation():
    a = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 5.0], [4.0, 6.0, 0.0]])
    b = 2 * a + 1
    b[np.diag_indices(3)] = [100.0, -50.0, 7.0]  # the diagonal is ignored
    r = matrix_correlation(a, b)
    assert r.pearson == pytest.approx(1.0) and r.spearman == pytest.approx(1.0)
    assert r.cells == 6
    r = matrix_correlation(a, np.exp(a))  # monotone, not linear
    assert r.spearman == pytest.approx(1.0) and r.pearson < 0.99
    with pytest.raises(ValueError, match="differ in shape"):
        matrix_correlation(a, np.eye(2))
    with pytest.raises(ValueError, match="constant"):
        matrix_correlation(a, np.ones((3, 3)))


def test_matrix_correlation_over_the_cells_both_have():
    a = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 5.0], [4.0, 6.0, 0.0]])
    b = 2 * a + 1
    b[0, 1] = np.nan  # left out, with a's cell
    a[2, 0] = np.nan
    r = matrix_correlation(a, b)
    assert r.cells == 4 and r.pearson == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3"):
        matrix_correlation(a, np.full((3, 3), np.nan))
