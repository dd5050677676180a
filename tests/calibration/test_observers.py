"""Range observers, each against an independent numpy oracle.

Tolerances: the streamed histogram is identical to a one-shot one (the grid depends only on the running
min and max), so every method's streamed range equals its one-shot range exactly. A percentile is within
one final bin width w of np.percentile; entropy's divergences match a loop reference to 1e-9 (relative);
histogram.expected_error matches the measured quantize/dequantize MSE within 1% on finely binned data.
"""

import math

import numpy as np
import pytest

from qcli.calibration.observers import OBSERVERS, ObserverSettings, StreamingHistogram, TensorStats
from qcli.calibration.observers.auto import CANDIDATES
from qcli.calibration.observers.entropy import entropy_range, kl_divergences
from qcli.calibration.observers.histogram import clip_above, clip_below, expected_error
from qcli.calibration.observers.mse import edge_errors
from qcli.core import qparams as qp
from qcli.core.errors import InputError, NonFiniteValues

METHODS = ["minmax", "percentile", "entropy", "mse", "auto", "least-error"]
rng = np.random.default_rng(0)
LAPLACE = rng.laplace(size=1_000_000).astype(np.float32)
NORMAL = rng.standard_normal(300_000).astype(np.float32)


def observed(method, *batches, **settings):
    obs = OBSERVERS.get(method)(ObserverSettings(**settings))
    for b in batches:
        obs.update(b)
    return obs


def hist_of(*batches, bins=2048):
    h = StreamingHistogram(bins)
    for b in batches:
        h.update(b)
    return h


def measured_mse(x, lo, hi):
    """Mean squared error of qcli's own uint8 quantize/dequantize on the range."""
    p = qp.from_range(lo, hi, qp.UINT8, symmetric=False)
    return float(np.mean((x.astype(np.float64) - qp.dequantize(qp.quantize(x, p), p)) ** 2))


def ragged_growing_batches(seed=1):
    """Batches of different shapes whose range keeps growing (forces re-binning), some grid-aligned."""
    r = np.random.default_rng(seed)
    shapes = [(2, 3, 5), (1, 7), (4, 1, 2, 9), (0, 3), (33,), (3, 11), (5, 5, 5)]
    out = [r.standard_normal(s).astype(np.float32) * 0.01 * 4**i for i, s in enumerate(shapes)]
    out.append(np.array([0.0, 0.0, -0.5, 0.25, 1.0, 3.0], np.float32))  # values on bin edges, exact zeros
    return out


def test_observer_fed_batch_by_batch_equals_fed_at_once_exactly():
    batches = [rng.standard_normal((n, 16)) * (i + 1) for i, n in enumerate([3, 1, 7, 2])]
    for method in OBSERVERS.names():
        streamed, whole = observed(method, *batches), observed(method, np.concatenate(batches))
        assert streamed.range() == whole.range(), method


def test_registry_holds_every_method_and_settings_are_optional():
    assert OBSERVERS.names() == sorted(METHODS)
    for method in METHODS:
        obs = OBSERVERS.get(method)()
        assert obs.range() == (0.0, 0.0)
        obs.update(np.array([1.0, 2.0]))
        assert obs.chosen() in CANDIDATES


def test_minmax_range_and_empty():
    obs = OBSERVERS.get("minmax")()
    assert obs.range() == (0.0, 0.0)
    obs.update(np.array([[-2.0, 3.0]]))
    obs.update(np.array([1.0, 5.0]))
    assert obs.range() == (-2.0, 5.0)


def test_minmax_moving_average_follows_pytorch_formula():
    batches = [np.array([-1.0, 2.0]), np.array([-3.0, 1.0]), np.array([0.5, 4.0])]
    lo, hi = -1.0, 2.0
    for b in batches[1:]:
        lo, hi = lo + 0.25 * (b.min() - lo), hi + 0.25 * (b.max() - hi)
    assert observed("minmax", *batches, moving_average=0.25).range() == pytest.approx((lo, hi), rel=1e-15)


def test_unknown_observer_suggests_a_name():
    with pytest.raises(InputError, match="did you mean 'minmax'"):
        OBSERVERS.get("minmaxx")


