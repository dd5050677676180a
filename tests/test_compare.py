"""compare(), apply_gates, measure and evaluate.fidelity, against figures recomputed here with numpy from
onnxruntime outputs of both models on the same data (the candidate differs from the reference in a
controlled way, so none of the figures is trivial)."""

import json

import numpy as np
import onnx
import pytest
from checks import run
from models import cnn, write_batches
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from qcli import compare
from qcli.cli.app import app
from qcli.compare import apply_gates
from qcli.core.errors import GateFailed, InputError
from qcli.measure.evaluate import OutputFidelity, fidelity
from qcli.report.report import Report

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- models and data


def perturbed(model: onnx.ModelProto, scales: dict[str, float], seed: int = 3) -> onnx.ModelProto:
    """A copy of `model` with Gaussian noise (scale x the tensor's std) added to the named initializers."""
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in scales:
            a = numpy_helper.to_array(t)
            a = (a + rng.standard_normal(a.shape) * scales[t.name] * a.std()).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return out


def renamed_input(model: onnx.ModelProto, new: str) -> onnx.ModelProto:
    old = model.graph.input[0].name
    for n in model.graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
    model.graph.input[0].name = new
    return model


def multi(outputs=("logits", "hidden", "probs")) -> onnx.ModelProto:
    """Two inputs, three kinds of output:
    logits [N, 10]             = MatMul(x, wa)              (class scores: rank 2)
    hidden [N, T, 8]           = MatMul(s, wb)              (hidden states: rank 3, not from a Softmax)
    probs  [N, T, 6]           = Softmax(MatMul(s, wc))     (per-position class scores)"""
    rng = np.random.default_rng(11)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 10)).astype(np.float32), "wa"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "wb"),
        numpy_helper.from_array(rng.standard_normal((16, 6)).astype(np.float32), "wc"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["logits"], name="mma"),
        helper.make_node("MatMul", ["s", "wb"], ["hidden"], name="mmb"),
        helper.make_node("MatMul", ["s", "wc"], ["zc"], name="mmc"),
        helper.make_node("Softmax", ["zc"], ["probs"], name="softmax", axis=-1),
    ]
    shapes = {"logits": ["N", 10], "hidden": ["N", "T", 8], "probs": ["N", "T", 6]}
    g = helper.make_graph(
        nodes,
        "multi",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", "T", 16]),
        ],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outputs],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def hidden_only() -> onnx.ModelProto:
    """One [N, T, 8] hidden-state output (from a MatMul, not a Softmax), one input s."""
    m = multi(outputs=("hidden",))
    keep = [n for n in m.graph.node if n.name == "mmb"]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    del m.graph.input[0]
    kept_inits = [t for t in m.graph.initializer if t.name == "wb"]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept_inits)
    return m


def write_multi_data(folder, n_batches=3, seed=5, only_s=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_batches):
        x = rng.standard_normal((6, 16)).astype(np.float32)
        s = rng.standard_normal((6, 4, 16)).astype(np.float32)
        if only_s:
            np.savez(folder / f"b{i}.npz", s=s)
        else:
            np.savez(folder / f"b{i}.npz", x=x, s=s)
    return folder


def feeds_of(folder):
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix == ".npz":
            with np.load(p) as z:
                out.append({k: z[k] for k in z.files})
        else:
            out.append({"x": np.load(p)})
    return out


