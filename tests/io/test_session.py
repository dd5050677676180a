"""Sessions: each model loaded once per use, closed (and its memory handed back) as soon as it is done."""

import numpy as np
import onnx
import pytest
from checks import run
from models import cnn, write_batches
from onnx import numpy_helper

from qcli import QuantConfig
from qcli.calibration import calibrate
from qcli.compare import measure
from qcli.core.errors import InternalError
from qcli.io import session
from qcli.io.feeds import FeedSource, FidelityData, input_specs
from qcli.measure import evaluate
from qcli.report.report import Report


@pytest.fixture
def opened(monkeypatch):
    """Every Session opened, by module, and whether it was closed."""
    log = []

    class Counted(session.Session):
        def __init__(self, path, *a, **k):
            super().__init__(path, *a, **k)
            log.append(self)

    for module in (evaluate, calibrate, session):
        monkeypatch.setattr(module, "Session", Counted)
    return log


@pytest.fixture
def pair_files(tmp_path):
    onnx.save(cnn(channels=8), tmp_path / "ref.onnx")
    onnx.save(cnn(channels=8), tmp_path / "cand.onnx")
    write_batches(tmp_path / "d", [(2, 3, 16, 16)] * 3)
    return tmp_path


def test_a_closed_session_is_released_and_a_with_block_closes_it(pair_files):
    with session.Session(pair_files / "ref.onnx") as s:
        x = {"x": np.ones((1, 3, 16, 16), np.float32)}
        np.testing.assert_array_equal(s.run(None, x)[0], run(pair_files / "ref.onnx", x)[0])
    assert s.sess is None
    session.release_memory()  # harmless when called again, on any C library


def test_fidelity_and_latency_share_one_session_pair(pair_files, opened):
    specs = input_specs(onnx.load(str(pair_files / "ref.onnx")))
    src = FeedSource(pair_files / "d", specs)
    report = Report("compare", "ref", "cand")
    measure(report, pair_files / "ref.onnx", pair_files / "cand.onnx", FidelityData(src, src.items, ""), 3)
    assert [s.path.name for s in opened] == ["ref.onnx", "cand.onnx"]  # two, not four
    assert all(s.sess is None for s in opened)  # both closed
    assert report.fidelity[0].sqnr_db == float("inf") and report.latency.runs == 3


def test_sessions_given_to_fidelity_stay_open_and_paths_are_opened_and_closed(pair_files, opened):
    feeds = [{"x": np.ones((1, 3, 16, 16), np.float32)}]
    with evaluate.pair(pair_files / "ref.onnx", pair_files / "cand.onnx") as (ref, cand):
        evaluate.fidelity(ref, cand, feeds)
        evaluate.latency(ref, cand, feeds[0], runs=2)
        assert ref.sess is not None and cand.sess is not None and len(opened) == 2
    assert ref.sess is None and cand.sess is None
    evaluate.fidelity(pair_files / "ref.onnx", pair_files / "cand.onnx", feeds)
    assert len(opened) == 4 and all(s.sess is None for s in opened)


def test_one_observing_session_serves_calibration_and_a_second_pass(pair_files, opened):
    """Calibration, then another pass over some of the same tensors (the accuracy guard's), on one session:
    the ranges are those calibrate() finds with a session of its own."""
    model = cnn(channels=8)
    feeds = [{"x": np.load(p)} for p in sorted((pair_files / "d").glob("*.npy"))]
    watch = ["r1", "r2", "gap"]
    alone = calibrate.calibrate(model, watch, iter(feeds), QuantConfig())
    assert len(opened) == 1
    with calibrate.observing(model, watch) as sess:
        shared = calibrate.calibrate(sess, watch, iter(feeds), QuantConfig())
        out = sess.run(["r2"], feeds[0])[0]
    assert len(opened) == 2 and opened[1].sess is None
    assert shared == alone and all(v.rmax > v.rmin for v in shared.values())
    assert out.shape == (2, 8, 16, 16)


def test_w8a8_planning_calibrates_and_measures_the_guard_s_pass_on_one_session(tmp_path, opened):
    """The plan of a W8A8 quantize (calibration, then each activation quantized alone for the accuracy guard)
    loads the float model once, and closes it; the activation pass did run on it (its figures are recorded)."""
    from qcli import quantize

    onnx.save(cnn(channels=8), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, 3, 16, 16)] * 3)
    r = quantize(tmp_path / "m.onnx", QuantConfig(), calib=tmp_path / "c", dry_run=True)
    labels = [s.label for s in opened]
    assert labels == ["the model (calibration run)"] and opened[0].sess is None
    assert r.report.calibration["activation_sqnr_db"]