@pytest.mark.parametrize(
    "bad", [dict(percentile=50.0), dict(percentile=100.5), dict(bins=4), dict(levels=1), dict(moving_average=0.0)]
)
def test_settings_are_validated(bad):
    with pytest.raises(InputError):
        ObserverSettings(**bad)


def test_tensor_stats_carry_the_method():
    st = TensorStats(-1.0, 2.0, (1, 3), 4, "entropy")
    assert st.to_dict() == {"min": -1.0, "max": 2.0, "shape": [1, 3], "batches": 4, "method": "entropy"}
    assert TensorStats(0.0, 1.0, (), 1).method == "minmax"


def test_widening_keeps_counts_equal_to_np_histogram_on_the_same_grid():
    batches, seen = ragged_growing_batches(), []
    h = hist_of(bins=64)
    for b in batches:
        h.update(b)
        seen.append(b.ravel())
        if h.exponent is None:
            continue
        data = np.concatenate(seen)
        edges = (h.offset + np.arange(h.bins + 1)) * h.width
        np.testing.assert_array_equal(h.counts, np.histogram(data, edges)[0])
        assert h.counts.sum() == data.size
        assert (h.rmin, h.rmax) == (data.min(), data.max())
        assert h.zeros == np.count_nonzero(data == 0)
        fits = [e for e in range(-40, 40) if np.floor(data.max() / 2.0**e) - np.floor(data.min() / 2.0**e) < 64]
        assert h.width == 2.0 ** fits[0]  # the finest power-of-two grid that holds [min, max] in 64 bins


def test_memory_does_not_grow_with_updates():
    h = hist_of(bins=256)
    r = np.random.default_rng(2)
    for i in range(100):
        h.update(r.standard_normal(1000).astype(np.float32) * 1.1**i + i)
        arrays = [v for v in vars(h).values() if isinstance(v, np.ndarray)]
        assert [a.size for a in arrays] == [256]
    assert h.counts.sum() == 100_000


@pytest.mark.parametrize("method", METHODS)
def test_streaming_equals_one_shot_with_ragged_growing_batches(method):
    batches = ragged_growing_batches()
    streamed = observed(method, *batches, bins=128)
    whole = observed(method, np.concatenate([b.ravel() for b in batches]), bins=128)
    assert streamed.range() == whole.range()
    assert streamed.chosen() == whole.chosen()


@pytest.mark.parametrize(
    "data",
    [
        NORMAL,
        LAPLACE[:300_000],
        np.maximum(NORMAL, 0),  # half exact zeros
        -np.abs(NORMAL) - 2.0,  # all negative, away from 0
        rng.integers(-40, 90, 50_000).astype(np.float32) / 8,  # many values exactly on bin edges
    ],
)
def test_percentile_is_within_one_bin_of_np_percentile(data):
    batches = np.array_split(data, 7)
    h = hist_of(*batches).snapshot()
    for p in (99.99, 99.9, 99.0, 90.0, 75.0):
        lo, hi = observed("percentile", *batches, percentile=p).range()
        ref_lo, ref_hi = np.percentile(data.astype(np.float64), [100 - p, p])
        assert abs(lo - ref_lo) <= h.width and abs(hi - ref_hi) <= h.width, p
    assert observed("percentile", *batches, percentile=100).range() == (data.min(), data.max())


def loop_kl(counts, levels):
    """TensorRT's calibrator, written plainly: one candidate at a time, one quantization bin at a time."""
    out = []
    for i in range(levels, len(counts) + 1):
        p = np.array(counts[:i], np.float64)
        p[i - 1] += counts[i:].sum()
        q = np.zeros(i)
        m = i // levels
        for g in range(levels):
            a, b = g * m, (i if g == levels - 1 else (g + 1) * m)
            nonzero = p[a:b] > 0
            if nonzero.any():
                q[a:b][nonzero] = counts[a:b].sum() / nonzero.sum()
        p, q = p / p.sum(), q / max(q.sum(), 1e-300)
        if np.any((p > 0) & (q == 0)):
            out.append(np.inf)
        else:
            out.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))
    return np.array(out)