def figures(ref_path, cand_path, feeds, class_outputs):
    """SQNR, cosine, max-abs error and top-1 agreement per output, from onnxruntime outputs of both models
    concatenated over every batch; top-1 only for the outputs named in `class_outputs`."""
    names = [o.name for o in onnx.load(str(ref_path)).graph.output]
    refs = [run(ref_path, f) for f in feeds]
    cands = [run(cand_path, f) for f in feeds]
    out = {}
    for k, name in enumerate(names):
        r = [np.asarray(o[k], np.float64) for o in refs]
        c = [np.asarray(o[k], np.float64) for o in cands]
        rf = np.concatenate([a.ravel() for a in r])
        cf = np.concatenate([a.ravel() for a in c])
        top1 = None
        if name in class_outputs:
            hits = np.concatenate([(a.argmax(-1) == b.argmax(-1)).ravel() for a, b in zip(r, c)])
            top1 = float(hits.mean())
        out[name] = {
            "sqnr": float(10 * np.log10(np.sum(rf**2) / np.sum((rf - cf) ** 2))),
            "cosine": float(rf @ cf / np.sqrt((rf @ rf) * (cf @ cf))),
            "max_abs": float(np.max(np.abs(rf - cf))),
            "top1": top1,
        }
    return out


def assert_figures_match(report_fidelity, expected):
    got = {f.name: f for f in report_fidelity}
    assert list(got) == list(expected)
    for name, e in expected.items():
        f = got[name]
        assert f.sqnr_db == pytest.approx(e["sqnr"], rel=1e-9), name
        assert f.cosine == pytest.approx(e["cosine"], rel=1e-12), name
        assert f.max_abs == pytest.approx(e["max_abs"], rel=1e-12), name
        if e["top1"] is None:
            assert f.top1_agreement is None, name
        else:
            assert f.top1_agreement == pytest.approx(e["top1"], abs=1e-12), name


@pytest.fixture
def cnn_pair(tmp_path):
    """cnn() and a copy with noisy classifier weights: ~18 dB, some top-1 classes change."""
    m = cnn()
    onnx.save(m, tmp_path / "ref.onnx")
    onnx.save(perturbed(m, {"fc_w": 0.1}), tmp_path / "cand.onnx")
    write_batches(tmp_path / "data", [(8, 3, 16, 16)] * 3, seed=5)
    return tmp_path


@pytest.fixture
def multi_pair(tmp_path):
    """multi() and a copy whose outputs are perturbed by different amounts: hidden worst, logits mildest."""
    m = multi()
    onnx.save(m, tmp_path / "ref.onnx")
    onnx.save(perturbed(m, {"wa": 0.03, "wb": 0.4, "wc": 0.1}), tmp_path / "cand.onnx")
    write_multi_data(tmp_path / "data")
    return tmp_path


# ---------------------------------------------------------------- figures


def test_cnn_figures_equal_numpy_on_onnxruntime_outputs(cnn_pair):
    d = cnn_pair
    report = compare(d / "ref.onnx", d / "cand.onnx", d / "data", latency_runs=2)
    expected = figures(d / "ref.onnx", d / "cand.onnx", feeds_of(d / "data"), {"logits"})
    # Not trivial: the candidate is measurably different and some predictions change.
    assert 10 < expected["logits"]["sqnr"] < 30 and expected["logits"]["top1"] < 1.0
    assert_figures_match(report.fidelity, expected)
    assert report.fidelity_files == ["b00.npy", "b01.npy", "b02.npy"]


def test_multi_output_figures_and_which_outputs_get_top1(multi_pair):
    """[N, C] and [N, T, C]-from-Softmax outputs get a top-1 agreement (per row / per position);
    [N, T, D] hidden states do not."""
    d = multi_pair
    report = compare(d / "ref.onnx", d / "cand.onnx", d / "data", latency_runs=2)
    expected = figures(d / "ref.onnx", d / "cand.onnx", feeds_of(d / "data"), {"logits", "probs"})
    assert expected["probs"]["top1"] < 1.0 and expected["logits"]["top1"] < 1.0
    assert_figures_match(report.fidelity, expected)
    by = {f.name: f for f in report.fidelity}
    assert by["hidden"].top1_agreement is None
    assert by["logits"].top1_agreement is not None and by["probs"].top1_agreement is not None