def test_recorded_reference_outputs_give_the_same_fidelity_and_load_the_reference_once(pair_files, opened):
    feeds = [{"x": np.load(p)} for p in sorted((pair_files / "d").glob("*.npy"))]
    other = cnn(channels=8)
    other.graph.initializer[0].raw_data = (numpy_helper.to_array(other.graph.initializer[0]) * 1.01).tobytes()
    onnx.save(other, pair_files / "other.onnx")
    recorded = evaluate.Recorded(pair_files / "ref.onnx", iter(feeds))
    assert len(opened) == 1 and opened[0].sess is None  # read once, then closed
    for cand in ("cand.onnx", "other.onnx"):
        got = evaluate.fidelity(recorded, pair_files / cand, [dict(f) for f in reversed(feeds)])
        assert got == evaluate.fidelity(pair_files / "ref.onnx", pair_files / cand, iter(feeds))
    assert got[0].sqnr_db < 60  # the second candidate really differs
    with pytest.raises(InternalError, match="not recorded"):
        evaluate.fidelity(recorded, pair_files / "cand.onnx", [{"x": feeds[0]["x"] + 1}])


def test_latency_in_turn_opens_one_session_at_a_time(pair_files, monkeypatch):
    live = []

    class Alone(session.Session):
        def __init__(self, path, *a, **k):
            assert all(s.sess is None for s in live)  # the other one is closed already
            super().__init__(path, *a, **k)
            live.append(self)

    monkeypatch.setattr(evaluate, "Session", Alone)
    lat = evaluate.latency_in_turn(
        pair_files / "ref.onnx", pair_files / "cand.onnx", {"x": np.ones((1, 3, 16, 16), np.float32)}, runs=3
    )
    assert [s.path.name for s in live] == ["ref.onnx", "cand.onnx"] and all(s.sess is None for s in live)
    assert lat.runs == 3 and lat.reference_ms > 0 and lat.candidate_ms > 0
    assert lat.reference_p10_p90[0] <= lat.reference_ms <= lat.reference_p10_p90[1]


def test_open_sessions_keep_open_what_is_used_again_and_close_the_rest(pair_files, opened):
    onnx.save(cnn(channels=8), pair_files / "third.onnx")
    a, b, c = (pair_files / n for n in ("ref.onnx", "cand.onnx", "third.onnx"))
    with session.OpenSessions(theirs=frozenset([a])) as sessions:
        sa, sb = sessions(a, b)
        assert sessions(b, a) == (sb, sa) and len(opened) == 2  # used again: not loaded again
        assert not sa.ours and sb.ours  # an error in the user's file is theirs, in one qcli wrote ours
        (sc,) = sessions(c)  # the others are closed first
        assert sa.sess is None and sb.sess is None and sc.sess is not None
        assert sessions(c, a)[0] is sc and len(opened) == 4
        sessions.close(disable=True)
        assert all(s.sess is None for s in opened)
        assert sessions(a, b) == (a, b) and len(opened) == 4  # disabled: the caller opens and closes its own
    assert all(s.sess is None for s in opened)


def test_latency_with_min_s_runs_on_until_that_time_has_passed(monkeypatch):
    """A model of a fraction of a millisecond needs many rounds to settle: min_s keeps interleaving past `runs`
    (a stand-in clock advancing 1 ms per reading; stand-in sessions), and stops at MAX_ROUNDS."""
    clock = [0.0]

    def perf_counter():
        clock[0] += 0.001
        return clock[0]

    class Model:
        def run(self, names, feed):
            return []

    monkeypatch.setattr(evaluate.time, "perf_counter", perf_counter)
    plain = evaluate.latency(Model(), Model(), {}, runs=5, warmup=0)
    assert plain.runs == 5
    timed = evaluate.latency(Model(), Model(), {}, runs=5, warmup=0, min_s=0.5)
    assert 100 <= timed.runs <= 130  # about 5 readings (5 ms) per round: 0.5 s is ~100 rounds
    monkeypatch.setattr(evaluate, "MAX_ROUNDS", 20)
    assert evaluate.latency(Model(), Model(), {}, runs=5, warmup=0, min_s=10.0).runs == 20
