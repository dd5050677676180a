"""Stand-ins read from .npy/.npz headers alone: what FeedSource.check() validates before any work."""

import numpy as np
import pytest

from qcli.core.errors import InputError
from qcli.io.feeds import InputSpec
from qcli.io.headers import header_feed


def test_header_stand_ins_have_the_files_shapes_and_dtypes(tmp_path):
    a, b = np.zeros((2, 3), np.float64), np.ones((5,), np.int32)
    np.save(tmp_path / "a.npy", a)
    np.savez_compressed(tmp_path / "c.npz", a=a, b=b)
    spec = [InputSpec("a", np.dtype(np.float32), (2, 3))]
    assert {k: (v.shape, v.dtype) for k, v in header_feed(tmp_path / "c.npz", spec).items()} == {
        "a": ((2, 3), np.float64), "b": ((5,), np.int32)}  # fmt: skip
    assert header_feed(tmp_path / "a.npy", spec)["a"].shape == (2, 3)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="cannot read .*bad.npy as numpy data"):
        header_feed(tmp_path / "bad.npy", spec)


def test_a_header_declaring_more_bytes_than_the_file_holds_is_refused(tmp_path):
    spec = [InputSpec("a", np.dtype(np.float32), (2, 3))]
    with open(tmp_path / "short.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2, 3)})
        f.write(b"\0" * 20)  # 24 declared
    with pytest.raises(
        InputError, match=r"short.npy: its header declares 24 bytes of data \(float32 \[2, 3\]\); the file holds 20"
    ):
        header_feed(tmp_path / "short.npy", spec)