def test_fidelity_function_directly(multi_pair):
    """evaluate.fidelity on an in-memory list of feeds gives the same figures as the numpy recomputation."""
    d = multi_pair
    feeds = feeds_of(d / "data")
    got = fidelity(d / "ref.onnx", d / "cand.onnx", iter(feeds))
    assert_figures_match(got, figures(d / "ref.onnx", d / "cand.onnx", feeds, {"logits", "probs"}))
    for f in got:  # each batch's own SQNR too, in the order read
        want = [figures(d / "ref.onnx", d / "cand.onnx", [feed], set())[f.name]["sqnr"] for feed in feeds]
        assert f.batch_db == pytest.approx(want, rel=1e-9) and len(want) > 1
    with pytest.raises(InputError, match="no evaluation batches"):
        fidelity(d / "ref.onnx", d / "cand.onnx", iter([]))


def test_identical_models_are_exact(cnn_pair):
    d = cnn_pair
    report = compare(d / "ref.onnx", d / "ref.onnx", d / "data", latency_runs=2)
    (f,) = report.fidelity
    assert f.sqnr_db == float("inf") and f.max_abs == 0.0 and f.top1_agreement == 1.0
    assert f.cosine == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- gates


def test_min_sqnr_gate_boundary(cnn_pair):
    """The limit exactly at the measured SQNR passes; the next float above fails with the report attached."""
    d = cnn_pair
    measured = compare(d / "ref.onnx", d / "cand.onnx", d / "data", latency_runs=2).fidelity[0].sqnr_db
    ok = compare(d / "ref.onnx", d / "cand.onnx", d / "data", min_sqnr=measured, latency_runs=2)
    assert ok.gates == [{"gate": "min-sqnr", "limit": measured, "value": round(measured, 2), "passed": True}]
    above = float(np.nextafter(measured, np.inf))
    with pytest.raises(GateFailed) as e:
        compare(d / "ref.onnx", d / "cand.onnx", d / "data", min_sqnr=above, latency_runs=2)
    assert e.value.exit_code == 1
    assert e.value.report.gates == [{"gate": "min-sqnr", "limit": above, "value": round(measured, 2), "passed": False}]
    assert e.value.report.fidelity[0].sqnr_db == measured and e.value.report.size is not None


def test_max_top1_drop_gate_boundary(cnn_pair):
    d = cnn_pair
    agreement = compare(d / "ref.onnx", d / "cand.onnx", d / "data", latency_runs=2).fidelity[0].top1_agreement
    expected = figures(d / "ref.onnx", d / "cand.onnx", feeds_of(d / "data"), {"logits"})["logits"]["top1"]
    assert agreement == pytest.approx(expected) and agreement < 1.0
    drop = (1.0 - agreement) * 100
    ok = compare(d / "ref.onnx", d / "cand.onnx", d / "data", max_top1_drop=drop, latency_runs=2)
    assert [(g["gate"], g["passed"]) for g in ok.gates] == [("max-top1-drop", True)]
    assert ok.gates[0]["value"] == pytest.approx(drop, abs=1e-4)
    below = float(np.nextafter(drop, -np.inf))
    with pytest.raises(GateFailed) as e:
        compare(d / "ref.onnx", d / "cand.onnx", d / "data", max_top1_drop=below, latency_runs=2)
    (g,) = e.value.report.gates
    assert (g["gate"], g["passed"], g["limit"]) == ("max-top1-drop", False, below)
    assert g["value"] == pytest.approx(drop, abs=1e-4)


