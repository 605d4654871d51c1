"""grain pipeline: shapes, per-epoch coverage and reshuffling, resumable state, multi-process sharding."""
import json
import sys

import numpy as np
import pytest

from sedd_jax import data, extras
from sedd_jax.data import pipeline

from tests.data_testing import make_config, write_corpus


def _blocks(n=37, length=8):
    # block i holds the value i in every position, so a batch tells which blocks it holds
    return np.repeat(np.arange(n, dtype=np.uint16)[:, None], length, axis=1)


def _ids(it, num_batches):
    return np.concatenate([next(it)[:, 0] for _ in range(num_batches)])


def test_batches_shape_dtype_and_epoch_coverage():
    blocks = _blocks(n=36)
    it = pipeline.make_iterator(blocks, batch_size=4, seed=0)
    batch = next(it)
    assert batch.shape == (4, 8) and batch.dtype == np.int32
    ids = np.concatenate([batch[:, 0], _ids(it, 17)])           # 72 blocks = 2 epochs
    epoch0, epoch1 = ids[:36], ids[36:]
    assert sorted(epoch0) == list(range(36)) and sorted(epoch1) == list(range(36))
    assert not np.array_equal(epoch0, epoch1)                     # reshuffled per epoch
    again = pipeline.make_iterator(blocks, batch_size=4, seed=0)
    np.testing.assert_array_equal(_ids(again, 18), ids)          # deterministic for a seed
    other = pipeline.make_iterator(blocks, batch_size=4, seed=1)
    assert not np.array_equal(_ids(other, 9), epoch0)


@pytest.mark.parametrize("k", [0, 3, 11])
def test_restore_state_gives_the_same_next_batches(k):
    blocks = _blocks()
    reference = pipeline.make_iterator(blocks, batch_size=4, seed=7)
    expected = [next(reference) for _ in range(k + 6)]
    it = pipeline.make_iterator(blocks, batch_size=4, seed=7)
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(it.get_state()))                # JSON-serialisable
    resumed = pipeline.make_iterator(blocks, batch_size=4, seed=7)
    resumed.set_state(state)
    for want in expected[k:]:
        np.testing.assert_array_equal(next(resumed), want)


def test_processes_read_their_slices_of_the_same_global_batches():
    n = 37
    blocks = _blocks(n)
    single = _ids(pipeline.make_iterator(blocks, batch_size=6, seed=5), 25)      # 150 rows: 4 epochs and more
    for count in (2, 3):
        iters = [pipeline.make_iterator(blocks, batch_size=6 // count, seed=5, process_index=p,
                                        process_count=count) for p in range(count)]
        batches = [np.concatenate([next(it)[:, 0] for it in iters]) for _ in range(25)]
        np.testing.assert_array_equal(np.concatenate(batches), single)           # the global stream
    for epoch in range(4):
        assert sorted(single[epoch * n:(epoch + 1) * n]) == list(range(n))       # every epoch covers all
    assert not np.array_equal(single[:n], single[n:2 * n])                       # reshuffled per epoch
    # the state is a global batch index: a 2-process state resumes a single process and vice versa
    two = pipeline.make_iterator(blocks, batch_size=3, seed=5, process_index=1, process_count=2)
    for _ in range(7):
        next(two)
    resumed = pipeline.make_iterator(blocks, batch_size=6, seed=5)
    resumed.set_state(json.loads(json.dumps(two.get_state())))
    np.testing.assert_array_equal(next(resumed)[:, 0], single[42:48])


def test_create_datasets_two_processes_and_resume(tmp_path):
    glob = write_corpus(tmp_path / "corpus")
    config = make_config(tmp_path, files=glob)
    bundles = [data.create_datasets(config, str(tmp_path / "work"), process_index=p, process_count=2)
               for p in range(2)]
    n = bundles[0].train_blocks
    assert n == bundles[1].train_blocks and bundles[0].eval_blocks > 0
    per_process = n // 2
    batches = [[next(b.train_iter) for _ in range(per_process // 2)] for b in bundles]
    assert batches[0][0].shape == (2, 32) and batches[0][0].dtype == np.int32
    rows = [{tuple(r) for batch in bs for r in batch} for bs in batches]
    assert not rows[0] & rows[1]                                   # disjoint shards
    single = data.create_datasets(config, str(tmp_path / "work"), process_index=0, process_count=1)
    for first, second in zip(*batches):                            # slices of the single-process batches
        np.testing.assert_array_equal(np.concatenate([first, second]), next(single.train_iter))
    # resume the eval iterator of process 1 from a saved state
    b = bundles[1]
    for _ in range(3):
        next(b.eval_iter)
    state = json.loads(json.dumps(b.eval_iter.get_state()))
    want = [next(b.eval_iter) for _ in range(2)]
    fresh = data.create_datasets(config, str(tmp_path / "work"), process_index=1, process_count=2)
    fresh.eval_iter.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(fresh.eval_iter), w)


def test_batch_not_divisible_by_processes(tmp_path):
    config = make_config(tmp_path, files=write_corpus(tmp_path / "corpus"))
    with pytest.raises(ValueError, match="config.training.batch_size=4 is not divisible by the 3"):
        data.create_datasets(config, str(tmp_path), process_index=0, process_count=3)


def test_grain_worker_processes_give_the_same_batches_and_state():
    blocks = _blocks()
    it = pipeline.make_iterator(blocks, batch_size=4, seed=3, num_workers=2)
    try:
        first = _ids(it, 5)
        state = json.loads(json.dumps(it.get_state()))
        rest = _ids(it, 3)
    finally:
        it.close()
    np.testing.assert_array_equal(
        np.concatenate([first, rest]), _ids(pipeline.make_iterator(blocks, batch_size=4, seed=3), 8))
    resumed = pipeline.make_iterator(blocks, batch_size=4, seed=3, num_workers=2)
    try:
        resumed.set_state(state)
        np.testing.assert_array_equal(_ids(resumed, 3), rest)
    finally:
        resumed.close()


def test_missing_grain_names_the_train_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)  # as if not installed (the core install)
    with pytest.raises(ImportError) as err:
        pipeline.make_iterator(_blocks(), batch_size=4, seed=0)
    assert str(err.value) == 'the training data pipeline needs grain: pip install "sedd-jax[train]"'
    assert err.value.__cause__ is None and err.value.__suppress_context__
    # a module the optional package itself imports is missing: named too, with the same extra
    assert extras.missing_message("grain", "the training data pipeline", "array_record.python") == (
        "the training data pipeline needs grain (which needs the missing module 'array_record'): "
        'pip install "sedd-jax[train]"')