@pytest.mark.parametrize("levels", [8, 16])
def test_entropy_divergences_match_the_loop_reference(levels):
    r = np.random.default_rng(levels)
    counts = np.round(r.exponential(size=90) * 1000 * np.exp(-np.arange(90) / 15)).astype(np.float64)
    counts[r.integers(0, 90, 12)] = 0  # empty bins, some where the last bin of P is empty (infinite KL)
    counts[-1] = 3
    counts[levels - 1] = 0  # candidate i = levels: P's last bin holds the outliers, Q has nothing there
    cand, kl = kl_divergences(counts, levels)
    ref = loop_kl(counts, levels)
    np.testing.assert_array_equal(cand, np.arange(levels, 91))
    np.testing.assert_array_equal(np.isinf(kl), np.isinf(ref))
    assert np.isinf(ref).any() and np.isfinite(ref).sum() > 40
    np.testing.assert_allclose(kl[np.isfinite(kl)], ref[np.isfinite(ref)], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("sign", ["two-sided", "relu", "negative"])
def test_entropy_range_is_the_loop_threshold_on_the_magnitude_histogram(sign):
    x = {"two-sided": LAPLACE[:200_000], "relu": np.maximum(LAPLACE[:200_000], 0), "negative": -np.abs(NORMAL)}[sign]
    s = ObserverSettings(bins=256, levels=32)
    h = hist_of(x, bins=256).snapshot()
    mags = np.abs(x[x != 0]).astype(np.float64)  # exact zeros are exact at any threshold: left out
    n_bins = int(np.ceil(mags.max() / h.width)) + 1
    counts = np.histogram(mags, np.arange(n_bins + 1) * h.width)[0]
    levels = 16 if sign == "two-sided" else 32
    t = (levels + int(np.argmin(loop_kl(counts, levels)))) * h.width
    lo, hi = entropy_range(h, s)
    expected = {
        "two-sided": (max(x.min(), -t), min(x.max(), t)),
        "relu": (0.0, min(x.max(), t)),
        "negative": (max(x.min(), -t), x.max()),
    }[sign]
    assert (lo, hi) == pytest.approx(expected, rel=1e-12)
    assert hi - lo < x.max() - x.min()  # it does clip


@pytest.mark.parametrize(
    "data", [LAPLACE[:200_000], np.maximum(NORMAL, 0), NORMAL * 0.5 + 1.0, np.concatenate([NORMAL, [40.0, -30.0]])]
)
def test_mse_range_beats_every_range_on_a_dense_grid(data):
    s = ObserverSettings(bins=512)
    obs = observed("mse", data, bins=512)
    h = obs.hist.snapshot()
    best = float(expected_error(h, *obs.range(), s.levels))
    lo_grid = np.linspace(min(h.rmin, 0), 0, 301)
    hi_grid = np.linspace(max(h.rmin, 0), h.rmax, 701)
    grid = expected_error(h, lo_grid[:, None], hi_grid[None, :], s.levels)
    assert best <= grid.min() * (1 + 1e-9)  # measured: 3e-7 to 2e-5 below the grid's best
    assert best < float(expected_error(h, h.rmin, h.rmax, s.levels))


def test_clip_sums_match_exact_sums_on_data_spread_evenly_in_each_bin():
    r = np.random.default_rng(3)
    w, per_bin = 2.0**-3, r.integers(1, 6, 40) * 64  # bins [k w, (k+1) w) for k = -20 .. 19, 64 to 320 values each
    x = np.concatenate([(k - 20 + (np.arange(n) + 0.5) / n) * w for k, n in enumerate(per_bin)])
    h = hist_of(x, bins=64).snapshot()
    assert h.width == w
    t = r.uniform(x.min(), x.max(), 50)
    err, count = clip_above(h, t)
    np.testing.assert_allclose(count, [(x > v).sum() for v in t], atol=1)  # one value either side of t
    np.testing.assert_allclose(err, [((x[x > v] - v) ** 2).sum() for v in t], rtol=1e-3, atol=w * w)
    err, count = clip_below(h, t)
    np.testing.assert_allclose(count, [(x < v).sum() for v in t], atol=1)
    np.testing.assert_allclose(err, [((v - x[x < v]) ** 2).sum() for v in t], rtol=1e-3, atol=w * w)


@pytest.mark.parametrize("data", [LAPLACE[:100_000], np.maximum(NORMAL, 0), np.abs(NORMAL) + 2.0, -np.abs(NORMAL)])
def test_mse_edge_matrix_is_expected_error_of_every_pair(data):
    h = hist_of(data, bins=256).snapshot()
    lo, hi, err = edge_errors(h, 16)
    assert err.shape == (lo.size, hi.size) and err.size > 100
    np.testing.assert_allclose(err, expected_error(h, lo[:, None], hi[None, :], 16), rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "data",
    [
        LAPLACE[:400_000],
        np.maximum(NORMAL, 0),
        np.concatenate([NORMAL, [12.0, -9.0]]),
        NORMAL * 0.5 + 1.0,
        np.abs(NORMAL) * 0.5 + 2.0,  # away from 0: every range is widened to [0, hi]
    ],
)
def test_expected_error_matches_measured_quantization_mse(data):
    h = hist_of(data).snapshot()
    for lo_q, hi_q in [(0.0, 100.0), (0.5, 99.5), (0.01, 99.99), (2.0, 97.0)]:
        lo, hi = np.percentile(data, [lo_q, hi_q])
        expected = float(expected_error(h, lo, hi, 256))
        assert expected == pytest.approx(measured_mse(data, lo, hi), rel=0.01), (lo_q, hi_q)


def test_heavy_tailed_data_clipping_methods_beat_minmax():
    x = LAPLACE
    lo0, hi0 = observed("minmax", x).range()
    minmax_err = measured_mse(x, lo0, hi0)
    floors = {"percentile": 0.72, "entropy": 0.74, "mse": 0.58}  # measured: 0.688, 0.704, 0.550
    for method, ratio in floors.items():
        lo, hi = observed(method, x).range()
        assert lo0 < lo and hi < hi0, method
        assert measured_mse(x, lo, hi) < ratio * minmax_err, method


def test_isolated_outliers_are_clipped_by_percentile_and_mse_but_kept_by_entropy():
    normal = np.random.default_rng(5).standard_normal(1_000_000)
    x = np.concatenate([normal, [50.0, -50.0]]).astype(np.float32)  # 2 in 1e6 at 50 sigma
    minmax_err = measured_mse(x, -50.0, 50.0)
    for method, ratio in {"percentile": 0.37, "mse": 0.31}.items():  # measured: 0.342, 0.281
        lo, hi = observed(method, x).range()
        assert -50 < lo and hi < 50
        assert measured_mse(x, lo, hi) < ratio * minmax_err, method
    # TensorRT's KL: P's last bin holds the outliers where Q (from the kept bins) is empty: infinite divergence.
    assert observed("entropy", x).range() == (-50.0, 50.0)


@pytest.mark.parametrize("data", [LAPLACE[:200_000], np.maximum(NORMAL, 0), np.concatenate([NORMAL, [9.0]])])
def test_least_error_picks_the_method_with_the_least_expected_error(data):
    obs = observed("least-error", data)
    h = obs.hist.snapshot()
    ranges = {m: observed(m, data).range() for m in CANDIDATES}
    errors = {m: float(expected_error(h, lo, hi, 256)) for m, (lo, hi) in ranges.items()}
    assert obs.chosen() == min(errors, key=errors.get)
    assert obs.range() == ranges[obs.chosen()]
    obs.update(np.array([1000.0]))  # a new batch: the pick is recomputed
    again = observed("least-error", data, np.array([1000.0]))
    assert (obs.range(), obs.chosen()) == (again.range(), again.chosen())
    assert obs.range() != ranges[obs.chosen()]


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_tensors(method):
    assert observed(method, np.zeros((3, 4)), np.zeros(0)).range() == (0.0, 0.0)
    assert observed(method, np.zeros((0, 5))).range() == (0.0, 0.0)
    for c in (2.5, -1e-3, 7e5):
        lo, hi = observed(method, np.full((4, 4), c, np.float32)).range()
        assert lo <= np.float32(c) <= hi
    with_empty = observed(method, NORMAL[:1000], np.zeros((2, 0)), NORMAL[1000:2000])
    assert with_empty.range() == observed(method, NORMAL[:2000]).range()


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_batches_are_rejected_and_leave_the_observer_as_it_was(method):
    obs = observed(method, NORMAL[:100])
    before = obs.range()
    for bad, message in [(np.nan, "contains NaN"), (np.inf, "contains infinite values"), (-np.inf, "infinite")]:
        with pytest.raises(NonFiniteValues, match=message):
            obs.update(np.array([1.0, bad, 2.0], np.float32))
    assert obs.range() == before
    assert issubclass(NonFiniteValues, InputError)


def test_auto_offers_every_candidate_range_from_its_one_histogram():
    """What the search at the outputs chooses among: minmax, mse and finer clipping points, each the same as
    that method's own observer gives on the same data."""
    rng = np.random.default_rng(3)
    batches = [rng.standard_t(3, 5000) for _ in range(3)]
    auto = OBSERVERS.get("auto")()
    for b in batches:
        auto.update(b)
    got = auto.candidates()
    assert set(got) == {"minmax", "mse", "p99.999", "p99.99", "p99.9"}
    assert auto.range() == got["minmax"] and auto.chosen() == "minmax"  # until the search has chosen
    for name, method, settings in [
        ("minmax", "minmax", ObserverSettings()),
        ("mse", "mse", ObserverSettings()),
        ("p99.9", "percentile", ObserverSettings(percentile=99.9)),
        ("p99.999", "percentile", ObserverSettings(percentile=99.999)),
    ]:
        own = OBSERVERS.get(method)(settings)
        for b in batches:
            own.update(b)
        assert got[name] == pytest.approx(own.range(), rel=1e-9, abs=1e-12), name
    assert got["p99.9"][1] < got["p99.99"][1] < got["p99.999"][1] <= got["minmax"][1]


def test_a_scalar_tensor_is_counted_like_a_one_element_batch():
    """A 0-d activation (Silero VAD has some): numpy's ufuncs return scalars for those, not arrays."""
    from qcli.calibration.observers.histogram import StreamingHistogram

    for dtype in (np.float32, np.float64):
        a, b = StreamingHistogram(), StreamingHistogram()
        for v in (0.25, -3.0, 7.5):
            a.update(np.array(v, dtype))
            b.update(np.array([v], dtype))
        assert a.counts.sum() == 3 and np.array_equal(a.counts, b.counts) and (a.rmin, a.rmax) == (-3.0, 7.5)


def test_the_report_pictures_the_most_clipped_ranges_first_with_every_value_counted():
    from qcli.calibration.observers.histogram import PLOT_BINS, plot_counts
    from qcli.schemes.w8a8.calibrated import pictured

    rng = np.random.default_rng(0)
    h = StreamingHistogram()
    x = rng.standard_normal(10_000)
    h.update(x)
    counts = plot_counts(h.snapshot())
    assert len(counts) == PLOT_BINS and sum(counts) == 10_000
    ref, _ = np.histogram(x, PLOT_BINS, (x.min(), x.max()))
    assert np.abs(np.array(counts) - ref).sum() < 0.05 * 10_000  # the same shape, up to the 2048-bin grid
    obs = (float(x.min()), float(x.max()))
    stats = {
        "full": TensorStats(*obs, (1,), 1, "minmax", None, obs, counts),
        "clipped": TensorStats(-1.0, 1.0, (1,), 1, "p99.9", None, obs, counts),
        "wide": TensorStats(-50.0, 50.0, (1,), 1, "minmax", None, (-50.0, 50.0), counts),
        "none": TensorStats(0.0, 1.0, (1,), 1, "minmax"),
    }
    got = pictured(stats, n=2)
    assert list(got) == ["clipped", "wide"] and got["clipped"]["kept"] == pytest.approx(2 / (obs[1] - obs[0]), abs=1e-4)