def test_worst_output_decides_the_gates(multi_pair):
    """hidden is the worst output (not the first, not the last): a limit between it and the next-worst fails;
    the top-1 gate is decided by the class output that agrees least."""
    d = multi_pair
    expected = figures(d / "ref.onnx", d / "cand.onnx", feeds_of(d / "data"), {"logits", "probs"})
    sq = sorted(v["sqnr"] for v in expected.values())
    assert expected["hidden"]["sqnr"] == sq[0] and sq[1] - sq[0] > 3  # measured: 8.2 dB, next 15.1
    limit = (sq[0] + sq[1]) / 2
    with pytest.raises(GateFailed) as e:
        compare(d / "ref.onnx", d / "cand.onnx", d / "data", min_sqnr=limit, latency_runs=2)
    (g,) = e.value.report.gates
    assert g["value"] == round(expected["hidden"]["sqnr"], 2) and not g["passed"]
    assert compare(d / "ref.onnx", d / "cand.onnx", d / "data", min_sqnr=sq[0] - 0.01, latency_runs=2).gates[0][
        "passed"
    ]

    worst_top1 = min(expected["logits"]["top1"], expected["probs"]["top1"])
    assert expected["logits"]["top1"] != expected["probs"]["top1"]
    drop = (1 - worst_top1) * 100
    r = compare(d / "ref.onnx", d / "cand.onnx", d / "data", max_top1_drop=drop, latency_runs=2)
    assert r.gates[0]["value"] == pytest.approx(drop, abs=1e-4) and r.gates[0]["passed"]
    with pytest.raises(GateFailed):
        compare(d / "ref.onnx", d / "cand.onnx", d / "data", max_top1_drop=drop - 1e-3, latency_runs=2)


def test_both_gates_pass_and_fail_independently_in_apply_gates():
    """apply_gates on a hand-made report: each verdict at its boundary, worst output decides."""
    rep = Report("compare", "a", "b")
    rep.fidelity = [
        OutputFidelity("a", 30.0, 0.99, 0.1, 0.75),
        OutputFidelity("b", 20.0, 0.9, 0.5, None),
        OutputFidelity("c", 25.0, 0.95, 0.2, 0.5),
    ]
    apply_gates(rep, 20.0, 50.0)
    assert [(g["gate"], g["value"], g["passed"]) for g in rep.gates] == [
        ("min-sqnr", 20.0, True),
        ("max-top1-drop", 50.0, True),
    ]
    rep.gates = []
    apply_gates(rep, 20.000001, 49.999)
    assert [g["passed"] for g in rep.gates] == [False, False]


def test_top1_gate_without_class_outputs_is_an_input_error(tmp_path):
    m = hidden_only()
    onnx.save(m, tmp_path / "ref.onnx")
    onnx.save(perturbed(m, {"wb": 0.2}), tmp_path / "cand.onnx")
    write_multi_data(tmp_path / "data", only_s=True)
    r = compare(tmp_path / "ref.onnx", tmp_path / "cand.onnx", tmp_path / "data", latency_runs=2)
    assert r.fidelity[0].top1_agreement is None
    with pytest.raises(InputError) as e:
        compare(tmp_path / "ref.onnx", tmp_path / "cand.onnx", tmp_path / "data", max_top1_drop=5, latency_runs=2)
    msg = str(e.value)
    assert "--max-top1-drop" in msg and "class-score" in msg and "hidden" in msg and "--min-sqnr" in msg
    res = cli(
        "compare", tmp_path / "ref.onnx", tmp_path / "cand.onnx", "--data", tmp_path / "data", "--max-top1-drop", 5
    )
    assert res.exit_code == 2 and "class-score" in res.stderr and "Traceback" not in res.output


# ---------------------------------------------------------------- data that does not fit the candidate


def test_data_that_fits_only_the_reference_static_shape(tmp_path):
    """The candidate declares a static 8x8 image; the data is 16x16 (fits the reference): an InputError that
    names the candidate and the input, exit 2 through the CLI, one line, no traceback."""
    onnx.save(renamed_input(cnn(), "pixels"), tmp_path / "ref.onnx")
    cand = renamed_input(cnn(), "pixels")
    dims = cand.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = 8, 8
    onnx.save(cand, tmp_path / "cand.onnx")
    write_batches(tmp_path / "data", [(2, 3, 16, 16)] * 2)
    with pytest.raises(InputError) as e:
        compare(tmp_path / "ref.onnx", tmp_path / "cand.onnx", tmp_path / "data", latency_runs=2)
    assert "cand.onnx" in str(e.value) and "pixels" in str(e.value)
    r = cli("compare", tmp_path / "ref.onnx", tmp_path / "cand.onnx", "--data", tmp_path / "data")
    assert r.exit_code == 2, r.output
    assert len(_not_progress(r.stderr)) == 1 and "cand.onnx" in r.stderr
    assert "Traceback" not in r.output and "internal error" not in r.output


