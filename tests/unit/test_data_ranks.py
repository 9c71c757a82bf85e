"""Training ranks agree on their records or fail together, naming the rank that differs."""

import pytest

from kubefusion.errors import DataError
from kubefusion.train.data import _raise_rank_errors, check_same_data, splits_digest


class _R:
    def __init__(self, id_, label):
        self.id, self.label = id_, label


def test_the_digest_names_split_sizes_and_changes_with_any_id_or_label():
    base = {"train": [_R("a", 0), _R("b", 1)], "test": [_R("c", 0)]}
    digest = splits_digest(base)
    assert digest.startswith("test=1:") and ";train=2:" in digest
    assert splits_digest({**base, "train": [_R("a", 0), _R("b", 0)]}) != digest
    assert splits_digest({**base, "train": [_R("a", 0), _R("x", 1)]}) != digest


def test_differing_ranks_are_named():
    check_same_data(["d", "d", "d"], {"train": 1})
    with pytest.raises(DataError, match=r"ranks 1, 3 loaded other records than rank 0 \(rank 0: d; rank 1: e"):
        check_same_data(["d", "e", "d", "f"], {"train": 1})


def test_one_rank_failing_fails_every_rank_with_its_message():
    _raise_rank_errors(None, [None, None])
    with pytest.raises(DataError, match=r"rank 2 could not load the data \(DataError: x.csv line 3: bad\); "
                                        r"ranks that failed: 2"):
        _raise_rank_errors(None, [None, None, "DataError: x.csv line 3: bad"])
    own = DataError("mine")
    with pytest.raises(DataError, match="^mine$"):
        _raise_rank_errors(own, ["DataError: mine"])
