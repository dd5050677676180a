"""Zero constant Pads folded into the Conv / pool that reads them (passes/fuse_pad.py, run by preprocess).
Oracle: onnxruntime with every graph optimization off (its own PadFusion would otherwise fold the original
too) running the original and the folded model on the same inputs; onnxruntime's optimized graph and the
float model for the quantized EfficientNet-Lite style net."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from checks import batches_of, fused_ops, sqnr_on
from models import model_of, save_with_data, vi
from onnx import TensorProto, helper, numpy_helper

from qcli import QuantConfig, quantize
from qcli.core.graph import attr
from qcli.core.plan import Action
from qcli.passes.fuse_pad import fuse_pads
from qcli.passes.preprocess import preprocess

RNG = np.random.default_rng(5)
W = (RNG.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
W1D = (RNG.standard_normal((8, 4, 3)) * 0.3).astype(np.float32)


def _plain(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    """onnxruntime with every graph optimization off: the Pad runs as written."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


def _x(shape=(2, 4, 9, 9), seed=7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)  # negative values included


def _pad_then(reader, pad_ins, inits, opset=17, pad_attrs=None, before=None, x_shape=(2, 4, 9, 9), outputs=("y",)):
    """x -> [before] -> Pad -> reader -> y."""
    nodes = list(before or [])
    src = nodes[-1].output[0] if nodes else "x"
    nodes += [
        helper.make_node("Pad", [src, *pad_ins], ["p"], name="pad", **(pad_attrs or {"mode": "constant"})),
        reader,
    ]
    outs = [vi(o, [None] * len(x_shape), TensorProto.INT64 if o == "i" else TensorProto.FLOAT) for o in outputs]
    m = model_of(nodes, [vi("x", list(x_shape))], outs, inits, opset=opset)
    m.ir_version = 7 if opset < 15 else 8
    return m


def _conv(**attrs):
    return helper.make_node("Conv", ["p", "w"], ["y"], name="conv", **attrs)


def _same(ref: onnx.ModelProto, new: onnx.ModelProto, x: np.ndarray) -> None:
    onnx.checker.check_model(new, full_check=True)
    for a, b in zip(_plain(ref, {"x": x}), _plain(new, {"x": x})):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _folded(ref: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    m, notes = preprocess(ref)
    assert "Pad" not in Counter(n.op_type for n in m.graph.node)
    assert any("pad -> " in n for n in notes)  # the fold is recorded for the report
    return m, notes


def _reader(m: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.op_type in ("Conv", "AveragePool", "MaxPool"))


# -- folds ------------------------------------------------------------------------------------------------

I64 = np.int64
FOLDS = {
    # name -> (model, the reader's pads after the fold)
    "conv-own-pads-asymmetric": (
        _pad_then(_conv(pads=[1, 1, 1, 1]), ["pads"], {"w": W, "pads": np.array([0, 0, 0, 2, 0, 0, 1, 0], I64)}),
        [1, 3, 2, 1],
    ),
    "conv-auto-pad-valid": (
        _pad_then(_conv(auto_pad="VALID"), ["pads"], {"w": W, "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], I64)}),
        [1, 0, 0, 1],
    ),
    "conv-1d-zero-value": (
        _pad_then(
            _conv(),
            ["pads", "v"],
            {"w": W1D, "pads": np.array([0, 0, 2, 0, 0, 1], I64), "v": np.float32(0)},
            x_shape=(2, 4, 9),
        ),
        [2, 1],
    ),
    "conv-opset18-axes": (
        _pad_then(
            _conv(), ["pads", "", "ax"], {"w": W, "pads": np.array([2, 1, 0, 3], I64), "ax": np.array([-1, 2])}, 18
        ),
        [1, 2, 3, 0],
    ),
    "conv-opset10-attributes": (
        _pad_then(_conv(), [], {"w": W}, 10, {"mode": "constant", "pads": [0, 0, 1, 2, 0, 0, 2, 1], "value": 0.0}),
        [1, 2, 2, 1],
    ),
    "avgpool-exclude-pad-without-own-pads": (
        _pad_then(
            helper.make_node("AveragePool", ["p"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2]),
            ["pads"],
            {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], I64)},
        ),
        [1, 1, 1, 1],
    ),
    "avgpool-include-pad": (
        _pad_then(
            helper.make_node(
                "AveragePool", ["p"], ["y"], name="pool", kernel_shape=[3, 3], pads=[1, 0, 0, 0], count_include_pad=1
            ),
            ["pads"],
            {"pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], I64)},
        ),
        [2, 0, 0, 1],
    ),
    "maxpool-after-relu": (
        _pad_then(
            helper.make_node("MaxPool", ["p"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2]),
            ["pads"],
            {"pads": np.array([0, 0, 1, 2, 0, 0, 1, 0], I64)},
            before=[helper.make_node("Relu", ["x"], ["r"])],
        ),
        [1, 2, 1, 0],
    ),
    "maxpool-after-clip-0-6": (
        _pad_then(
            helper.make_node("MaxPool", ["p"], ["y"], name="pool", kernel_shape=[2, 2]),
            ["pads"],
            {"pads": np.array([0, 0, 1, 1, 0, 0, 0, 0], I64), "lo": np.float32(0), "hi": np.float32(6)},
            before=[helper.make_node("Clip", ["x", "lo", "hi"], ["r"])],
        ),
        [1, 1, 0, 0],
    ),
}


@pytest.mark.parametrize("case", sorted(FOLDS))
def test_zero_pad_folds_into_its_reader_exactly(case):
    ref, pads = FOLDS[case]
    x = _x((2, 4, 9) if "1d" in case else (2, 4, 9, 9))
    m, _ = _folded(ref)
    reader = _reader(m)
    assert attr(reader, "pads") == pads and attr(reader, "auto_pad", b"NOTSET") == b"NOTSET"
    assert {t.name for t in m.graph.initializer} <= {"w", "lo", "hi"}  # the Pad's constants are gone
    _same(ref, m, x)


def test_pads_from_a_constant_node_fold_without_lifting():
    """fuse_pads alone (no lift_constants before it) reads pads held by a Constant node."""
    pads = helper.make_node(
        "Constant", [], ["pads"], value=numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], I64))
    )
    ref = _pad_then(_conv(), ["pads"], {"w": W}, before=None)
    ref.graph.node.insert(0, pads)
    m = onnx.ModelProto()
    m.CopyFrom(ref)
    done = fuse_pads(m)
    assert done.folded == ("pad -> conv",) and not done.kept
    assert attr(_reader(m), "pads") == [1, 1, 1, 1]
    _same(ref, m, _x())


