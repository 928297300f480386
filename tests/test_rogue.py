"""bertrep.maths.rogue: standardizing undoes an inflated dimension's effect on CKA, variance and
dimension shares against analytic values and a brute-force loop, and the input guards.

    pytest tests/test_rogue.py
"""

import numpy as np
import pytest

from bertrep.maths.cka import linear_cka
from bertrep.maths.rogue import (
    DimensionShare,
    dimension_share_profile,
    dimension_shares,
    shares_by_dimension,
    standardize,
    variance_shares,
)


def exact_standard(a):
    """Columns of mean 0 and population std 1, written out independently of the module."""
    a = a - a.mean(0)
    return a / np.sqrt((a * a).mean(0))


@pytest.fixture
def pair():
    """X0 (500, 20) and Y = X0 R + noise (500, 15), both with standardized columns."""
    rng = np.random.default_rng(0)
    x0 = exact_standard(rng.standard_normal((500, 20)))
    y = exact_standard(x0 @ rng.standard_normal((20, 15)) + rng.standard_normal((500, 15)))
    return x0, y


def inflate(x, column, factor=100.0):
    x = x.copy()
    x[:, column] *= factor
    return x


def brute_shares(x, y):
    xc, yc = x - x.mean(0), y - y.mean(0)
    c2 = np.zeros((x.shape[1], y.shape[1]))
    for a in range(x.shape[1]):
        for b in range(y.shape[1]):
            c2[a, b] = float(xc[:, a] @ yc[:, b]) ** 2
    return c2.sum(1) / c2.sum(), c2.sum(0) / c2.sum()


def test_standardize_restores_cka_of_uninflated(pair):
    x0, y = pair
    x_infl = inflate(x0, 3)
    assert abs(linear_cka(x_infl, y) - linear_cka(x0, y)) > 0.1
    restored = linear_cka(standardize(x_infl), standardize(y))
    assert restored == pytest.approx(linear_cka(standardize(x0), standardize(y)), abs=1e-10)


def test_standardize_columns():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 6)) * [1, 10, 1e3, 0.1, 5, 2] + [0, 1e4, -3, 7, 0, 1]
    z = standardize(x)
    assert z.dtype == np.float64 and z.shape == x.shape
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-12)
    assert standardize(x.astype(np.float32)).dtype == np.float32


def test_standardize_constant_column_gives_zeros():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 3))
    x[:, 1] = 0.1  # not exactly representable: its mean carries rounding residue
    z = standardize(x)
    assert np.isfinite(z).all()
    np.testing.assert_array_equal(z[:, 1], 0)
    np.testing.assert_allclose(z[:, [0, 2]], exact_standard(x[:, [0, 2]]), atol=1e-12)


def test_variance_shares_match_analytic():
    rng = np.random.default_rng(3)
    scales = np.array([1.0, 7.0, 0.5, 3.0, 2.0])
    x = exact_standard(rng.standard_normal((400, 5))) * scales + rng.standard_normal(5)
    var = np.sort(scales**2)[::-1]
    expected = np.cumsum(var)[:3] / var.sum()  # 49, 49 + 9, 49 + 9 + 4 of 63.25
    np.testing.assert_allclose(variance_shares(x, top=3), expected, rtol=0, atol=1e-12)
    assert variance_shares(x, top=5)[-1] == pytest.approx(1, abs=1e-12)
    assert np.isnan(variance_shares(np.ones((4, 2)), top=1)).all()


def test_dimension_shares_match_brute_force():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 4)) * [1, 3, 0.5, 2] + 5
    y = x[:, :3] @ rng.standard_normal((3, 3)) + rng.standard_normal((50, 3))
    want_x, want_y = brute_shares(x, y)
    got_x, got_y = shares_by_dimension(x, y)
    np.testing.assert_allclose(got_x, want_x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_y, want_y, rtol=0, atol=1e-12)
    assert got_x.sum() == pytest.approx(1, abs=1e-12)
    assert got_y.sum() == pytest.approx(1, abs=1e-12)
    top = dimension_shares(x, y)
    side, shares = ("x", want_x) if want_x.max() >= want_y.max() else ("y", want_y)
    assert top.side == side and top.index == int(shares.argmax())
    assert top.share == pytest.approx(shares.max(), abs=1e-12)


def test_inflated_dimension_is_reported(pair):
    x0, y = pair
    top = dimension_shares(inflate(x0, 7), y)
    assert top.share > 0.5 and (top.index, top.side) == (7, "x")
    top = dimension_shares(y, inflate(x0, 11))
    assert top.share > 0.5 and (top.index, top.side) == (11, "y")
    assert dimension_shares(x0, y).share < 0.5


def test_zero_numerator_gives_nan():
    x = np.random.default_rng(5).standard_normal((10, 3))
    top = dimension_shares(x, np.ones((10, 2)))
    assert np.isnan(top.share) and (top.index, top.side) == (-1, "")


def test_profile_equals_pairwise(pair):
    x0, y = pair
    rng = np.random.default_rng(6)
    xs = np.stack([x0, inflate(x0, 2), x0 + rng.standard_normal(x0.shape)])
    ys = [y, inflate(y, 5), rng.standard_normal((500, 8))]  # ragged widths as a list
    profile = dimension_share_profile(xs, ys)
    assert profile.shape == (3, 3)
    want = np.array([[dimension_shares(x, yy).share for yy in ys] for x in xs])
    # the profile's one product runs in float32: shares agree to ~1e-6 relative
    np.testing.assert_allclose(profile, want, rtol=1e-5, atol=1e-7)
    assert isinstance(dimension_shares(xs[0], ys[0]), DimensionShare)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: dimension_shares(np.ones((5, 2)), np.ones((6, 2))), "5 rows but y has 6"),
        (lambda: dimension_shares(np.ones((1, 2)), np.ones((1, 2))), "at least 2 rows"),
        (lambda: dimension_shares(np.ones((2, 3, 4)), np.ones((3, 4))), "x must be a 2-D"),
        (lambda: dimension_shares(np.ones(5), np.ones((5, 1))), "x must be a 2-D"),
        (lambda: dimension_shares(np.ones((3, 2)), np.full((3, 2), np.nan)), "y contains NaN"),
        (lambda: standardize(np.array([[1.0, np.inf], [2.0, 3.0]])), "x contains NaN or inf"),
        (lambda: variance_shares(np.ones((4, 3)), top=4), "top must be between 1 and p = 3"),
        (lambda: variance_shares(np.ones((4, 3)), top=0), "top must be between"),
        (lambda: dimension_share_profile(np.ones((4, 3)), np.ones((1, 4, 3))), "xs must be"),
        (lambda: dimension_share_profile([], [np.ones((4, 3))]), "xs has no layers"),
        (
            lambda: dimension_share_profile([np.ones((4, 3)), np.ones((5, 3))], [np.ones((4, 3))]),
            "xs layer 1 has 5 rows",
        ),
        (
            lambda: dimension_share_profile([np.ones((4, 3))], [np.ones((4, 3)), np.ones(4)]),
            "ys layer 1 must be a 2-D",
        ),
        (
            lambda: dimension_share_profile(np.ones((1, 4, 3)), np.ones((1, 5, 3))),
            "xs has 4 rows but ys has 5",
        ),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
