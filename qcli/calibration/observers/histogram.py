"""A streaming histogram on a zero-anchored power-of-two grid, and the expected quantization error.

Bin j covers [j*w, (j+1)*w) with w = 2**e. The grid exponent e is the smallest one (above two floors) for
which [min, max] of everything seen spans at most `bins` bins, and the window starts at floor(min / w).
When a batch widens the range, e grows by an integer s and old bin j merges exactly into bin j >> s;
no raw data is kept (memory: `bins` counts). Because e depends only on the running min and max, a
histogram fed batch by batch is identical to one fed everything at once: streaming costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcli.calibration.observers.base import ObserverSettings, batch_extremes

_E_MIN = -126  # finest width 2**-126 (an all-zero tensor)
_REL_FLOOR = 40  # width >= 2**-40 of the largest magnitude (a constant tensor)
_F32_EXACT = 1 << 24


def _fits(lo: float, hi: float, e: int, bins: int) -> bool:
    return math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) < bins


def grid_exponent(lo: float, hi: float, bins: int) -> int:
    """The smallest e (and not under the floors) such that [lo, hi] spans at most `bins` bins of width 2**e."""
    mag = max(abs(lo), abs(hi))
    e = _E_MIN if mag == 0 else max(_E_MIN, math.frexp(mag)[1] - _REL_FLOOR)
    if hi > lo:
        e = max(e, math.frexp((hi - lo) / bins)[1] - 1)  # a lower bound: fitting needs w > (hi - lo) / bins
    while not _fits(lo, hi, e, bins):
        e += 1
    return e


@dataclass(frozen=True)
class Histogram:
    """The occupied bins of a histogram: counts[i] covers [edges[i], edges[i+1]), the outer edges being the
    exact min and max (every other edge is a grid point (start + i) * width)."""

    counts: np.ndarray  # float64, counts[0] and counts[-1] are non-zero
    start: int  # grid index of counts[0]
    width: float  # grid width w, a power of two
    rmin: float
    rmax: float
    zeros: float = 0.0  # how many of the values are exactly 0 (quantized exactly by any range)

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    @property
    def edges(self) -> np.ndarray:
        e = (self.start + np.arange(self.counts.size + 1, dtype=np.float64)) * self.width
        e[0], e[-1] = self.rmin, self.rmax
        return e

    def magnitude(self, max_bins: int) -> tuple[np.ndarray, float]:
        """Counts of |x| on bins [k*v, (k+1)*v) from k = 0, and v: v = w merged by a power of two so that
        there are at most max_bins bins (exact: a negative bin j holds magnitudes in bin -j-1)."""
        j = self.start + np.arange(self.counts.size, dtype=np.int64)
        k = np.where(j >= 0, j, -j - 1)
        shift = max(0, math.ceil(math.log2((int(k.max()) + 1) / max_bins)))
        return np.bincount(k >> shift, weights=self.counts), math.ldexp(self.width, shift)

    def mirrored(self) -> Histogram:
        """The histogram of -x (the same bins, reversed)."""
        start = -(self.start + self.counts.size)
        return Histogram(self.counts[::-1], start, self.width, -self.rmax, -self.rmin, self.zeros)

    def nonzero(self) -> Histogram:
        """The same histogram without the exact zeros (taken out of the bin [0, w))."""
        if not self.zeros:
            return self
        counts = self.counts.copy()
        counts[-self.start] -= self.zeros
        return Histogram(counts, self.start, self.width, self.rmin, self.rmax)


class StreamingHistogram:
    """Counts on the zero-anchored grid plus the exact min and max; update() costs a few numpy passes."""

    def __init__(self, bins: int = 2048) -> None:
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.exponent: int | None = None  # None until data arrives
        self.offset = 0  # grid index of counts[0]
        self.rmin, self.rmax = math.inf, -math.inf
        self.zeros = 0

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent) if self.exponent is not None else 0.0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        lo, hi = batch_extremes(x)
        rmin, rmax = min(self.rmin, lo), max(self.rmax, hi)
        e = grid_exponent(rmin, rmax, self.bins)
        off = math.floor(math.ldexp(rmin, -e))
        if self.exponent is not None and (e, off) != (self.exponent, self.offset):
            self._regrid(e, off)
        self.exponent, self.offset, self.rmin, self.rmax = e, off, rmin, rmax
        self.counts += np.bincount(self._indices(x), minlength=self.bins)
        self.zeros += int(np.count_nonzero(x == 0))

    def _regrid(self, e: int, off: int) -> None:
        """Merge old bin j into bin j >> (e - old e) and move the window to start at `off` (exact)."""
        shift = min(e - self.exponent, 63)
        j = self.offset + np.arange(self.bins, dtype=np.int64)
        full = self.counts > 0
        merged = np.bincount((j[full] >> shift) - off, weights=self.counts[full], minlength=self.bins)
        self.counts = np.rint(merged).astype(np.int64)  # float64 holds counts < 2**53 exactly

    def _indices(self, x: np.ndarray) -> np.ndarray:
        """Window-relative bin of every element: floor(x / w) - offset, exact (w is a power of two)."""
        e, off = self.exponent, self.offset
        x = x.reshape(-1)  # a 0-d tensor too (numpy's ufuncs return scalars for those)
        if x.dtype == np.float32 and e <= 0 and abs(off) + self.bins < _F32_EXACT:
            v = np.multiply(x, np.float32(math.ldexp(1.0, -e)), dtype=np.float32)  # exact: scales by 2**-e
            np.floor(v, out=v)
            np.subtract(v, np.float32(off), out=v)  # exact: small integers
        else:
            v = np.asarray(x, np.float64) * math.ldexp(1.0, -e)
            np.floor(v, out=v)
            np.subtract(v, float(off), out=v)
            np.clip(v, 0, self.bins - 1, out=v)  # guards against underflow of tiny values only
        return v.astype(np.intp)

    def snapshot(self) -> Histogram | None:
        """The occupied bins (None before any data)."""
        if self.exponent is None:
            return None
        last = math.floor(math.ldexp(self.rmax, -self.exponent)) - self.offset
        counts = self.counts[: last + 1].astype(np.float64)
        return Histogram(counts, self.offset, self.width, self.rmin, self.rmax, float(self.zeros))


def clip_above(h: Histogram, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each threshold t: (sum of (x - t)^2 over x > t, count of x > t), values uniform inside a bin."""
    t = np.asarray(t, np.float64)
    edges, n = h.edges, h.counts
    a, b = edges[:-1], edges[1:]
    bw = b - a
    c = (a + b) / 2 - h.rmax  # centred on the max: the tail sums stay small, little cancellation
    s0, s1, s2 = (np.append(np.cumsum(v[::-1])[::-1], 0.0) for v in (n, n * c, n * (c * c + bw * bw / 12)))
    j = np.searchsorted(a, t, side="left")  # bins j.. lie wholly above t
    u = t - h.rmax
    err = np.maximum(s2[j] - 2 * u * s1[j] + u * u * s0[j], 0.0)
    k = np.maximum(j - 1, 0)  # bin k holds t (when t is inside the occupied range)
    d = np.where(j >= 1, np.maximum(b[k] - t, 0.0), 0.0)
    safe = np.where(bw[k] > 0, bw[k], 1.0)
    return err + n[k] * d**3 / (3 * safe), s0[j] + n[k] * d / safe


