"""grain input pipeline: seeded per-epoch shuffling, per-process sharding, batching, resumable state.

Given packed blocks [N, L] (identical on every process), the run reads one endless global stream

  epoch e = 0, 1, ...: perm_e = grain's index shuffle of range(N) with seed (seed + e) mod 2**32
                       (`MapDataset.shuffle(seed)` indexed past its length)
  global batch k     = positions kB, ..., kB + B - 1 of perm_0 ++ perm_1 ++ ... (B = global batch;
                       a batch may span two epochs)

and process p of P yields its slice of every global batch: rows p b, ..., p b + b - 1 of batch k, as an
int32 array [b, L] with b = B / P. The trainer assembles the global batch with
`jax.make_array_from_process_local_data(sharding, local_batch)`, whose leading axis is the concatenation
of the processes' batches in process order. So the global batches (and the training run) are the same for
any number of processes, every epoch covers all N blocks, and the processes of a step read disjoint rows.

The iterator is a `grain.DatasetIterator`; `get_state()` is a JSON-serialisable dict (the index of
the next batch, the same on every process) and `set_state(state)` resumes exactly: the k-th batch after a
restore is the batch an uninterrupted iterator would have produced, with the same or another process count.
"""
from __future__ import annotations

import sys

import numpy as np

from sedd_jax import extras


def _to_int32(block):
    return np.asarray(block, dtype=np.int32)


def _host_epochs_cls():
    grain = extras.require("grain", "the training data pipeline")

    class HostEpochs(grain.MapDataset):
        """Infinite MapDataset: index i -> the i-th block of this process's slices of the global batches."""

        def __init__(self, shuffled, num_blocks: int, local_batch: int, process_index: int, process_count: int):
            super().__init__(shuffled)
            self._num_blocks = num_blocks
            self._local_batch = local_batch
            self._index = process_index
            self._count = process_count

        def __len__(self) -> int:
            return sys.maxsize

        def __str__(self) -> str:
            return f"HostEpochs(process={self._index}/{self._count}, blocks={self._num_blocks})"

        def __getitem__(self, index):
            if isinstance(index, slice):
                return self.slice(index)
            batch, row = divmod(int(index), self._local_batch)
            position = (batch * self._count + self._index) * self._local_batch + row  # in the global stream
            return self._parent[position]  # the shuffle reseeds every N positions (one epoch)

    return HostEpochs


def make_dataset(blocks: np.ndarray, *, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, what: str = "train"):
    """The endless `grain.MapDataset` of this process's int32 batches [batch_size, L] (`batch_size` is the
    per-process batch: the global batch / process_count)."""
    grain = extras.require("grain", "the training data pipeline")
    num_blocks = len(blocks)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size <= 0:
        raise ValueError(f"{what}: per-process batch size must be positive, got {batch_size}")
    shuffled = grain.MapDataset.source(blocks).shuffle(seed=int(seed) % (1 << 32))
    ds = _host_epochs_cls()(shuffled, num_blocks, batch_size, process_index, process_count)
    return ds.map(_to_int32).batch(batch_size, drop_remainder=True)


def make_iterator(blocks: np.ndarray, *, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, num_workers: int = 0, what: str = "train"):
    """A `grain.DatasetIterator` over `make_dataset(...)`; `num_workers` > 0 uses grain worker
    processes (`mp_prefetch`), 0 reads in this process with a small thread prefetch."""
    grain = extras.require("grain", "the training data pipeline")
    ds = make_dataset(blocks, batch_size=batch_size, seed=seed, process_index=process_index,
                      process_count=process_count, what=what)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if num_workers > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (notebooks, plain scripts)
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)
