"""Bootstrap intervals, permutation floors and seed bands (bertrep.maths.bootstrap) against
explicit resampling, Monte-Carlo permutations and known expectations."""

import numpy as np
import pytest

from bertrep.maths.bootstrap import (
    Side,
    bootstrap_mean,
    bootstrap_profile,
    percentile_interval,
    permutation_floor,
    seed_band,
    sentence_weights,
)
from bertrep.maths.cka import linear_cka


def _sentences(rng, count: int, sizes=(1, 4)) -> np.ndarray:
    return np.repeat(np.arange(count), rng.integers(sizes[0], sizes[1] + 1, size=count))


def _layers(rng, n: int, widths) -> list[np.ndarray]:
    shared = rng.standard_normal((n, 3))
    return [shared @ rng.standard_normal((3, p)) + rng.standard_normal((n, p)) for p in widths]


def _resampled_cka(x, y, sentence, counts) -> float:
    """Biased CKA of the explicitly resampled rows (each sentence's rows repeated as
    often as it was drawn, centred by their own mean), with the pairs of distinct copies
    of one sentence left out of ||X̃ᵀỸ||² = Σ_ab K̃_ab L̃_ab (their Gram entries those of
    the rows centred by the probe set's mean)."""

    def t(a, b):
        rows, copy = [], []
        for s, c in enumerate(counts):
            for k in range(int(c)):
                rows += list(np.flatnonzero(sentence == s))
                copy += [(s, k)] * int((sentence == s).sum())
        rows = np.array(rows)
        ra, rb = a[rows] - a[rows].mean(0), b[rows] - b[rows].mean(0)
        full = ((ra @ ra.T) * (rb @ rb.T)).sum()
        ga, gb = a - a.mean(0), b - b.mean(0)
        dropped = sum(
            (ga[rows[p]] @ ga[rows[q]]) * (gb[rows[p]] @ gb[rows[q]])
            for p in range(len(rows))
            for q in range(len(rows))
            if copy[p][0] == copy[q][0] and copy[p][1] != copy[q][1]
        )
        return full - dropped

    return t(x, y) / np.sqrt(t(x, x) * t(y, y))


def test_replicates_equal_explicit_resampling_without_the_copy_pairs():
    rng = np.random.default_rng(0)
    sentence = _sentences(rng, 12)
    xs, ys = _layers(rng, len(sentence), (5, 4)), _layers(rng, len(sentence), (6, 3, 2))
    draw = sentence_weights(sentence, replicates=4, seed=3)
    reps = bootstrap_profile(Side(xs, draw), Side(ys, draw))
    assert reps.shape == (4, 2, 3)
    assert (draw.counts > 1).any()  # some sentence drawn twice: the dropped pairs matter
    for b, counts in enumerate(draw.counts):
        for i, x in enumerate(xs):
            for j, y in enumerate(ys):
                expected = _resampled_cka(x, y, sentence, counts)
                assert reps[b, i, j] == pytest.approx(expected, abs=1e-10)


def test_replicates_sit_around_the_estimate():
    # with many tokens per sentence, keeping the pairs of distinct copies would put
    # nearly every replicate above the estimate; without them about half are above
    rng = np.random.default_rng(6)
    sentence = _sentences(rng, 60, (4, 8))
    xs, ys = _layers(rng, len(sentence), (20,)), _layers(rng, len(sentence), (20,))
    draw = sentence_weights(sentence, replicates=400, seed=0)
    reps = bootstrap_profile(Side(xs, draw), Side(ys, draw))[:, 0, 0]
    assert 0.35 < (reps > linear_cka(xs[0], ys[0])).mean() < 0.65


def test_float32_layers_agree_with_float64():
    rng = np.random.default_rng(1)
    sentence = _sentences(rng, 40)
    xs, ys = _layers(rng, len(sentence), (8,)), _layers(rng, len(sentence), (8, 8))
    draw = sentence_weights(sentence, replicates=20, seed=0)
    exact = bootstrap_profile(Side(xs, draw), Side(ys, draw))
    single = [x.astype(np.float32) for x in xs], [y.astype(np.float32) for y in ys]
    approx = bootstrap_profile(Side(single[0], draw), Side(single[1], draw))
    # float32 inputs themselves differ from the float64 ones by ~1e-7 relative
    np.testing.assert_allclose(approx, exact, atol=1e-6)


