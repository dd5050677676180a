"""A weight-only run's quantized weights in a saved plan: for the data-aware algorithms (gptq, awq, the clipping
search) the blocks cannot be made again without the calibration statistics, so the plan carries them, each under
its key (passes/weight_only.Key), as .npy bytes (io/planfile.py). rtn needs nothing: it is made again exactly."""

from __future__ import annotations

import numpy as np

from qcli.core import qparams as qp
from qcli.core.errors import InputError
from qcli.io.planfile import decode_array, encode_array
from qcli.passes.weight_only import Key
from qcli.weights import BlockWeight


def encode(cache: dict[Key, BlockWeight]) -> list[dict]:
    out = []
    for key, bw in cache.items():
        store = np.int8 if bw.qtype.qmin < 0 else np.uint8  # int4/uint4 codes as bytes
        p = bw.params
        out.append(
            {
                "key": list(key),
                "codes": encode_array(np.asarray(bw.codes).astype(store)),
                "scale": encode_array(np.asarray(p.scale)),
                "zero_point": encode_array(np.asarray(p.zero_point).astype(store)),
                "qtype": bw.qtype.name,
                "axis": p.axis,
                "block_size": p.block_size,
                "symmetric": bw.symmetric,
            }
        )
    return out


def decode(entries: list[dict]) -> dict[Key, BlockWeight]:
    out: dict[Key, BlockWeight] = {}
    try:
        for e in entries:
            tensor, axis, alpha, qtype, block, symmetric, algo = e["key"]
            key: Key = (str(tensor), int(axis), float(alpha), str(qtype), int(block), bool(symmetric), str(algo))
            t = qp.QTYPES[e["qtype"]]
            params = qp.QParams(
                decode_array(e["scale"]).astype(np.float32),
                decode_array(e["zero_point"]).astype(t.np_dtype),
                t,
                e["axis"],
                e["block_size"],
            )
            out[key] = BlockWeight(decode_array(e["codes"]).astype(t.np_dtype), params, bool(e["symmetric"]))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"the plan's quantized weights are malformed ({type(e).__name__}: {e})") from e
    return out
