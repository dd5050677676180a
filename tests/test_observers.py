import numpy as np
import pytest

from qcli.errors import InputError
from qcli.observers import OBSERVERS


@pytest.mark.parametrize("method", OBSERVERS.names())
def test_observer_fed_batch_by_batch_equals_fed_at_once(method):
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 16)) * (i + 1) for i, n in enumerate([3, 1, 7, 2])]
    streamed, whole = OBSERVERS.get(method)(), OBSERVERS.get(method)()
    for b in batches:
        streamed.update(b)
    whole.update(np.concatenate(batches))
    assert streamed.range() == whole.range()


def test_minmax_range_and_empty():
    obs = OBSERVERS.get("minmax")()
    assert obs.range() == (0.0, 0.0)
    obs.update(np.array([[-2.0, 3.0]]))
    obs.update(np.array([1.0, 5.0]))
    assert obs.range() == (-2.0, 5.0)


def test_unknown_observer_suggests_a_name():
    with pytest.raises(InputError, match="did you mean 'minmax'"):
        OBSERVERS.get("minmaxx")
