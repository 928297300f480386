"""bertrep.maths.logme against the direct formula at its optimum, invariances and bad input.

pytest tests/test_logme.py
"""

import numpy as np
import pytest
from scipy import optimize

from bertrep.maths.logme import evidence, logme, logme_fit

# A tiny fixed case for golden numbers: 6 samples, 2 features.
TINY_F = np.array([[1.0, 0.5], [0.2, -1.0], [-0.7, 0.3], [1.5, 1.2], [-1.1, -0.4], [0.3, 0.9]])
TINY_Y = np.array([1.2, -0.8, -0.5, 2.1, -1.3, 0.6])
TINY_LABELS = np.array([1, 0, 0, 1, 0, 1])


def _classes(rng, n, d, classes=3, noise=0.5):
    """Features (n, d) and labels that are the argmax of a linear map of them plus noise."""
    f = rng.normal(size=(n, d))
    scores = f @ rng.normal(size=(d, classes)) + noise * rng.normal(size=(n, classes))
    return f, scores.argmax(1)


def _regression(rng, n, d, noise=0.5, scale=1.0):
    f = rng.normal(size=(n, d))
    return f, f @ (scale * rng.normal(size=d)) + noise * rng.normal(size=n)


def _check_against_formula(f, fit):
    """Every column's L/n equals the direct formula at its (alpha, beta), to 1e-10."""
    for k, (a, b, value) in enumerate(zip(fit.alpha, fit.beta, fit.evidence, strict=True)):
        assert value == pytest.approx(evidence(f, fit.targets[:, k], a, b), abs=1e-10)


def _check_stationary_maximum(f, fit):
    """Moving alpha or beta by ±1%, the other held, lowers the direct formula's L/n."""
    for k, (a, b) in enumerate(zip(fit.alpha, fit.beta, strict=True)):
        y = fit.targets[:, k]
        best = evidence(f, y, a, b)
        for factor in (0.99, 1.01):
            assert evidence(f, y, a * factor, b) < best
            assert evidence(f, y, a, b * factor) < best


def test_matches_direct_formula_at_optimum():
    rng = np.random.default_rng(0)
    f, labels = _classes(rng, 60, 8)
    fit = logme_fit(f, labels)
    assert fit.targets.shape == (60, 3)
    np.testing.assert_array_equal(fit.targets.argmax(1), labels)
    _check_against_formula(f, fit)
    assert logme(f, labels) == np.mean(fit.evidence)
    f, y = _regression(rng, 60, 8)
    fit = logme_fit(f, y, regression=True)
    _check_against_formula(f, fit)
    assert logme(f, y, regression=True) == fit.evidence[0]
    # float32 features are cast to float64, not computed in float32
    f32 = f.astype(np.float32)
    assert logme(f32, y, regression=True) == logme(f32.astype(np.float64), y, regression=True)


def test_optimum_is_stationary_maximum():
    rng = np.random.default_rng(0)
    f, labels = _classes(rng, 60, 8)
    fit = logme_fit(f, labels)
    assert np.all(fit.alpha < 1e4) and np.all(fit.beta < 1e4)  # an interior optimum
    _check_stationary_maximum(f, fit)
    f, y = _regression(rng, 60, 8)
    _check_stationary_maximum(f, logme_fit(f, y, regression=True))


def test_agrees_with_a_general_optimizer():
    # Nelder-Mead over (log α, log β) on the direct formula finds the same maximum.
    fit = logme_fit(TINY_F, TINY_Y, regression=True)
    found = optimize.minimize(
        lambda p: -evidence(TINY_F, TINY_Y, *np.exp(p)),
        x0=[0.0, 0.0],
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 10_000},
    )
    assert -found.fun == pytest.approx(fit.evidence[0], abs=1e-12)
    np.testing.assert_allclose(np.exp(found.x), [fit.alpha[0], fit.beta[0]], rtol=1e-6)


def test_informative_features_score_higher():
    rng = np.random.default_rng(1)
    f, labels = _classes(rng, 200, 16)
    noise = rng.normal(size=f.shape)
    assert logme(f, labels) > logme(noise, labels) + 0.1
    f, y = _regression(rng, 200, 16)
    assert logme(f, y, regression=True) > logme(noise, y, regression=True) + 0.1


def test_invariances():
    rng = np.random.default_rng(2)
    f, labels = _classes(rng, 80, 6, classes=2)
    order = rng.permutation(80)
    base = logme(f, labels)
    assert logme(f[order], labels[order]) == pytest.approx(base, abs=1e-12)
    assert logme(f, np.where(labels == 0, 5, 9)) == pytest.approx(base, abs=1e-12)
    assert logme(f, np.where(labels == 0, 9, 5)) == pytest.approx(base, abs=1e-12)
    assert logme(f, np.where(labels == 0, "neg", "pos")) == pytest.approx(base, abs=1e-12)
    f, y = _regression(rng, 80, 6)
    base = logme(f, y, regression=True)
    assert logme(f[order], y[order], regression=True) == pytest.approx(base, abs=1e-12)


