"""bertrep.maths.cka: identities, invariances, agreement with an independent Gram-space formula,
streaming = in-memory, numpy = torch, and the input guards.

    pytest tests/test_cka.py
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from bertrep.maths.cka import (
    RBF_MAX_N,
    StreamingCKA,
    cka_profile,
    cka_profiles,
    linear_cka,
    profile_flops,
    rbf_cka,
)

# --- independent reference: the Gram-space maths of Kornblith et al.'s demo notebook
# (google-research/representation_similarity, Demo.ipynb), written out here.


def gram_linear(x):
    return x @ x.T


def gram_rbf(x, threshold=1.0):
    dot_products = x @ x.T
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median_distance))


def center_gram(gram, unbiased=False):
    gram = gram.copy()
    n = gram.shape[0]
    if unbiased:
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def cka_gram(gram_x, gram_y, debiased=False):
    gram_x = center_gram(gram_x, unbiased=debiased)
    gram_y = center_gram(gram_y, unbiased=debiased)
    scaled_hsic = gram_x.ravel() @ gram_y.ravel()
    return scaled_hsic / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def reference_profile(xs, ys, debiased):
    return np.array([[cka_gram(gram_linear(x), gram_linear(y), debiased) for y in ys] for x in xs])


# --- data


def models(rng, n=64, widths_x=(8, 8, 12), widths_y=(6, 10), offset=3.0):
    """Two 'models' whose layers share signal with a common source, off-centre on purpose."""
    source = rng.standard_normal((n, 5))
    xs = [source @ rng.standard_normal((5, w)) + rng.standard_normal((n, w)) for w in widths_x]
    ys = [source @ rng.standard_normal((5, w)) + 2 * rng.standard_normal((n, w)) for w in widths_y]
    return [x + offset for x in xs], [y - offset for y in ys]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- identities and invariances


@pytest.mark.parametrize("debiased", [False, True])
def test_self_similarity_is_one(rng, debiased):
    x = rng.standard_normal((50, 10))
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_symmetric(rng, debiased):
    (x, *_), (y, *_) = models(rng)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(
        linear_cka(y, x, debiased=debiased), abs=1e-13
    )
    xs, ys = models(rng)
    profile = cka_profile(xs, ys, debiased=debiased)
    np.testing.assert_allclose(cka_profile(ys, xs, debiased=debiased), profile.T, atol=1e-13)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariances(rng, debiased):
    (x, *_), (y, *_) = models(rng)
    base = linear_cka(x, y, debiased=debiased)
    q, _ = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))
    assert linear_cka(x @ q, y, debiased=debiased) == pytest.approx(base, abs=1e-12)
    assert linear_cka(7.5 * x, 0.01 * y, debiased=debiased) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x + 100.0, y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    # A general invertible map changes CKA: it is not a whitened (CCA-like) similarity.
    stretch = np.diag(np.linspace(0.1, 10, x.shape[1])) @ q
    assert abs(linear_cka(x @ stretch, y, debiased=debiased) - base) > 1e-3


# --- agreement with the Gram-space reference, between routes and with streaming


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("route", ["gram", "feature", "auto"])
def test_matches_gram_space_reference(rng, debiased, route):
    xs, ys = models(rng)
    expected = reference_profile(xs, ys, debiased)
    np.testing.assert_allclose(cka_profile(xs, ys, debiased=debiased, route=route), expected,
                               atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("debiased", [False, True])
def test_routes_agree_on_stacked_input(rng, debiased):
    xs = rng.standard_normal((4, 300, 20)) + 5.0
    ys = np.stack([xs[1] @ rng.standard_normal((20, 20)), rng.standard_normal((300, 20))])
    gram = cka_profile(xs, ys, debiased=debiased, route="gram")
    feature = cka_profile(xs, ys, debiased=debiased, route="feature")
    np.testing.assert_allclose(gram, feature, atol=1e-10)
    assert gram.shape == (4, 2)


def test_streaming_module_imports_alone_and_is_reexported():
    """bertrep.maths.cka_streaming imports first without a cycle; numpy use never imports torch."""
    code = (
        "import sys; import bertrep.maths.cka_streaming as s; import bertrep.maths.cka as c; "
        "import numpy as np; x = np.random.default_rng(0).standard_normal((9, 3)); "
        "assert c.StreamingCKA is s.StreamingCKA; c.cka_profile([x], [x]); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gram_route_tiles_match_one_tile(rng, monkeypatch):
    """Several row tiles (off-diagonal tiles counted twice) give the one-tile answer."""
    from bertrep.maths import cka

    xs, ys = models(rng, n=101)
    whole = cka_profile(xs, ys, debiased=True, route="gram")
    monkeypatch.setattr(cka, "_TILE_BYTES", 5 * 30 * 30 * 8)  # 30-row tiles
    np.testing.assert_allclose(cka_profile(xs, ys, debiased=True, route="gram"), whole, atol=1e-13)


def test_route_choice_by_shape():
    """13 layers of width 768: Grams are cheaper at n = 5,000, XᵀY when n >> L·p."""
    widths = [768] * 13
    flops = profile_flops(5000, widths, widths)
    assert flops["gram"] < 0.5 * flops["feature"]
    flops = profile_flops(1_000_000, widths, widths)
    assert flops["feature"] < flops["gram"]


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_matches_in_memory(rng, debiased):
    xs, ys = models(rng, n=200, offset=50.0)
    expected = cka_profile(xs, ys, debiased=debiased)
    for trial in range(3):
        cuts = np.sort(rng.choice(np.arange(1, 200), size=5 + trial * 4, replace=False))
        stream = StreamingCKA(debiased=debiased)
        for lo, hi in zip([0, *cuts], [*cuts, 200], strict=True):
            stream.update([x[lo:hi] for x in xs], [y[lo:hi] for y in ys])
        assert stream.n == 200
        np.testing.assert_allclose(stream.result(), expected, atol=1e-10)


def test_streaming_single_row_chunks(rng):
    xs, ys = models(rng, n=20)
    stream = StreamingCKA(debiased=True)
    for i in range(20):
        stream.update([x[i : i + 1] for x in xs], [y[i : i + 1] for y in ys])
    np.testing.assert_allclose(stream.result(), reference_profile(xs, ys, True), atol=1e-10)


def test_debiased_near_zero_for_independent_data(rng):
    x, y = rng.standard_normal((200, 50)), rng.standard_normal((200, 50))
    assert linear_cka(x, y) > 0.15  # the biased estimator's finite-sample floor
    assert abs(linear_cka(x, y, debiased=True)) < 0.05


# --- precision and dtypes


def test_float16_storage_changes_value_little(rng):
    xs, ys = models(rng, n=500)
    exact = cka_profile(xs, ys, debiased=True)
    half = cka_profile([x.astype(np.float16) for x in xs], [y.astype(np.float16) for y in ys],
                       debiased=True)  # fmt: skip
    assert np.abs(half - exact).max() < 1e-4


def test_float16_large_values_do_not_overflow(rng):
    x = (rng.standard_normal((100, 64)) * 2000).astype(np.float16)  # x² overflows float16
    y = (x.astype(np.float64) @ rng.standard_normal((64, 64))).astype(np.float16)
    exact = linear_cka(x.astype(np.float64), y.astype(np.float64))
    wide = cka_profile([x], [y], dtype="float64")[0, 0]  # float16 cast up before any product
    assert wide == pytest.approx(exact, abs=1e-14)
    value = linear_cka(x, y)  # float16 inputs: float32 products of float64-centred tiles
    # float32 products carry ~1e-7 relative error whose sign depends on the BLAS kernel
    # (5e-8 here on an AVX-512 EPYC, under 1e-8 on an AVX2 one); an overflow gives inf/NaN.
    assert np.isfinite(value) and value == pytest.approx(exact, abs=1e-6)


def test_auto_dtype_is_float64_only_for_float64_inputs(rng):
    xs, ys = models(rng, n=300, widths_x=(32,), widths_y=(32,), offset=3.0)
    half = [[z.astype(np.float16) for z in side] for side in (xs, ys)]
    for inputs in ((xs, ys), half):
        for dtype in ("float32", "float64"):
            forced = cka_profile(*inputs, route="gram", dtype=dtype)
            same = (dtype == "float64") == (inputs is not half)
            assert np.array_equal(cka_profile(*inputs, route="gram"), forced) == same
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, float64"):
        cka_profile(xs, ys, dtype="float16")


def test_float32_option_agrees_to_1e6(rng):
    xs, ys = models(rng, n=2000, widths_x=(64, 64), widths_y=(64,), offset=3.0)
    for route in ("gram", "feature"):
        f32 = cka_profile(xs, ys, route=route, dtype="float32")
        np.testing.assert_allclose(f32, cka_profile(xs, ys, route=route), atol=1e-6)


# --- torch backend


@pytest.mark.parametrize("debiased", [False, True])
def test_torch_cpu_matches_numpy(rng, debiased):
    xs, ys = models(rng)
    expected = cka_profile(xs, ys, debiased=debiased)
    txs, tys = [torch.from_numpy(x) for x in xs], [torch.from_numpy(y).half() for y in ys]
    expected_half = cka_profile(xs, [y.numpy() for y in tys], debiased=debiased)
    for route in ("gram", "feature"):
        got = cka_profile(txs, [torch.from_numpy(y) for y in ys], debiased=debiased, route=route)
        np.testing.assert_allclose(got, expected, atol=1e-12)
        # A surrounding autocast region must not lower the precision.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = cka_profile(txs, tys, debiased=debiased, route=route)
        np.testing.assert_allclose(got, expected_half, atol=1e-12)
    stream = StreamingCKA(debiased=debiased)
    for lo, hi in ((0, 10), (10, 64)):
        stream.update([x[lo:hi] for x in txs], [torch.from_numpy(y[lo:hi]) for y in ys])
    np.testing.assert_allclose(stream.result(), expected, atol=1e-10)
    got = linear_cka(txs[0], tys[0], debiased=debiased)
    assert got == pytest.approx(expected_half[0, 0], abs=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("debiased", [False, True])
def test_torch_cuda_matches_numpy(rng, debiased):
    xs, ys = models(rng, n=300)
    expected = cka_profile(xs, ys, debiased=debiased)
    txs, tys = [torch.from_numpy(x).cuda() for x in xs], [torch.from_numpy(y).cuda() for y in ys]
    for route in ("gram", "feature"):
        got = cka_profile(txs, tys, debiased=debiased, route=route)
        np.testing.assert_allclose(got, expected, atol=1e-10)


# --- rbf


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_matches_reference(rng, debiased):
    (x, *_), (y, *_) = models(rng)
    for threshold in (0.5, 1.0):
        expected = cka_gram(gram_rbf(x, threshold), gram_rbf(y, threshold), debiased)
        got = rbf_cka(x, y, threshold=threshold, debiased=debiased)
        assert got == pytest.approx(expected, abs=1e-12)
    assert rbf_cka(torch.from_numpy(x), y) == pytest.approx(rbf_cka(x, y), abs=1e-14)


def test_rbf_refuses_large_n():
    x = np.zeros((RBF_MAX_N + 1, 2))
    with pytest.raises(ValueError, match=rf"n = {RBF_MAX_N + 1}.*max_n = {RBF_MAX_N}"):
        rbf_cka(x, x)


def test_rbf_guards(rng):
    x = rng.standard_normal((20, 3))
    with pytest.raises(ValueError, match="x has 20 rows but y has 19"):
        rbf_cka(x, x[:19])
    with pytest.warns(RuntimeWarning, match="ys layer 0 has median pairwise distance 0"):
        assert np.isnan(rbf_cka(x, np.ones((20, 3))))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="xs layer 0 contains NaN or inf"):
        rbf_cka(bad, x)


# --- guards


def test_mismatched_rows_named():
    with pytest.raises(ValueError, match="xs has 10 rows but ys has 9"):
        linear_cka(np.ones((10, 3)), np.ones((9, 3)))
    with pytest.raises(ValueError, match="ys layer 1 has 9 rows but layer 0 has 10"):
        cka_profile([np.ones((10, 3))], [np.ones((10, 3)), np.ones((9, 3))])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_names_layer_and_side(rng, bad):
    xs, ys = models(rng)
    ys[1][3, 2] = bad
    with pytest.raises(ValueError, match="ys layer 1 contains NaN or inf"):
        cka_profile(xs, ys)
    stream = StreamingCKA()
    stream.update([x[:3] for x in xs], [y[:3] for y in ys])
    with pytest.raises(ValueError, match="ys layer 1 contains NaN or inf"):
        stream.update([x[3:10] for x in xs], [y[3:10] for y in ys])


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("route", ["gram", "feature"])
def test_constant_layer_is_nan_with_warning(rng, debiased, route):
    xs, ys = models(rng)
    xs[1] = np.full_like(xs[1], 0.1)
    with pytest.warns(RuntimeWarning, match="xs layer 1 is constant"):
        profile = cka_profile(xs, ys, debiased=debiased, route=route)
    assert np.isnan(profile[1]).all()
    assert np.isfinite(profile[[0, 2]]).all()


def test_constant_layer_streaming(rng):
    xs, ys = models(rng)
    ys[0] = np.full_like(ys[0], -3.7)
    stream = StreamingCKA()
    for lo, hi in ((0, 7), (7, 64)):
        stream.update([x[lo:hi] for x in xs], [y[lo:hi] for y in ys])
    with pytest.warns(RuntimeWarning, match="ys layer 0 is constant"):
        profile = stream.result()
    assert np.isnan(profile[:, 0]).all() and np.isfinite(profile[:, 1]).all()


def test_debiased_needs_four_rows(rng):
    x = rng.standard_normal((3, 2))
    with pytest.raises(ValueError, match="at least 4 rows; got n = 3"):
        linear_cka(x, x, debiased=True)
    assert linear_cka(x, x) == pytest.approx(1.0)


def test_bad_arguments(rng):
    x = rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match="route"):
        cka_profile([x], [x], route="fast")
    with pytest.raises(ValueError, match="dtype"):
        cka_profile([x], [x], dtype="bfloat16")
    with pytest.raises(ValueError, match="before any update"):
        StreamingCKA().result()
    with pytest.raises(ValueError, match=r"xs layer 0 must be a 2-D"):
        cka_profile([x[0]], [x])
    stream = StreamingCKA()
    stream.update([x], [x])
    with pytest.raises(ValueError, match=r"widths \[2\]"):
        stream.update([x[:, :2]], [x])


@pytest.mark.parametrize("route", ["gram", "feature"])
def test_both_estimators_from_one_pass_equal_separate_calls(route):
    rng = np.random.default_rng(11)
    xs = rng.standard_normal((3, 60, 8))
    ys = rng.standard_normal((2, 60, 5)) + xs[:2, :, :5]
    both = cka_profiles(xs, ys, route=route)
    for name, debiased in (("biased", False), ("debiased", True)):
        np.testing.assert_allclose(
            both[name], cka_profile(xs, ys, debiased=debiased, route=route), rtol=0, atol=1e-15
        )
    assert not np.allclose(both["biased"], both["debiased"])
    with pytest.raises(ValueError, match="estimators must be among"):
        cka_profiles(xs, ys, ("unbiased",))
