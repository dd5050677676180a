"""Bias correction's check as a step (steps/bias.py), with a stand-in measurement: the corrections are kept
unless the model without them measures better (each file's worst output averaged, or pooled beyond 0.1 dB),
and the report names both figures."""

from pathlib import Path

import pytest

from qcli.core.plan import QuantPlan
from qcli.core.progress import no_progress
from qcli.io.feeds import FidelityData
from qcli.steps.base import Context, run

HELD = FidelityData("src", [Path("c4.npy"), Path("c5.npy")], "2 calibration file(s) held aside")


def _bias_figures(monkeypatch, plain: tuple, corrected: tuple):
    """steps/bias.py's check with a stand-in measurement: per-file worst outputs with and without."""
    from contextlib import contextmanager

    from qcli.measure.evaluate import OutputFidelity
    from qcli.steps import bias

    class _Trials:
        def measure(self, plan):
            per_file, pooled = corrected if plan.bias_corrections else plain
            return [OutputFidelity("y", pooled, 1.0, 0.0, None, per_file)]

    @contextmanager
    def stand_in(*a, **k):
        yield _Trials()

    monkeypatch.setattr(bias, "trials", stand_in)


@pytest.mark.parametrize(
    ("plain", "corrected", "kept"),
    [
        (((10.0, 20.0), 12.0), ((11.0, 21.0), 12.5), True),  # both better
        (((10.0, 20.0), 12.0), ((10.0, 20.0), 12.0), True),  # level: the corrections stay (the default)
        (((10.0, 20.0), 12.0), ((9.0, 20.5), 14.0), False),  # files worse on average, pooled better
        (((10.0, 20.0), 12.0), ((12.0, 22.0), 11.85), False),  # files better, pooled 0.15 dB worse
        (((10.0, 20.0), 12.0), ((12.0, 22.0), 11.9), True),  # pooled within the 0.1 dB tolerance
    ],
)
def test_bias_corrections_are_kept_unless_the_model_without_them_measures_better(monkeypatch, plain, corrected, kept):
    from qcli.steps.bias import BiasStep

    _bias_figures(monkeypatch, plain, corrected)
    held = HELD
    plan = QuantPlan("w8a8", bias_corrections={"conv": (0.5, -2.0), "fc": (0.1,)})
    ran = run([BiasStep(held)], plan, Context(None, Path("m.onnx"), held, no_progress))
    b = ran.parts[0].fields["bias_correction"]
    assert b["applied"] is kept and (ran.plan.bias_corrections == plan.bias_corrections) is kept
    assert b["without"] == {"worst_sqnr_db": plain[1], "mean_file_worst_sqnr_db": pytest.approx(sum(plain[0]) / 2)}
    assert b["with"]["worst_sqnr_db"] == corrected[1] and b["layers"] == 2
    assert b["largest"] == {"node": "conv", "max_abs_shift": 2.0}
    assert ran.parts[0].notes[0].startswith(f"bias correction {'applied' if kept else 'not applied'}: 2 int8")


def test_no_corrections_or_no_held_files_leave_the_plan_as_it_is(monkeypatch):
    from qcli.steps.bias import BiasStep

    _bias_figures(monkeypatch, ((1.0,), 1.0), ((0.0,), 0.0))
    ctx = Context(None, Path("m.onnx"), HELD, no_progress)
    with_corrections = QuantPlan("w8a8", bias_corrections={"conv": (1.0,)})
    for step, plan in ((BiasStep(None), with_corrections), (BiasStep(HELD), QuantPlan("w8a8"))):
        ran = run([step], plan, ctx)
        assert ran.plan is plan and ran.parts[0].fields == {}
    no_src = FidelityData(None, [], "")
    assert run([BiasStep(no_src)], with_corrections, ctx).plan is with_corrections
