"""Calibration files at another scale than the rest are named; nothing is named among files alike, nor with
too few files for a median."""

from pathlib import Path

import numpy as np

from qcli.calibration.scales import FACTOR, FileScales


def _stream(arrays: dict[str, np.ndarray]) -> FileScales:
    scales = FileScales()
    feeds = {Path(f"f{i}.npy"): {"x": a, "ids": np.arange(3)} for i, a in enumerate(arrays)}
    assert list(scales.watch(list(feeds), feeds.__getitem__)) == list(feeds.values())  # every feed, in order
    return scales


def test_a_file_at_the_factor_is_named_with_its_peak_and_the_median():
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(-1, 1, 50).astype(np.float32) for _ in range(6)]
    for a in arrays:
        a[0] = 1.0  # every file peaks at exactly 1
    arrays[4] = arrays[4] * FACTOR
    scales = _stream(arrays)
    assert scales.outliers() == [("x", "f4.npy", FACTOR, 1.0)]  # the int input is not watched
    (w,) = scales.warnings()
    assert "f4.npy (x reaches 8, 8x the median file's 1)" in w


def test_files_alike_or_too_few_name_nothing():
    alike = [np.full(4, v, np.float32) for v in (1, 2, 3, 4, 5, 7.9)]
    assert _stream(alike).warnings() == []  # 7.9 < 8 x the median (3.5)
    few = [np.ones(4, np.float32)] * 3 + [np.full(4, 100, np.float32)]
    assert _stream(few).warnings() == []