def test_draws_are_seeded_and_resample_whole_sentences():
    sentence = np.array([0, 0, 0, 1, 2, 2, 5, 5])
    a, b = sentence_weights(sentence, 50, seed=9), sentence_weights(sentence, 50, seed=9)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert not np.array_equal(a.counts, sentence_weights(sentence, 50, seed=10).counts)
    assert (a.counts.sum(axis=1) == 4).all()  # S draws of the S = 4 sentences
    np.testing.assert_array_equal(a.weights[:, :3], np.repeat(a.counts[:, :1], 3, axis=1))


@pytest.mark.parametrize("width", [3, 40])
def test_intervals_cover_the_estimators_mean_at_about_the_nominal_rate(width):
    # Ground truth: y = x A + noise per token, with a shared per-sentence component that
    # makes a sentence's tokens correlated; studies of 100 sentences (~300 tokens, so
    # p/n from 0.01 to 0.13). The target is what the interval is of: the biased
    # estimator's mean over fresh studies (at width 40 it is well above the population
    # CKA: the estimator's own bias, which no resampling removes).
    rng = np.random.default_rng(2)
    a = rng.standard_normal((width, 2)) / np.sqrt(width)

    def draw(sentences: int):
        sentence = _sentences(rng, sentences, (2, 4))
        shared = rng.standard_normal((sentences, width))[sentence]
        x = shared + 0.7 * rng.standard_normal((len(sentence), width))
        y = x @ a + 0.6 * rng.standard_normal((len(sentence), 2)) + 0.3 * shared[:, :2]
        return sentence, x, y

    target = np.mean([linear_cka(*draw(100)[1:]) for _ in range(1000)])
    hits = 0
    for study in range(200):
        sentence, x, y = draw(100)
        resampling = sentence_weights(sentence, replicates=200, seed=study)
        reps = bootstrap_profile(Side([x], resampling), Side([y], resampling))
        low, high = percentile_interval(reps, 0.95, np.array([[linear_cka(x, y)]]))
        hits += bool(low[0, 0] <= target <= high[0, 0])
    assert 0.89 <= hits / 200 <= 0.99


def test_plain_replicates_are_the_cka_of_the_resampled_rows():
    rng = np.random.default_rng(7)
    sentence = _sentences(rng, 15)
    xs, ys = _layers(rng, len(sentence), (4,)), _layers(rng, len(sentence), (3, 5))
    draw = sentence_weights(sentence, replicates=5, seed=1, pair_copies=True)
    reps = bootstrap_profile(Side(xs, draw), Side(ys, draw))
    for b, counts in enumerate(draw.counts):
        rows = np.concatenate(
            [np.flatnonzero(sentence == s).repeat(int(c)) for s, c in enumerate(counts)]
        )
        for j, y in enumerate(ys):
            assert reps[b, 0, j] == pytest.approx(linear_cka(xs[0][rows], y[rows]), abs=1e-10)


def test_permutation_floor_is_the_mean_over_shuffles():
    rng = np.random.default_rng(4)
    n = 40
    xs, ys = _layers(rng, n, (5, 7)), _layers(rng, n, (3,))
    draw = sentence_weights(np.arange(n), 1, seed=0)
    floor = permutation_floor(Side(xs, draw), Side(ys, draw))
    perms = [rng.permutation(n) for _ in range(4000)]
    values = np.array([[[linear_cka(x, y[p]) for y in ys] for x in xs] for p in perms])
    spread = values.std(axis=0) / np.sqrt(len(perms))
    assert np.all(np.abs(values.mean(axis=0) - floor) < 4 * spread)