def test_golden_tiny_case():
    # Computed once as evidence(TINY_F, y, alpha, beta) (the direct formula) at the
    # optimum logme_fit returned, and confirmed by test_agrees_with_a_general_optimizer.
    fit = logme_fit(TINY_F, TINY_Y, regression=True)
    assert fit.alpha[0] == pytest.approx(1.6390257967634818, rel=1e-8)
    assert fit.beta[0] == pytest.approx(23.064185076649395, rel=1e-8)
    assert logme(TINY_F, TINY_Y, regression=True) == pytest.approx(-0.5037423028213018, abs=1e-8)
    # Class 1's column has an interior optimum, evidence() there gave -0.8556544503551109;
    # class 0's maximum lies at α → ∞ (next test), whose limit is −(log π + 1)/2.
    fit = logme_fit(TINY_F, TINY_LABELS)
    np.testing.assert_allclose(
        fit.evidence, [-(np.log(np.pi) + 1) / 2, -0.8556544503551109], rtol=0, atol=1e-8
    )


def test_maxima_at_the_boundary():
    # Features almost orthogonal to y carry no usable signal: the maximum is at α → ∞
    # (m → 0), where L/n = −(log(2π ||y||²/n) + 1)/2, β = n/||y||².
    rng = np.random.default_rng(3)
    y = rng.normal(size=40)
    f = rng.normal(size=(40, 5))
    f -= 0.99 * np.outer(y, y @ f) / (y @ y)
    fit = logme_fit(f, y, regression=True)
    assert fit.alpha[0] > 1e10
    assert fit.evidence[0] == pytest.approx(-(np.log(2 * np.pi * (y @ y) / 40) + 1) / 2, abs=1e-9)
    # n < D and y noise-free: the maximum is at β → ∞ (y interpolated), where y ~ N(0,
    # FFᵀ/α): L/n = −(log(2π q/n) + 1)/2 − log|FFᵀ|/(2n), q = yᵀ(FFᵀ)⁻¹y, α = n/q.
    f = rng.normal(size=(20, 50))
    y = f @ rng.normal(size=50)
    fit = logme_fit(f, y, regression=True)
    gram = f @ f.T
    q = y @ np.linalg.solve(gram, y)
    limit = -(np.log(2 * np.pi * q / 20) + 1) / 2 - np.linalg.slogdet(gram)[1] / 40
    assert fit.beta[0] > 1e6
    assert fit.alpha[0] == pytest.approx(20 / q, rel=1e-6)
    assert fit.evidence[0] == pytest.approx(limit, abs=1e-9)


def test_fewer_samples_than_features():
    rng = np.random.default_rng(1)
    f, y = _regression(rng, 20, 50, noise=1.0, scale=1 / 7)
    fit = logme_fit(f, y, regression=True)
    assert fit.beta[0] < 1e3  # an interior optimum, where the D − n zero eigenvalues count
    _check_against_formula(f, fit)
    _check_stationary_maximum(f, fit)
    f, labels = _classes(rng, 20, 50, classes=2)
    fit = logme_fit(f, labels)
    _check_against_formula(f, fit)


@pytest.mark.parametrize(
    ("features", "labels", "regression", "match"),
    [
        (np.ones((1, 3)), [0], False, "at least 2 samples"),
        (np.ones((4, 3)), [0, 1, 0], False, "4 rows but labels have 3"),
        (np.ones(4), [0, 1, 0, 1], False, r"2-D \(n, D\)"),
        (np.ones((4, 3)), [[0], [1], [0], [1]], False, r"labels must be 1-D"),
        (np.array([[1.0, np.nan], [0, 1], [1, 1], [2, 0]]), [0, 1, 0, 1], False, "NaN or inf"),
        (np.array([[1.0, np.inf], [0, 1], [1, 1], [2, 0]]), [0, 1, 0, 1], False, "NaN or inf"),
        (np.eye(4, 3), [0.5, np.nan, 1.0, 2.0], True, "labels contain NaN"),
        (np.eye(4, 3), [1, 1, 1, 1], False, r"at least 2 classes; got \[1\]"),
        (np.eye(4, 3), ["a", "b", "a", "b"], True, "must be numbers"),
        (np.zeros((4, 3)), [0, 1, 0, 1], False, "features are all zero"),
        (np.eye(4, 3), [0.0, 0.0, 0.0, 0.0], True, "targets are all zero"),
        (np.eye(4, 3), [1.0, 2.0, 3.0, 0.0], True, "target 0 is exactly linear"),
    ],
)
def test_bad_input(features, labels, regression, match):
    with pytest.raises(ValueError, match=match):
        logme(features, labels, regression=regression)