def clip_below(h: Histogram, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each threshold s: (sum of (s - x)^2 over x < s, count of x < s)."""
    return clip_above(h.mirrored(), -np.asarray(s, np.float64))


def expected_error(h: Histogram, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """Expected squared error per element of quantizing the histogram's data to `levels` levels on the range
    [lo, hi] widened to include 0 (as qparams.from_range does): clipping error of the mass outside plus
    delta^2 / 12 for the mass inside, delta = (hi - lo) / (levels - 1); exact zeros cost nothing (0 is on the
    grid). Vectorised over candidate ranges."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    lo, hi = np.broadcast_arrays(lo, np.maximum(np.asarray(hi, np.float64), 0.0))
    total = h.total
    if total == 0:
        return np.zeros(lo.shape)
    hz = h.nonzero()
    err_hi, out_hi = clip_above(hz, hi)
    err_lo, out_lo = clip_below(hz, lo)
    delta = (hi - lo) / (levels - 1)
    inside = np.maximum(hz.total - out_lo - out_hi, 0.0)
    return (err_lo + err_hi + inside * delta * delta / 12) / total


PLOT_BINS = 48


def plot_counts(h: Histogram, bins: int = PLOT_BINS) -> tuple[float, ...]:
    """The histogram merged into `bins` equal bins over [min, max] (each source bin to the bin of its centre)."""
    edges = h.edges
    centres = (edges[:-1] + edges[1:]) / 2
    span = (h.rmax - h.rmin) or 1.0
    idx = np.clip(((centres - h.rmin) / span * bins).astype(np.int64), 0, bins - 1)
    return tuple(float(c) for c in np.bincount(idx, weights=h.counts, minlength=bins))


class HistogramObserver:
    """An observer that streams into a StreamingHistogram; subclasses turn the histogram into a range."""

    name = ""

    def __init__(self, settings: ObserverSettings | None = None) -> None:
        self.settings = settings or ObserverSettings()
        self.hist = StreamingHistogram(self.settings.bins)

    def update(self, x: np.ndarray) -> None:
        self.hist.update(x)

    def range(self) -> tuple[float, float]:
        h = self.hist.snapshot()
        if h is None:
            return 0.0, 0.0
        lo, hi = self.range_of(h, self.settings)
        return float(lo), float(hi)

    @staticmethod
    def range_of(h: Histogram, settings: ObserverSettings) -> tuple[float, float]:
        raise NotImplementedError

    def chosen(self) -> str:
        return self.name
