"""Measured placement's accuracy check on an int8 move (placement._accurate_enough): the loss is judged pooled
over the files and each file's averaged, so one file at another scale cannot hide it."""

from qcli.measure.evaluate import OutputFidelity
from qcli.steps.placement import _accurate_enough


class _Measured:
    """A stand-in for Trials: each model's fidelity given by name."""

    def __init__(self, figures: dict[str, tuple[float, tuple[float, ...]]]):
        self.figures = figures

    def measure_model(self, model):
        pooled, per_file = self.figures[model]
        return [OutputFidelity("y", pooled, 1.0, 0.0, None, per_file)]


def test_a_loss_the_pooled_figure_hides_is_refused():
    # PP-OCR rec's 8 more layers on int8, as measured on 4 held and 8 fitted files: pooled -0.5 dB (one file
    # sets it), each file's averaged -2.7 dB; on the eval files the model lost 2.4 dB
    t = _Measured({"before": (15.4, (20.0,) * 12), "after": (14.9, (17.3,) * 12)})
    assert _accurate_enough(t, "before", "after", None) == (False, (15.4, 14.9))


def test_a_loss_under_the_guards_share_on_both_figures_is_kept():
    t = _Measured({"before": (15.4, (20.0,) * 12), "after": (14.9, (19.2,) * 12)})
    assert _accurate_enough(t, "before", "after", None)[0]


def test_both_figures_quiet_is_kept_whatever_the_loss():
    t = _Measured({"before": (60.0, (70.0,) * 4), "after": (40.0, (45.0,) * 4)})
    assert _accurate_enough(t, "before", "after", None)[0]


def test_a_pooled_loss_is_refused_even_when_the_files_average_holds():
    t = _Measured({"before": (20.0, (25.0,) * 4), "after": (17.0, (25.0,) * 4)})
    assert not _accurate_enough(t, "before", "after", None)[0]