# -- refusals ---------------------------------------------------------------------------------------------

PADS_11 = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], I64)}
KEPT = {
    # name -> (model, words the note must hold)
    "reflect": (_pad_then(_conv(), ["pads"], {"w": W, **PADS_11}, pad_attrs={"mode": "reflect"}), "mode 'reflect'"),
    "value-0.5": (_pad_then(_conv(), ["pads", "v"], {"w": W, **PADS_11, "v": np.float32(0.5)}), "pads with 0.5"),
    "channel-axis": (
        _pad_then(
            _conv(),
            ["pads"],
            {"w": np.zeros((8, 6, 3, 3), np.float32), "pads": np.array([0, 1, 0, 0, 0, 1, 0, 0], I64)},
        ),
        "channel axis",
    ),
    "negative": (_pad_then(_conv(), ["pads"], {"w": W, "pads": np.array([0, 0, 1, -1, 0, 0, 1, 1], I64)}), "crops"),
    "same-upper": (_pad_then(_conv(auto_pad="SAME_UPPER"), ["pads"], {"w": W, **PADS_11}), "auto_pad=SAME_UPPER"),
    "maxpool-on-signed-input": (
        _pad_then(helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3]), ["pads"], PADS_11),
        "exact only on inputs >= 0",
    ),
    "maxpool-indices": (
        _pad_then(
            helper.make_node("MaxPool", ["p"], ["y", "i"], kernel_shape=[3, 3]),
            ["pads"],
            PADS_11,
            before=[helper.make_node("Relu", ["x"], ["r"])],
            outputs=("y", "i"),
        ),
        "indices",
    ),
    "avgpool-own-pads-excluded": (
        _pad_then(
            helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), ["pads"], PADS_11
        ),
        "count_include_pad=0",
    ),
    "pool-window-of-padding-only": (
        _pad_then(
            helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[2, 2], count_include_pad=1),
            ["pads"],
            {"pads": np.array([0, 0, 2, 0, 0, 0, 0, 0], I64)},
        ),
        "padding only",
    ),
    "graph-output": (
        _pad_then(_conv(), ["pads"], {"w": W, **PADS_11}, outputs=("y", "p")),
        "graph output",
    ),
    "two-readers": (
        _pad_then(_conv(), ["pads"], {"w": W, **PADS_11}, before=None, outputs=("y", "n")),
        "other readers",
    ),
}
KEPT["two-readers"][0].graph.node.append(helper.make_node("Neg", ["p"], ["n"], name="neg"))


@pytest.mark.parametrize("case", sorted(KEPT))
def test_pad_that_would_change_the_result_stays_and_a_note_says_why(case):
    ref, words = KEPT[case]
    m, notes = preprocess(ref)
    assert Counter(n.op_type for n in m.graph.node)["Pad"] == 1
    kept = [n for n in notes if n.startswith("Pad 'pad' kept")]
    assert len(kept) == 1 and words in kept[0], notes
    assert not any(n.startswith("fold pads") for n in notes)


