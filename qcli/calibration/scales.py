"""Calibration files at another scale than the rest: one image left in 0..255 among images in 0..1, a clip
recorded at another gain. Such a file widens every range fitted on it and can ruin the others' resolution, so
it is named in a warning (nothing is dropped: the user decides).

    scales = FileScales()
    batches = scales.watch(items, src.load)     # streams, recording each file's largest |value| per input
    scales.warnings()                           # a file whose input reaches FACTOR x the median file's
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

FACTOR = 8.0  # a file whose largest |value| of an input is this many times the median file's is named
MIN_FILES = 5  # fewer files have no meaningful median


class FileScales:
    def __init__(self) -> None:
        self.peaks: dict[str, list[tuple[str, float]]] = {}  # input -> [(file, largest |value|)]

    def watch(self, items: Iterable[Path], load: Callable[[Path], dict[str, np.ndarray]]) -> Iterator[dict]:
        for item in items:
            feed = load(item)
            for name, x in feed.items():
                if x.dtype.kind == "f" and x.size:
                    self.peaks.setdefault(name, []).append((item.name, float(np.max(np.abs(x)))))
            yield feed

    def outliers(self) -> list[tuple[str, str, float, float]]:
        """(input, file, its largest |value|, the median file's) for each file at FACTOR x or more."""
        out = []
        for name, peaks in self.peaks.items():
            if len(peaks) < MIN_FILES:
                continue
            median = float(np.median([p for _, p in peaks]))
            out += [(name, f, p, median) for f, p in peaks if median > 0 and p >= FACTOR * median]
        return out

    def warnings(self) -> list[str]:
        found = self.outliers()
        shown = [f"{f} ({name} reaches {p:.4g}, {p / m:.0f}x the median file's {m:.4g})" for name, f, p, m in found]
        if not shown:
            return []
        more = f" (+{len(shown) - 3} more)" if len(shown) > 3 else ""
        return [
            f"calibration file(s) at another scale than the rest: {'; '.join(shown[:3])}{more}; every range they "
            "join widens (a preprocessing slip?): fix or remove them, or check the model on data like them"
        ]
