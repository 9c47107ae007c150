"""BatchStream: every example once per epoch, seeded order, exact resume from (epoch, cursor)."""

from __future__ import annotations

import pytest

from polm.errors import PolmError
from polm.train.batches import BatchStream


def ids(batch: dict) -> list[int]:
    return batch["ids"]


def make(n: int = 10, mbs: int = 4, seed: int = 7, shuffle: bool = True) -> BatchStream:
    return BatchStream(list(range(n)), lambda xs: {"ids": list(xs)}, micro_batch_size=mbs, seed=seed, shuffle=shuffle)


def test_each_epoch_visits_every_example_once_in_a_new_order():
    stream = make()
    epochs = [[i for _ in range(3) for i in ids(next(stream))] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    assert epochs[0] != epochs[1]                                 # reshuffled per epoch
    assert ids(next(make())) == epochs[0][:4]                     # same seed, same order
    assert ids(next(make(seed=8))) != epochs[0][:4]               # another seed, another order


def test_last_micro_batch_of_an_epoch_is_partial_and_counts():
    stream = make(n=10, mbs=4)
    assert [len(ids(next(stream))) for _ in range(4)] == [4, 4, 2, 4]
    assert stream.micro_batches_per_epoch == 3
    assert stream.steps_per_epoch(grad_accum=2) == 2               # ceil(3 / 2)


def test_without_shuffle_the_order_is_the_list_order():
    stream = make(n=5, mbs=2, shuffle=False)
    assert [ids(next(stream)) for _ in range(4)] == [[0, 1], [2, 3], [4], [0, 1]]


def test_state_dict_resumes_on_the_exact_next_batch():
    stream = make()
    for _ in range(4):
        next(stream)
    state = stream.state_dict()
    expected = [ids(next(stream)) for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(state)
    assert [ids(next(resumed)) for _ in range(5)] == expected


def test_bad_input_is_a_polm_error():
    with pytest.raises(PolmError, match="empty"):
        make(n=0)
    state = make(n=10).state_dict()
    with pytest.raises(PolmError, match="10 training examples, now there are 9"):
        make(n=9).load_state_dict(state)


def test_a_batch_stream_is_a_batch_source_without_metrics_of_its_own():
    from polm.train.batches import BatchSource

    stream = make()
    next(stream)
    assert isinstance(stream, BatchSource) and stream.step_metrics() == {}