def test_pads_and_axes_computed_at_run_time_stay():
    """Pads read from a graph input; opset 18 axes read from a graph input."""
    pads_in = _pad_then(_conv(), ["pads"], {"w": W})
    pads_in.graph.input.append(vi("pads", [8], TensorProto.INT64))
    axes_in = _pad_then(_conv(), ["pads", "", "ax"], {"w": W, "pads": np.array([1, 1, 1, 1], I64)}, 18)
    axes_in.graph.input.append(vi("ax", [2], TensorProto.INT64))
    for ref, words in ((pads_in, "pads are computed at run time"), (axes_in, "axes input is computed at run time")):
        _, notes = preprocess(ref)
        assert any(n.startswith("Pad 'pad' kept") and words in n for n in notes), notes


# -- the EfficientNet-Lite style net ------------------------------------------------------------------------


def effnet_lite(blocks: int = 3, c: int = 16, hw: int = 32) -> onnx.ModelProto:
    """TF/Keras export style, per block: Pad (SAME for stride 2: bottom/right only) -> Conv 3x3 stride 2 ->
    Clip(0, 6) -> Pad 1 -> depthwise Conv 3x3 -> Clip(0, 6) -> Conv 1x1. [N,16,32,32] -> [N,64,4,4]."""
    rng = np.random.default_rng(3)
    inits = {"lo": np.float32(0), "hi": np.float32(6)}
    nodes, x = [], "x"
    for b in range(blocks):
        cin, cout, p = c * (b + 1), c * (b + 2), f"b{b}_"
        inits |= {
            p + "pads1": np.array([0, 0, 0, 0, 0, 0, 1, 1], I64),
            p + "pads2": np.array([0, 0, 1, 1, 0, 0, 1, 1], I64),
            p + "w1": (rng.standard_normal((cout, cin, 3, 3)) * (2 / (cin * 9)) ** 0.5).astype(np.float32),
            p + "b1": (rng.standard_normal(cout) * 0.1).astype(np.float32),
            p + "wd": (rng.standard_normal((cout, 1, 3, 3)) * 0.4).astype(np.float32),
            p + "bd": (rng.standard_normal(cout) * 0.1).astype(np.float32),
            p + "wp": (rng.standard_normal((cout, cout, 1, 1)) * cout**-0.5).astype(np.float32),
        }
        nodes += [
            helper.make_node("Pad", [x, p + "pads1"], [p + "pad1"], name=p + "pad1", mode="constant"),
            helper.make_node("Conv", [p + "pad1", p + "w1", p + "b1"], [p + "c1"], name=p + "conv_s2", strides=[2, 2]),
            helper.make_node("Clip", [p + "c1", "lo", "hi"], [p + "r1"], name=p + "clip1"),
            helper.make_node("Pad", [p + "r1", p + "pads2"], [p + "pad2"], name=p + "pad2", mode="constant"),
            helper.make_node("Conv", [p + "pad2", p + "wd", p + "bd"], [p + "c2"], name=p + "dw", group=cout),
            helper.make_node("Clip", [p + "c2", "lo", "hi"], [p + "r2"], name=p + "clip2"),
            helper.make_node("Conv", [p + "r2", p + "wp"], [p + "y"], name=p + "pw"),
        ]
        x = p + "y"
    s = hw // 2**blocks
    return model_of(nodes, [vi("x", ["N", c, hw, hw])], [vi(x, ["N", c * (blocks + 1), s, s])], inits, opset=13)


def test_effnet_lite_pads_fold_and_every_conv_runs_int8(tmp_path):
    """The six Pads fold (same outputs); the plan then runs all 9 convs on int8 (before the fold: 2 of 9, each
    Pad cut a region and the cost model kept the cut pieces float), and onnxruntime runs 9 QLinearConv."""
    ref = effnet_lite()
    m, notes = preprocess(ref)
    assert Counter(n.op_type for n in m.graph.node) == {"Conv": 9, "Clip": 6}
    assert any(n.startswith("fold pads: 6 ") and "b2_pad2 -> b2_dw" in n for n in notes)
    _same(ref, m, _x((2, 16, 32, 32)))
    save_with_data(tmp_path, ref, (2, 16, 32, 32))
    plan = quantize(tmp_path / "m.onnx", QuantConfig(), calib=tmp_path / "c", dry_run=True).plan
    assert [d.action for d in plan.nodes if d.op_type == "Conv"] == [Action.INT8] * 9
    assert any(n.startswith("fold pads: 6 ") for n in plan.notes)
    config = QuantConfig.of(reduce_range=False, accuracy_guard=False)
    r = quantize(tmp_path / "m.onnx", config, calib=tmp_path / "c", out=tmp_path / "q.onnx", latency_runs=2)
    fused = fused_ops(r.output, tmp_path)
    assert fused.get("QLinearConv") == 9 and "Pad" not in fused and "Conv" not in fused
    assert sqnr_on(tmp_path / "m.onnx", r.output, batches_of(tmp_path / "e"), exact_qdq=True) > 29.0  # 31.0 dB
