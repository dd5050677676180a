"""The mean of what each weight of a Conv or Gemm multiplies, over calibration data: enough to know the mean
of the layer's output for any weights, since the output is linear in them.

For a Conv, `PatchMeans` keeps M[c, i, j] = the mean over batches and output positions of the (zero-padded)
input at channel c and kernel offset (i, j); then mean(conv(x, W))[o] = sum W[o, c, i, j] * M[c, i, j] over
the channels of o's group, with no convolution run. A Gemm (or a 1x1 Conv) is the case of one offset.

    means = PatchMeans.for_conv(node_attrs, weight_shape)   # or PatchMeans.for_gemm(trans_a)
    means.update(x)                                          # each batch's input (streaming)
    means.output_mean(W)                                     # [out channels]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PatchMeans:
    kernel: tuple[int, ...]  # () for a Gemm
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # begins then ends, as ONNX writes them
    dilations: tuple[int, ...] = ()
    group: int = 1
    trans_a: bool = False  # Gemm: A is [K, M]
    sums: np.ndarray | None = field(default=None, repr=False)
    count: int = 0

    @classmethod
    def for_conv(cls, attrs: dict, weight_shape: tuple[int, ...]) -> PatchMeans:
        kernel = tuple(weight_shape[2:])
        n = len(kernel)
        return cls(
            kernel,
            tuple(attrs.get("strides", [1] * n)),
            tuple(attrs.get("pads", [0] * 2 * n)),
            tuple(attrs.get("dilations", [1] * n)),
            int(attrs.get("group", 1)),
        )

    @classmethod
    def for_gemm(cls, trans_a: bool = False) -> PatchMeans:
        return cls((), trans_a=trans_a)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        if not self.kernel:  # Gemm: mean over rows
            rows = x.T if self.trans_a else x
            self._add(rows.sum(axis=0), rows.shape[0])
            return
        n = len(self.kernel)
        padded = np.pad(x, [(0, 0), (0, 0)] + [(self.pads[k], self.pads[k + n]) for k in range(n)])
        spans = [(self.kernel[k] - 1) * self.dilations[k] + 1 for k in range(n)]
        out = [(padded.shape[2 + k] - spans[k]) // self.strides[k] + 1 for k in range(n)]
        sums = np.empty((x.shape[1], *self.kernel))
        for offset in np.ndindex(*self.kernel):
            index = tuple(
                slice(o * d, o * d + s * (m - 1) + 1, s)
                for o, d, s, m in zip(offset, self.dilations, self.strides, out, strict=True)
            )
            sums[(slice(None), *offset)] = padded[(slice(None), slice(None), *index)].sum(axis=(0, *range(2, 2 + n)))
        self._add(sums, x.shape[0] * int(np.prod(out)))

    def _add(self, sums: np.ndarray, count: int) -> None:
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += count

    @property
    def means(self) -> np.ndarray:
        return self.sums / max(self.count, 1)

    def output_mean(self, w: np.ndarray, trans_b: bool = False) -> np.ndarray:
        """Mean of each output channel of the layer with weights `w` (bias excluded) over the data seen."""
        w = np.asarray(w, np.float64)
        m = self.means
        if not self.kernel:
            return (w if trans_b else w.T) @ m
        cout, per_group = w.shape[0], w.shape[1]
        groups = np.arange(cout) // (cout // self.group)  # each output channel's group
        channels = m.reshape(self.group, per_group, *self.kernel)[groups]  # [cout, per_group, *kernel]
        return (w * channels).reshape(cout, -1).sum(axis=1)
