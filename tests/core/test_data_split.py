"""The held-out validation split every method of a comparison shares (``validation_fraction``)."""

import pytest

from lrvd import LRVDError
from lrvd.data_split import holdout_indices
from lrvd.protocol import MethodBase


def test_holdout_is_a_seeded_disjoint_partition():
    train, val = holdout_indices(100, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(100))
    assert holdout_indices(100, 0.1, seed=3) == (train, val)
    assert holdout_indices(100, 0.1, seed=4)[1] != val


def test_zero_fraction_holds_out_nothing_and_bad_fraction_errors():
    assert holdout_indices(5, 0.0) == ([0, 1, 2, 3, 4], [])
    assert holdout_indices(3, 0.01)[1] and len(holdout_indices(3, 0.99)[0]) == 1
    with pytest.raises(LRVDError):
        holdout_indices(10, 1.0)


def test_method_base_does_not_need_a_validation_split():
    assert MethodBase.needs_validation is False
    MethodBase().after_training(None, None, val_loader=None)
