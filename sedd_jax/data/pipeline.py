"""grain input pipeline: seeded per-epoch shuffling, per-process sharding, batching, resumable state.

Given packed blocks [N, L] (identical on every process), process p of P reads, forever:

  epoch e = 0, 1, ...: perm_e = grain's index shuffle of range(N) with seed (seed + e) mod 2**32
                       (`MapDataset.shuffle(seed)` indexed past its length)
                       process p takes perm_e[p], perm_e[p + P], ... : N // P blocks per epoch
  batches of `batch_size` consecutive blocks of that stream (a batch may span two epochs)

so in one epoch the processes read disjoint blocks that together cover all but N mod P of them (a
different N mod P each epoch, since the permutation changes). Each process yields int32 arrays
[batch_size, L] with batch_size = global batch // process_count; the trainer assembles the global
batch with `jax.make_array_from_process_local_data(sharding, local_batch)`, whose leading axis is
the concatenation of the processes' batches in process order.

The iterator is a `grain.DatasetIterator`; `get_state()` is a JSON-serialisable dict (the index of
the next batch) and `set_state(state)` resumes exactly: the k-th batch after a restore is the batch
an uninterrupted iterator would have produced.
"""
from __future__ import annotations

import sys

import numpy as np


def _to_int32(block):
    return np.asarray(block, dtype=np.int32)


def _host_epochs_cls():
    import grain

    class HostEpochs(grain.MapDataset):
        """Infinite MapDataset: index k -> the k-th block of this process's endless shuffled stream."""

        def __init__(self, shuffled, num_blocks: int, process_index: int, process_count: int):
            super().__init__(shuffled)
            self._num_blocks = num_blocks
            self._index = process_index
            self._count = process_count
            self._per_process = num_blocks // process_count

        def __len__(self) -> int:
            return sys.maxsize

        def __str__(self) -> str:
            return f"HostEpochs(process={self._index}/{self._count}, blocks={self._num_blocks})"

        def __getitem__(self, index):
            if isinstance(index, slice):
                return self.slice(index)
            epoch, position = divmod(int(index), self._per_process)
            return self._parent[epoch * self._num_blocks + position * self._count + self._index]

    return HostEpochs


def make_dataset(blocks: np.ndarray, *, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, what: str = "train"):
    """The endless per-process `grain.MapDataset` of int32 batches [batch_size, L]."""
    import grain
    num_blocks = len(blocks)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size <= 0:
        raise ValueError(f"{what}: per-process batch size must be positive, got {batch_size}")
    if num_blocks < process_count:
        raise ValueError(f"{what}: {num_blocks} blocks cannot be shared by {process_count} processes")
    shuffled = grain.MapDataset.source(blocks).shuffle(seed=int(seed) % (1 << 32))
    ds = _host_epochs_cls()(shuffled, num_blocks, process_index, process_count)
    return ds.map(_to_int32).batch(batch_size, drop_remainder=True)


def make_iterator(blocks: np.ndarray, *, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, num_workers: int = 0, what: str = "train"):
    """A `grain.DatasetIterator` over `make_dataset(...)`; `num_workers` > 0 uses grain worker
    processes (`mp_prefetch`), 0 reads in this process with a small thread prefetch."""
    import grain
    ds = make_dataset(blocks, batch_size=batch_size, seed=seed, process_index=process_index,
                      process_count=process_count, what=what)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if num_workers > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (notebooks, plain scripts)
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)