def test_permutation_floor_of_independent_gaussians_matches_its_expectation():
    # For independent isotropic Gaussians, XcᵀXc ~ Wishart(n − 1, I_p): E tr = (n − 1)p and
    # E tr² = (n − 1)p(n + p), so the expected CKA is ≈ sqrt(p1 p2 / ((n + p1)(n + p2))).
    rng = np.random.default_rng(5)
    n, p1, p2 = 200, 10, 30
    expected = np.sqrt(p1 * p2 / ((n + p1) * (n + p2)))
    observed, floors = [], []
    for _ in range(300):
        x, y = rng.standard_normal((n, p1)), rng.standard_normal((n, p2))
        draw = sentence_weights(np.arange(n), 1, seed=0)
        floors.append(permutation_floor(Side([x], draw), Side([y], draw))[0, 0])
        observed.append(linear_cka(x, y))
    assert np.mean(floors) == pytest.approx(expected, rel=0.02)
    assert np.mean(observed) == pytest.approx(expected, rel=0.03)


def test_percentile_interval_bootstrap_mean_and_seed_band():
    reps = np.arange(1, 101, dtype=float)[:, None]
    low, high = percentile_interval(reps, level=0.9)
    assert (low[0], high[0]) == pytest.approx((5.95, 95.05))
    # bias-corrected: an estimate at the replicates' median changes nothing; one below
    # most of them moves both ends down, and the interval still holds the estimate
    median = np.array([50.5])
    np.testing.assert_allclose(percentile_interval(reps, 0.9, median), (low, high))
    shifted = percentile_interval(reps, 0.9, np.array([30.0]))
    assert shifted[0][0] < low[0] and shifted[1][0] < high[0]
    assert shifted[0][0] <= 30.0 <= shifted[1][0]
    scalar = percentile_interval(reps[:, 0], 0.9, np.float64(50.5))
    assert float(scalar[0]) == pytest.approx(5.95)
    all_nan = percentile_interval(np.full((10, 2), np.nan))
    assert np.isnan(all_nan[0]).all()
    means = bootstrap_mean(np.array([0.2, 0.4]), replicates=1000, seed=0)
    assert set(np.round(means, 12)) == {0.2, 0.3, 0.4}
    assert means.mean() == pytest.approx(0.3, abs=0.01)
    np.testing.assert_array_equal(bootstrap_mean(np.array([0.5]), 5, 0), np.full(5, 0.5))
    profiles = np.array([[[0.9]], [[0.8]], [[0.95]]])
    assert [float(v[0, 0]) for v in seed_band(profiles)] == [0.8, 0.95]


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="sorted by sentence"):
        sentence_weights(np.array([1, 0, 1]), 5, 0)
    with pytest.raises(ValueError, match="replicates"):
        sentence_weights(np.arange(5), 0, 0)
    draw = sentence_weights(np.arange(6), 3, 0)
    with pytest.raises(ValueError, match="resampling has 6 rows"):
        Side([np.zeros((5, 2))], draw)
    with pytest.raises(ValueError, match="NaN"):
        Side([np.full((6, 2), np.nan)], draw)
    other = sentence_weights(np.arange(6), 3, 1)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="different resamplings"):
        bootstrap_profile(Side([rng.random((6, 2))], draw), Side([rng.random((6, 2))], other))
    with pytest.raises(ValueError, match="3 seed pairs"):
        seed_band(np.zeros((2, 1, 1)))
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.zeros((3, 1)), level=1.5)


def test_bootstrap_mean_leaves_missing_values_out_and_continues_a_generator():
    with_gap = bootstrap_mean(np.array([0.2, np.nan, 0.4]), replicates=200, seed=3)
    np.testing.assert_array_equal(with_gap, bootstrap_mean(np.array([0.2, 0.4]), 200, 3))
    assert np.isnan(bootstrap_mean(np.array([np.nan]), 4, 0)).all()
    # cells drawn in turn from one generator: the stream its seed would give
    rng = np.random.default_rng(7)
    first, second = bootstrap_mean([1.0, 2.0], 5, rng), bootstrap_mean([3.0, 5.0, 8.0], 5, rng)
    again = np.random.default_rng(7)
    draws = [again.integers(0, 2, (5, 2)), again.integers(0, 3, (5, 3))]
    np.testing.assert_array_equal(first, np.array([1.0, 2.0])[draws[0]].mean(1))
    np.testing.assert_array_equal(second, np.array([3.0, 5.0, 8.0])[draws[1]].mean(1))