@pytest.fixture
def renamed_pair(tmp_path):
    onnx.save(renamed_input(cnn(), "pixels"), tmp_path / "ref.onnx")
    onnx.save(renamed_input(cnn(), "image"), tmp_path / "cand.onnx")
    write_batches(tmp_path / "data", [(2, 3, 16, 16)] * 2)
    return tmp_path


def test_data_that_fits_only_the_reference_input_name(renamed_pair):
    d = renamed_pair
    with pytest.raises(InputError) as e:
        compare(d / "ref.onnx", d / "cand.onnx", d / "data", latency_runs=2)
    assert "cand.onnx" in str(e.value) and "image" in str(e.value) and "pixels" in str(e.value)
    r = cli("compare", d / "ref.onnx", d / "cand.onnx", "--data", d / "data")
    assert r.exit_code == 2, r.output
    assert len(_not_progress(r.stderr)) == 1 and "Traceback" not in r.output


# ---------------------------------------------------------------- CLI and API on a failing gate


def test_gate_failure_api_and_cli(cnn_pair):
    d = cnn_pair
    args = ("compare", d / "ref.onnx", d / "cand.onnx", "--data", d / "data", "--runs", 2, "--min-sqnr", 40)
    with pytest.raises(GateFailed) as e:
        compare(d / "ref.onnx", d / "cand.onnx", d / "data", min_sqnr=40, latency_runs=2)
    api = e.value.report
    assert e.value.exit_code == 1 and api.fidelity and not api.gates[0]["passed"]

    r = cli(*args)
    assert r.exit_code == 1
    assert "output logits: SQNR" in r.stdout  # the result on stdout, the verdict on stderr
    assert "gate failed: min-sqnr" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.output

    r = cli(*args, "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["gates"] == [{"gate": "min-sqnr", "limit": 40.0, "value": api.gates[0]["value"], "passed": False}]
    (o,) = out["outputs"]
    f = api.fidelity[0]
    assert (o["name"], o["sqnr_db"], o["cosine"], o["max_abs"], o["top1_agreement"]) == (
        f.name,
        f.sqnr_db,
        f.cosine,
        f.max_abs,
        f.top1_agreement,
    )


# ---------------------------------------------------------------- size


def test_size_counts_external_data(cnn_pair):
    d = cnn_pair
    cand = onnx.load(str(d / "cand.onnx"))
    onnx.save(
        cand,
        str(d / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    model_bytes, data_bytes = (d / "ext.onnx").stat().st_size, (d / "ext.onnx.data").stat().st_size
    assert data_bytes > 10 * model_bytes  # the weights really are outside
    report = compare(d / "ref.onnx", d / "ext.onnx", d / "data", latency_runs=2)
    ref_bytes = (d / "ref.onnx").stat().st_size
    parts = report.size.pop("breakdown")
    assert report.size == {
        "reference_bytes": ref_bytes,
        "candidate_bytes": model_bytes + data_bytes,
        "ratio": (model_bytes + data_bytes) / ref_bytes,
    }
    # the breakdown: every byte counted once, the external weights by kind
    assert sum(parts["candidate"].values()) == model_bytes + data_bytes
    assert sum(parts["reference"].values()) == ref_bytes and set(parts["reference"]) == {
        "float weights", "graph and metadata"}  # fmt: skip
    assert parts["candidate"]["float weights"] > 0.9 * data_bytes  # a perturbed float copy
    # and the same weights give the same figures as the single-file candidate
    single = compare(d / "ref.onnx", d / "cand.onnx", d / "data", latency_runs=2)
    assert report.fidelity == single.fidelity


def _not_progress(stderr: str) -> list[str]:
    """stderr lines without the one-line-per-phase progress notes printed off a terminal."""
    return [ln for ln in stderr.strip().splitlines() if not ln.startswith("qcli: ")]
